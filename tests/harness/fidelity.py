"""The fidelity benchmark on the demo model: how often both subjects of a two-subject
prompt appear with the stock KSampler, with the Attend-and-Excite KSampler, with the
steering probe (the stock KSampler on a model whose cross-attention multiplies the two
shape words' attention by PROBE_FACTOR and renormalises) and with the attention boost at
its defaults, on the same seeds and settings.

    python tests/harness/fidelity.py [--weights FILE] [--seeds N] [--stride N] [--out DIR]

Writes fidelity.json, fidelity.md (the table) and fidelity_grid.jpg to --out.
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from support import REPO, import_comfy, import_package  # noqa: E402

SAMPLING = dict(steps=25, cfg=5.0, sampler_name="euler", scheduler="normal", size=128)
BOOTSTRAP = 2000


SAMPLERS = ("plain", "attend_and_excite", "probe", "boost")
PROBE_FACTOR = 3.0


def sampler_model(model, sampler: str, subjects: str):
    """The model each sampler runs: the steering probe multiplies the subject words' attention by
    PROBE_FACTOR and renormalises, the boost is the node at its defaults (the document's rule);
    both in every cross-attention layer, on the positive prompt's rows."""
    from attend_and_excite.nodes.boost import AttendExciteAttentionBoost, default_inputs
    inputs = default_inputs()
    if sampler == "probe":
        inputs.update(alpha=PROBE_FACTOR, beta=1.0, renormalise=True, token_indices=subjects)
    return AttendExciteAttentionBoost.execute(model, **inputs).result[0]


def sample(model, clip, vae, pair: tuple, seed: int, images: int, sampler: str, sampling=SAMPLING,
           guidance=None) -> torch.Tensor:
    """(images, 3, H, W) in [0, 1]: one batch from one seed, row i the same noise for every sampler;
    attend_and_excite with the node's inputs `guidance` (default: the paper's settings). The
    subjects are the two shape words."""
    import nodes
    from attend_and_excite.nodes.demo.shapes import word_columns
    from attend_and_excite.nodes.ksampler import AttendExciteKSampler
    from attend_and_excite.nodes.parameters import default_inputs
    from attend_and_excite.nodes.text_encode import AttendExciteTextEncode
    text = f"a {pair[0]} and a {pair[1]}"
    size = sampling["size"] // 8
    latent = {"samples": torch.zeros(images, 4, size, size)}
    args = (seed, sampling["steps"], sampling["cfg"], sampling["sampler_name"], sampling["scheduler"])
    with torch.inference_mode():
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        positive = AttendExciteTextEncode.execute(clip, text, ", ".join(p.split()[1] for p in pair)).result[0]
        if sampler == "attend_and_excite":
            samples = AttendExciteKSampler.execute(model, *args, positive, negative, latent, 1.0,
                                                   **(guidance or default_inputs())).result[0]
        else:
            if sampler != "plain":
                model = sampler_model(model, sampler, ",".join(str(word_columns(n)[1]) for n in range(2)))
            samples = nodes.common_ksampler(model, *args, positive, negative, latent)[0]
        return vae.decode(samples["samples"]).movedim(-1, 1).clamp(0, 1)


def presence(pair: tuple, images: torch.Tensor) -> list[list[bool]]:
    from attend_and_excite.nodes.demo.detector import present
    return [present(list(pair), image) for image in images]


def rate_with_interval(hits: list[bool], seed: int = 0) -> dict:
    """The rate and its bootstrap 95% interval (percentile, BOOTSTRAP resamples)."""
    values = torch.tensor(hits, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    draws = values[torch.randint(len(values), (BOOTSTRAP, len(values)), generator=generator)].mean(dim=1)
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975])).tolist()
    return {"rate": values.mean().item(), "low": low, "high": high}


def summarise(found: list[list[bool]]) -> dict:
    return {"images": len(found), "both": rate_with_interval([all(f) for f in found]),
            "first": rate_with_interval([f[0] for f in found]), "second": rate_with_interval([f[1] for f in found]),
            "any": rate_with_interval([any(f) for f in found])}


