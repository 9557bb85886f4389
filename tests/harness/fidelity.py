"""The fidelity benchmark on the demo model, on the same seeds and settings for every sampler.

Two-subject prompts ('a circle and a square'), per image and subject: the subject's shape
present (neglect, what Attend-and-Excite targets), per image *exactly* the shapes asked for,
and the *damage* (regions beyond the shapes asked for, fused or broken shapes, or a
background that is not flat). The world has no modifiers (its captions are kind words), so
there is no binding column. Samplers: the stock KSampler (plain); the Attend-and-Excite
KSampler at the paper's defaults; the steering probe (the stock KSampler on a model whose
cross-attention multiplies the two kind words' attention by PROBE_FACTOR and renormalises);
the attention boost at its defaults; on a joint-attention demo model, the attention temperature at
its defaults; the Attend-and-Excite KSampler with the successor losses
that need no modifiers (divide_and_bind, a_star, at their own defaults); and
Attend-and-Excite's scale curve. Also the one-shape prompts (drawn as asked, per kind) and
the presence signal: each subject's peak as the loss reads it, at every guided step of plain
sampling, for subjects whose shape appears in the end and for those that go missing.

    python tests/harness/fidelity.py [--weights FILE] [--seeds N] [--images N] [--stride N] [--out DIR]

Writes fidelity.json, fidelity.md (the tables) and fidelity_grid.jpg to --out. Each measured
batch is kept under --out/batches (per weights file): a stopped run resumes where it was, and
processes given different --samplers (and the same --batches) share the work; a last run with
every row then reads them back and writes the tables.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness.provenance import run_record  # noqa: E402
from support import REPO, default_inputs, import_comfy, import_package  # noqa: E402

SAMPLING = dict(steps=25, cfg=5.0, sampler_name="euler", scheduler="normal", size=128)
BOOTSTRAP = 2000
LOSS_ROWS = ("divide_and_bind", "a_star")     # the Attend-and-Excite KSampler with the successor losses
SAMPLERS = ("plain", "attend_and_excite", "probe", "boost", *LOSS_ROWS)
JOINT_SAMPLERS = ("temperature",)       # rows of a joint-attention demo model only
GRID_ROWS = ("plain", "attend_and_excite", *LOSS_ROWS)
SCALE_CURVE = (1.0, 5.0, 10.0)     # and the paper's 20, the attend_and_excite row
PROBE_FACTOR = 3.0
TWO_SUBJECT_IMAGES = 288   # per sampler, over every two-subject prompt


def prompt_of(subjects: list[str]) -> str:
    return " and ".join(f"a {s}" for s in subjects)


def guidance_for(sampler: str, guidance: dict | None = None) -> dict | None:
    """The Attend-and-Excite KSampler's inputs for a sampler that runs it, None for the others:
    plain runs it at scale 0 with no refinement (the stock KSampler's result, bit for bit, and
    the log of the peaks the loss would read); "scale=S" is the paper's settings at scale S."""
    if sampler == "plain":
        return dict(default_inputs(), scale_factor=0.0, thresholds="")
    if sampler == "attend_and_excite":
        return guidance or default_inputs()
    if sampler in LOSS_ROWS:
        return dict(guidance or default_inputs(), loss=sampler)
    if sampler.startswith("scale="):
        return dict(guidance or default_inputs(), scale_factor=float(sampler[len("scale="):]))
    return None


def sampler_model(model, sampler: str, subjects: str):
    """The model each sampler runs: the steering probe multiplies the subject words' attention by
    PROBE_FACTOR and renormalises, the boost is the node at its defaults (the document's rule);
    both in every cross-attention layer (joint attention: the map blocks), on the positive prompt's
    rows. The temperature is its node at its defaults."""
    from attend_and_excite.nodes.boost import AttendExciteAttentionBoost, AttendExciteAttentionTemperature
    if sampler == "temperature":
        temperature = default_inputs(AttendExciteAttentionTemperature)
        return AttendExciteAttentionTemperature.execute(model, **temperature).result[0]
    inputs = default_inputs(AttendExciteAttentionBoost)
    if sampler == "probe":
        inputs.update(alpha=PROBE_FACTOR, beta=1.0, renormalise=True, token_indices=subjects)
    return AttendExciteAttentionBoost.execute(model, **inputs).result[0]


