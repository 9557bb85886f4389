"""How well the demo model's words are grounded: for rendered two-shape pictures noised to a
few levels, the maps its guidance pass records (the sampler's level, mean over heads and
layers) scored per token kind by the pointing game and the mass inside the shape
(nodes/demo/grounding.py). The article before each kind word ('a'), the end and a padding
token, which name no shape, are scored against the shapes too: their figures are what chance
and layout give.

    python tests/harness/grounding.py [--weights FILE] [--scenes N] [--out DIR]
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness.provenance import run_record  # noqa: E402
from support import REPO, import_comfy, import_package  # noqa: E402

SIGMAS = (14.6, 7.0, 3.0, 1.0)
PADDING_COLUMN = 40
SCENE_SEED = 20_261_129       # no training batch is drawn from it


def token_columns() -> dict:
    """Token kind -> [(context column, the shape it is scored against)] of a two-shape caption."""
    from attend_and_excite.nodes.demo.shapes import kind_column
    end = kind_column(1) + 1
    return {"kind word": [(kind_column(n), n) for n in range(2)],
            "article": [(kind_column(n) - 1, n) for n in range(2)],
            "end token": [(end, n) for n in range(2)],
            "padding": [(PADDING_COLUMN, n) for n in range(2)]}


@torch.no_grad()
def measure(model, clip, vae, scenes: int = 64, sigmas=SIGMAS) -> dict:
    """{sigma: {token kind: {"pointing": share, "mass_inside": mean}}}."""
    import comfy.model_management
    from attend_and_excite.nodes.demo.grounding import mass_inside, pointing_hits
    from attend_and_excite.nodes.demo.shapes import caption, cell_masks, draw, random_scene
    from attend_and_excite.nodes.glue.family import detect_family
    from attend_and_excite.nodes.glue.recorder import AttentionRecorder, ForwardDone, blocks_at_level
    comfy.model_management.load_models_gpu([model])
    base = model.model
    device = model.load_device
    generator = torch.Generator().manual_seed(SCENE_SEED)
    pictures = [random_scene(generator, two_shapes=True) for _ in range(scenes)]
    images = torch.stack([draw(s) for s in pictures])
    x0 = base.process_latent_in(vae.encode(images.movedim(1, -1))).to(device)
    context = torch.cat([clip.encode_from_tokens(clip.tokenize(caption(s))) for s in pictures]).to(device)
    recorder = AttentionRecorder(blocks_at_level(base.diffusion_model, detect_family(base).map_level))
    options = recorder.install({})["transformer_options"]
    results = {}
    for sigma in sigmas:
        noise = torch.randn(x0.shape, generator=generator).to(device)
        with recorder.recording(x0.shape):
            try:
                base.apply_model(x0 + sigma * noise, torch.full((scenes,), sigma, device=device),
                                 c_crossattn=context, transformer_options=options)
            except ForwardDone:
                pass
            attention = recorder.take_average().float().cpu()                   # (N, h, w, T)
        side = attention.shape[1]
        masks = torch.stack([cell_masks(s, side) for s in pictures]).flatten(2)   # (N, 2, cells)
        maps = attention.flatten(1, 2).transpose(1, 2)                            # (N, T, cells)
        results[sigma] = {}
        for kind, pairs in token_columns().items():
            picked = torch.stack([maps[:, column] for column, _ in pairs], dim=1)
            named = torch.stack([masks[:, shape] for _, shape in pairs], dim=1)
            results[sigma][kind] = {"pointing": pointing_hits(picked, named, side).float().mean().item(),
                                    "mass_inside": mass_inside(picked, named).mean().item()}
    return results


def table(results: dict) -> str:
    kinds = list(token_columns())
    lines = ["| sigma | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for sigma, row in results.items():
        lines.append(f"| {sigma:g} | " + " | ".join(
            f"{100 * row[k]['pointing']:.0f}% / {row[k]['mass_inside']:.2f}" for k in kinds) + " |")
    return "\n".join(lines) + "\n\npointing game / mass inside the shape, per token kind"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="default: the package's demo weights")
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(REPO, "out", "fidelity"))
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for ComfyUI's default GPU")
    args = parser.parse_args()
    import_comfy(cpu=args.device == "cpu")
    import_package()
    from attend_and_excite.nodes.demo import model as demo_model
    results = measure(*demo_model.load(args.weights or demo_model.WEIGHTS), scenes=args.scenes)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "grounding.json"), "w") as f:
        json.dump({"run": run_record(), "scenes": args.scenes, "by_sigma": results}, f, indent=1)
    with open(os.path.join(args.out, "grounding.md"), "w") as f:
        f.write(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