def table(results: dict) -> str:
    def cell(r):
        return f"{100 * r['rate']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
    lines = ["| sampler | images | both subjects | first subject | second subject | at least one |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in SAMPLERS:
        r = results[name]
        lines.append(f"| {name.replace('_', '-')} | {r['images']} | {cell(r['both'])} | {cell(r['first'])} | "
                     f"{cell(r['second'])} | {cell(r['any'])} |")
    return "\n".join(lines)


def grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Rows of (N, 3, H, W) pictures as one (3, H * rows, W * N) image with 2 px gaps."""
    padded = [torch.nn.functional.pad(r, (1, 1, 1, 1), value=1.0) for r in rows]
    return torch.cat([torch.cat(list(r), dim=2) for r in padded], dim=1)


def measure(model, clip, vae, pairs: list[tuple], seeds: list[int], images_per_seed: int,
            sampling=SAMPLING, guidance=None, log=print) -> tuple[dict, dict]:
    """({sampler: summary, "per_prompt": ...}, pictures by (pair, sampler))."""
    found = {name: [] for name in SAMPLERS}
    pictures, per_prompt = {}, []
    for number, pair in enumerate(pairs):
        row = {"prompt": f"a {pair[0]} and a {pair[1]}"}
        for name in SAMPLERS:
            batch = torch.cat([sample(model, clip, vae, pair, seed, images_per_seed, name, sampling, guidance)
                               for seed in seeds])
            pictures[pair, name] = batch
            hits = presence(pair, batch)
            found[name] += hits
            row[name] = sum(all(h) for h in hits) / len(hits)
        per_prompt.append(row)
        log(f"{number + 1}/{len(pairs)} {row['prompt']}: both present " +
            ", ".join(f"{name} {row[name]:.2f}" for name in SAMPLERS))
    return {**{name: summarise(found[name]) for name in SAMPLERS}, "per_prompt": per_prompt}, pictures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="default: the package's demo weights")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per prompt")
    parser.add_argument("--images", type=int, default=8, help="images per seed (one batch)")
    parser.add_argument("--stride", type=int, default=1, help="every Nth prompt only (default: all 36)")
    parser.add_argument("--out", default=os.path.join(REPO, "out", "fidelity"))
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for ComfyUI's default GPU")
    args = parser.parse_args()
    import_comfy(cpu=args.device == "cpu")
    import_package()
    from attend_and_excite.nodes.demo.shapes import subject_pairs
    from attend_and_excite.nodes.demo import model as demo_model
    from attend_and_excite.nodes.parameters import default_inputs
    from attend_and_excite.nodes.boost import default_inputs as boost_inputs
    from PIL import Image
    model, clip, vae = demo_model.load(args.weights or demo_model.WEIGHTS)
    pairs, seeds = subject_pairs()[::args.stride], list(range(args.seeds))
    started = time.time()
    results, pictures = measure(model, clip, vae, pairs, seeds, args.images)
    results["settings"] = {"sampling": SAMPLING, "guidance": default_inputs(), "probe_factor": PROBE_FACTOR,
                           "boost": boost_inputs(),
                           "prompts": len(pairs), "seeds": seeds,
                           "images_per_seed": args.images, "bootstrap_resamples": BOOTSTRAP,
                           "seconds": round(time.time() - started)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fidelity.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "fidelity.md"), "w") as f:
        f.write(table(results) + "\n")
    shown = pairs[:: max(1, len(pairs) // 6)][:6]
    rows = [pictures[pair, name][:8] for pair in shown for name in SAMPLERS]
    picture = (grid(rows) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(picture).save(os.path.join(args.out, "fidelity_grid.jpg"), quality=90)
    print(table(results))
    print(f"{len(pairs)} prompts x {len(seeds)} seeds x {args.images} images in {time.time() - started:.0f} s; "
          f"written to {args.out}")


if __name__ == "__main__":
    main()