def sample(model, clip, vae, subjects: list[str], seed: int, images: int, sampler: str, sampling=SAMPLING,
           guidance=None) -> tuple[torch.Tensor, object]:
    """((images, 3, H, W) in [0, 1], the Attend-and-Excite record or None): one batch from one
    seed, row i the same noise for every sampler; the subjects are the kind words."""
    import nodes
    from attend_and_excite.nodes.demo.shapes import kind_column
    from attend_and_excite.nodes.ksampler import AttendExciteKSampler
    from attend_and_excite.nodes.text_encode import AttendExciteTextEncode
    size = sampling["size"] // 8
    latent = {"samples": torch.zeros(images, 4, size, size)}
    args = (seed, sampling["steps"], sampling["cfg"], sampling["sampler_name"], sampling["scheduler"])
    inputs = guidance_for(sampler, guidance)
    record = None
    with torch.inference_mode():
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        positive = AttendExciteTextEncode.execute(clip, prompt_of(subjects), ", ".join(subjects)).result[0]
        if inputs is not None:
            result = AttendExciteKSampler.execute(model, *args, positive, negative, latent, 1.0, **inputs).result
            samples, record = result[0], result[3]
        else:
            kind_columns = ",".join(str(kind_column(n)) for n in range(len(subjects)))
            samples = nodes.common_ksampler(sampler_model(model, sampler, kind_columns), *args, positive, negative,
                                            latent)[0]
        return vae.decode(samples["samples"]).movedim(-1, 1).clamp(0, 1), record


def guided_peaks(record) -> torch.Tensor:
    """(B, S, guided steps): each subject's peak at each guided step, as the step's first
    evaluation read it (before that step moved the latent)."""
    return torch.tensor([log.peaks[0] for log in record.logs]).permute(1, 2, 0)


def interval(values: list[float], seed: int = 0) -> dict:
    """The mean and its percentile-bootstrap 95% interval (BOOTSTRAP resamples)."""
    values = torch.tensor(values, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    draws = values[torch.randint(len(values), (BOOTSTRAP, len(values)), generator=generator)].mean(dim=1)
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975])).tolist()
    return {"rate": values.mean().item(), "low": low, "high": high}


def paired_gain(guided: list, plain: list) -> dict:
    """The gain in *both kinds present* of a sampler over plain sampling on the same noise: the
    mean of the per-image differences, with its percentile-bootstrap 95% interval."""
    return interval([float(all(g.kinds)) - float(all(p.kinds)) for g, p in zip(guided, plain)])


def summarise(scores: list) -> dict:
    """Rates over two-subject pictures' scores (nodes/demo/detector.Score), with intervals."""
    return {"images": len(scores),
            "both_kinds": interval([all(s.kinds) for s in scores]),
            "any_kind": interval([any(s.kinds) for s in scores]),
            "first_kind": interval([s.kinds[0] for s in scores]),
            "second_kind": interval([s.kinds[1] for s in scores]),
            "exact": interval([s.exact for s in scores]),
            "damaged": interval([s.damaged for s in scores]),
            "extra_regions": interval([s.extra for s in scores]),
            "unflat_background": interval([s.unflat_background for s in scores])}


def auc(positive: list[float], negative: list[float]) -> float | None:
    """P(a positive scores above a negative), ties counting half (ROC AUC); None without both."""
    if not positive or not negative:
        return None
    pos, neg = torch.tensor(positive)[:, None], torch.tensor(negative)[None, :]
    return ((pos > neg).float() + 0.5 * (pos == neg).float()).mean().item()


def presence_signal(peaks: list[torch.Tensor], scores: list) -> dict:
    """peaks: (S, steps) per picture from plain sampling; scores: the picture's. The peaks of
    subjects whose kind appears in the end against those whose kind goes missing."""
    present, missing = [], []
    for picture, score in zip(peaks, scores):
        for subject_peaks, shown in zip(picture, score.kinds):
            (present if shown else missing).append(subject_peaks)
    by_step = [{"present": torch.stack(present)[:, i].mean().item() if present else None,
                "missing": torch.stack(missing)[:, i].mean().item() if missing else None,
                "auc": auc([p[i].item() for p in present], [m[i].item() for m in missing])}
               for i in range(peaks[0].shape[-1])] if peaks else []
    mean_present = [p.mean().item() for p in present]
    mean_missing = [m.mean().item() for m in missing]
    return {"present_subjects": len(present), "missing_subjects": len(missing),
            "mean_peak_present": sum(mean_present) / len(mean_present) if present else None,
            "mean_peak_missing": sum(mean_missing) / len(mean_missing) if missing else None,
            "auc": auc(mean_present, mean_missing), "by_step": by_step}


def single_shapes(model, clip, vae, seeds: list[int], images_per_seed: int, sampling=SAMPLING,
                  kinds: tuple | None = None, batches: str | None = None) -> dict:
    """One-shape prompts, plain sampling: drawn as asked (that kind, nothing else), overall
    and per kind; and the kind right (a shape of it, whatever else is drawn)."""
    from attend_and_excite.nodes.demo.detector import DAMAGED_BACKGROUND
    from attend_and_excite.nodes.demo.shapes import SHAPES
    asked = {}
    for kind in kinds or SHAPES:
        asked[kind] = [s for seed in seeds for s in scored_batch(model, clip, vae, (kind,), seed, images_per_seed,
                                                                  "plain", sampling, None, batches)[1]]
    every = [s for v in asked.values() for s in v]
    return {"images": len(every),
            "as_asked": interval([s.exact for s in every]),
            "kind_right": interval([s.kinds[0] for s in every]),
            "flat_background": interval([s.unflat_background <= DAMAGED_BACKGROUND for s in every]),
            "by_kind": {k: interval([s.exact for s in v]) for k, v in asked.items()}}


def patch_settings() -> dict:
    """What the patched rows run besides the model: the probe's factor, the patch nodes' defaults."""
    from attend_and_excite.nodes.boost import AttendExciteAttentionBoost, AttendExciteAttentionTemperature
    return {"probe": PROBE_FACTOR, "boost": default_inputs(AttendExciteAttentionBoost),
            "temperature": default_inputs(AttendExciteAttentionTemperature)}


def scored_batch(model, clip, vae, pair: tuple, seed: int, images_per_seed: int, name: str, sampling, guidance,
                 batches: str | None) -> tuple[torch.Tensor, list, list]:
    """(pictures, their scores, plain sampling's guided peaks or []) of one batch. With `batches`
    (a folder), a batch measured before with the same settings is read back instead of sampled
    again: a long benchmark can be stopped and resumed, or its rows split over processes."""
    from attend_and_excite.nodes.demo.detector import Score, score
    path = None
    if batches is not None:
        key = json.dumps([prompt_of(pair), seed, images_per_seed, name, sampling, guidance, patch_settings()],
                         sort_keys=True)
        path = os.path.join(batches, hashlib.sha1(key.encode()).hexdigest()[:20] + ".pt")
        if os.path.exists(path):
            kept = torch.load(path)
            return kept["pictures"].float() / 255, [Score(**s) for s in kept["scores"]], list(kept["peaks"])
    images, record = sample(model, clip, vae, list(pair), seed, images_per_seed, name, sampling, guidance)
    found = [score(list(pair), image) for image in images]
    peaks = list(guided_peaks(record).contiguous()) if name == "plain" else []
    if path is not None:
        os.makedirs(batches, exist_ok=True)
        torch.save({"pictures": (images * 255).round().byte(), "scores": [dataclasses.asdict(s) for s in found],
                    "peaks": torch.stack(peaks) if peaks else torch.zeros(0)}, path + ".part")
        os.replace(path + ".part", path)
    return images, found, peaks


def measure(model, clip, vae, pairs: list[tuple], seeds: list[int], images_per_seed: int, sampling=SAMPLING,
            samplers=SAMPLERS, scales=SCALE_CURVE, guidance=None, log=print, batches=None) -> tuple[dict, dict]:
    """({"samplers": {name: summary}, "scale_curve": {scale: summary}, "presence": ...,
    "gain_over_plain": ..., "per_batch": [...]}, pictures by (pair, sampler)). A batch is one
    prompt's images from one seed; `batches`: see scored_batch."""
    runs = [*samplers, *(f"scale={s:g}" for s in scales)]
    scores = {name: [] for name in runs}
    plain_peaks, pictures, per_batch = [], {}, []
    for number, pair in enumerate(pairs):
        for seed in seeds:
            row = {"prompt": prompt_of(pair), "seed": seed}
            for name in runs:
                images, found, peaks = scored_batch(model, clip, vae, pair, seed, images_per_seed, name, sampling,
                                                    guidance, batches)
                pictures[pair, name] = torch.cat([pictures.get((pair, name), images[:0]), images])
                scores[name] += found
                plain_peaks += peaks
                row[name] = {"both_kinds": sum(all(s.kinds) for s in found), "exact": sum(s.exact for s in found),
                             "damaged": sum(s.damaged for s in found)}
            per_batch.append(row)
            log(f"{number + 1}/{len(pairs)} {row['prompt']}, seed {seed}: both kinds present " +
                ", ".join(f"{name} {row[name]['both_kinds']}/{images_per_seed}" for name in runs))
    results = {"samplers": {name: summarise(scores[name]) for name in samplers},
               "scale_curve": {name[len("scale="):]: summarise(scores[name]) for name in runs if "=" in name},
               "per_batch": per_batch}
    if "plain" in samplers:
        results["presence"] = presence_signal(plain_peaks, scores["plain"])
        results["gain_over_plain"] = {name: paired_gain(scores[name], scores["plain"]) for name in runs
                                      if name != "plain"}
    return results, pictures


def percent(r: dict) -> str:
    return f"{100 * r['rate']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


def tables(results: dict) -> str:
    """The benchmark's tables in Markdown."""
    head = ["| sampler | images | both kinds (neglect) | at least one kind | exactly the two asked | damaged | "
            "extra regions | unflat background |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    def line(name, r):
        return (f"| {name} | {r['images']} | {percent(r['both_kinds'])} | {percent(r['any_kind'])} | "
                f"{percent(r['exact'])} | {percent(r['damaged'])} | {r['extra_regions']['rate']:.2f} | "
                f"{100 * r['unflat_background']['rate']:.1f}% |")
    rows = [line(name.replace("_", "-"), r) for name, r in results["samplers"].items()]
    rows += [line(f"attend-and-excite, scale {scale}", r) for scale, r in results["scale_curve"].items()]
    text = "\n".join(head + rows)
    if "single_shapes" in results:
        s = results["single_shapes"]
        text += (f"\n\nOne-shape prompts ({s['images']} images): drawn as asked {percent(s['as_asked'])}, kind right "
                 f"{percent(s['kind_right'])}, background flat {percent(s['flat_background'])}; drawn as asked per "
                 "kind " + ", ".join(f"{k} {100 * r['rate']:.0f}%" for k, r in s["by_kind"].items()) + ".")
    if "presence" in results:
        p = results["presence"]
        def value(v, form="{:.2f}"):
            return "-" if v is None else form.format(v)
        text += (f"\n\nPresence signal (plain sampling, {p['present_subjects']} present and {p['missing_subjects']} "
                 f"missing subjects): mean peak over the guided steps {value(p['mean_peak_present'])} present, "
                 f"{value(p['mean_peak_missing'])} missing, AUC {value(p['auc'])}; per guided step (present / missing "
                 "/ AUC): " + ", ".join(f"{i}: {value(s['present'])} / {value(s['missing'])} / {value(s['auc'])}"
                                        for i, s in enumerate(p["by_step"])) + ".")
    return text


# The README's rows: each sampler a user can pick, under the name the README gives it.
README_ROWS = {"plain": "plain KSampler", "attend_and_excite": "`attend_and_excite`", "a_star": "`a_star`",
               "divide_and_bind": "`divide_and_bind`", "boost": "Attention Boost (defaults)",
               "temperature": "Attention Temperature (defaults)"}


def readme_table(results: dict) -> str:
    """The README's table of a demo model: neglect, exactness, damage, and the paired gain."""
    def gain(r):
        return f"{100 * r['rate']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"
    lines = ["| sampler | both drawn (neglect) | exactly the two | damaged | both drawn, gain over plain |",
             "| --- | --- | --- | --- | --- |"]
    for name, label in README_ROWS.items():
        if name in results["samplers"]:
            r = results["samplers"][name]
            paired = gain(results["gain_over_plain"][name]) if name != "plain" else ""
            lines.append(f"| {label} | {percent(r['both_kinds'])} | {percent(r['exact'])} | {percent(r['damaged'])} | "
                         + (f"{paired} |" if paired else "|"))
    return "\n".join(lines)


def grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Rows of (N, 3, H, W) pictures as one (3, H * rows, W * N) image with 2 px gaps."""
    padded = [torch.nn.functional.pad(r, (1, 1, 1, 1), value=1.0) for r in rows]
    return torch.cat([torch.cat(list(r), dim=2) for r in padded], dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="default: the package's demo weights")
    parser.add_argument("--seeds", type=int, help=f"seeds per prompt (default: {TWO_SUBJECT_IMAGES} two-subject "
                                                  "images in all)")
    parser.add_argument("--images", type=int, default=8, help="images per seed (one batch)")
    parser.add_argument("--stride", type=int, default=1, help="every Nth prompt only (default: all)")
    parser.add_argument("--no-scale-curve", action="store_true")
    parser.add_argument("--no-single-shapes", action="store_true")
    parser.add_argument("--samplers", help="the rows, comma-separated (default: all the model takes)")
    parser.add_argument("--out", default=os.path.join(REPO, "out", "fidelity"))
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for ComfyUI's default GPU")
    parser.add_argument("--batches", help="where each measured batch is kept, to resume a stopped run or to "
                                          "split the rows over processes (default: OUT/batches/<weights' hash>)")
    args = parser.parse_args()
    import_comfy(cpu=args.device == "cpu")
    import_package()
    from attend_and_excite.nodes.demo.shapes import subject_pairs
    from attend_and_excite.nodes.demo import model as demo_model
    from attend_and_excite.nodes.demo.detector import DAMAGED_BACKGROUND
    from attend_and_excite.nodes.boost import AttendExciteAttentionTemperature
    from attend_and_excite.nodes.glue.family import detect_family
    from PIL import Image
    weights = args.weights or demo_model.WEIGHTS
    model, clip, vae = demo_model.load(weights)
    kinds = demo_model.vocabulary(weights)
    pairs = subject_pairs(kinds)[::args.stride]
    seeds = list(range(args.seeds or max(1, TWO_SUBJECT_IMAGES // (len(pairs) * args.images))))
    started = time.time()
    joint = detect_family(model.model).joint
    samplers = tuple(args.samplers.split(",")) if args.samplers else SAMPLERS + (JOINT_SAMPLERS if joint else ())
    with open(weights, "rb") as f:
        batches = args.batches or os.path.join(args.out, "batches", hashlib.sha1(f.read()).hexdigest()[:12])
    results, pictures = measure(model, clip, vae, pairs, seeds, args.images, samplers=samplers,
                                scales=() if args.no_scale_curve else SCALE_CURVE, batches=batches)
    if not args.no_single_shapes:
        results["single_shapes"] = single_shapes(model, clip, vae, seeds, args.images, kinds=kinds, batches=batches)
    results["run"] = run_record()
    results["settings"] = {"sampling": SAMPLING, "guidance": default_inputs(), "probe_factor": PROBE_FACTOR,
                           "boost": patch_settings()["boost"], "damaged_background": DAMAGED_BACKGROUND,
                           "temperature": default_inputs(AttendExciteAttentionTemperature) if joint else None,
                           "prompts": len(pairs), "seeds": seeds,
                           "images_per_seed": args.images, "bootstrap_resamples": BOOTSTRAP,
                           "seconds": round(time.time() - started)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fidelity.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "fidelity.md"), "w") as f:
        f.write(tables(results) + "\n\nThe README's table:\n\n" + readme_table(results) + "\n")
    shown = pairs[:: max(1, len(pairs) // 6)][:6]
    rows = [pictures[pair, name][:8] for pair in shown for name in GRID_ROWS if name in samplers]
    picture = (grid(rows) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(picture).save(os.path.join(args.out, "fidelity_grid.jpg"), quality=90)
    print(tables(results))
    print(f"{len(pairs)} prompts x {len(seeds)} seeds x {args.images} images in {time.time() - started:.0f} s; "
          f"written to {args.out}")


if __name__ == "__main__":
    main()
