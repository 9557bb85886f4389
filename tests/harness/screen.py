"""Learning curves of a demo-model training run: a quick screen of each snapshot the run
wrote (train_demo.py --snapshot-every), one JSON line per snapshot in WORK/curve.jsonl, and
a picture per snapshot (plain above Attend-and-Excite, same seeds) in WORK/screen/.

    python tests/harness/screen.py WORK [--images N]
    python tests/harness/screen.py --table WORK [WORK ...]     (the curves as a Markdown table)

The screen: one-shape prompts (drawn as asked, per kind), and every two-subject prompt with
plain sampling and with Attend-and-Excite at the paper's defaults (both kinds present, at
least one, exactly the two, damaged; the paired gain; the presence signal's AUC), the
fidelity benchmark's measures on fewer images. Snapshots already in the curve are skipped.
"""
import argparse
import glob
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from support import import_comfy, import_package  # noqa: E402


def screen(weights: str, images: int) -> tuple[dict, torch.Tensor]:
    """(the snapshot's figures, its picture)."""
    from attend_and_excite.nodes.demo import model as demo_model
    from attend_and_excite.nodes.demo.shapes import subject_pairs
    from harness.fidelity import grid, measure, single_shapes
    model, clip, vae = demo_model.load(weights)
    kinds = demo_model.vocabulary(weights)
    pairs = subject_pairs(kinds)
    results, pictures = measure(model, clip, vae, pairs, [0], images, samplers=("plain", "attend_and_excite"),
                                scales=(), log=lambda _: None)
    singles = single_shapes(model, clip, vae, [0, 1], images, kinds=kinds)
    plain, guided = results["samplers"]["plain"], results["samplers"]["attend_and_excite"]
    presence = results["presence"]
    figures = {
        "singles_as_asked": singles["as_asked"]["rate"],
        "singles_by_kind": {k: r["rate"] for k, r in singles["by_kind"].items()},
        "singles_kind_right": singles["kind_right"]["rate"],
        **{f"{name}_{column}": summary[column]["rate"] for name, summary in (("plain", plain), ("ae", guided))
           for column in ("both_kinds", "any_kind", "exact", "damaged")},
        "gain": results["gain_over_plain"]["attend_and_excite"],
        "presence_auc": presence["auc"],
        "presence_auc_by_step": [s["auc"] for s in presence["by_step"]],
        "peak_present": presence["mean_peak_present"], "peak_missing": presence["mean_peak_missing"],
    }
    rows = [pictures[pair, name] for pair in pairs[::2] for name in ("plain", "attend_and_excite")]
    return figures, grid(rows)


def table(works: list[str]) -> str:
    """Every snapshot's figures of the runs in `works`, one row each."""
    rows = ["| run | step | singles as asked (per kind) | plain: both kinds / damaged | "
            "A&E: both kinds / damaged | gain [95%] | presence AUC |", "|---|---|---|---|---|---|---|"]
    for work in works:
        with open(os.path.join(work, "curve.jsonl")) as f:
            for line in sorted((json.loads(l) for l in f), key=lambda r: r["step"]):
                kinds = ", ".join(f"{k} {100 * v:.0f}" for k, v in line["singles_by_kind"].items())
                gain = line["gain"]
                auc = "-" if line["presence_auc"] is None else f"{line['presence_auc']:.2f}"
                rows.append(f"| {os.path.basename(work.rstrip('/'))} | {line['step']} | "
                            f"{100 * line['singles_as_asked']:.0f}% ({kinds}) | "
                            f"{100 * line['plain_both_kinds']:.0f}% / "
                            f"{100 * line['plain_damaged']:.0f}% | {100 * line['ae_both_kinds']:.0f}% / "
                            f"{100 * line['ae_damaged']:.0f}% | {100 * gain['rate']:+.0f} [{100 * gain['low']:+.0f}, "
                            f"{100 * gain['high']:+.0f}] | {auc} |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", nargs="+")
    parser.add_argument("--images", type=int, default=8, help="images per prompt (one batch)")
    parser.add_argument("--table", action="store_true", help="print the curves of the runs, evaluate nothing")
    args = parser.parse_args()
    if args.table:
        print(table(args.work))
        return
    args.work = args.work[0]
    torch.set_num_threads(1)
    import_comfy()
    import_package()
    from PIL import Image
    curve = os.path.join(args.work, "curve.jsonl")
    done = set()
    if os.path.exists(curve):
        with open(curve) as f:
            done = {json.loads(line)["snapshot"] for line in f}
    os.makedirs(os.path.join(args.work, "screen"), exist_ok=True)
    for path in sorted(glob.glob(os.path.join(args.work, "snapshots", "step_*.safetensors"))):
        name = os.path.basename(path)
        if name in done:
            continue
        started = time.time()
        figures, picture = screen(path, args.images)
        step = int(name[len("step_"):-len(".safetensors")])
        line = {"snapshot": name, "step": step, **figures, "seconds": round(time.time() - started)}
        with open(curve, "a") as f:
            f.write(json.dumps(line) + "\n")
        Image.fromarray((picture * 255).round().byte().permute(1, 2, 0).numpy()).save(
            os.path.join(args.work, "screen", name.replace(".safetensors", ".png")))
        print(f"step {step}: singles {figures['singles_as_asked']:.0%} {figures['singles_by_kind']}, plain both "
              f"{figures['plain_both_kinds']:.0%} (damaged {figures['plain_damaged']:.0%}), A&E both "
              f"{figures['ae_both_kinds']:.0%} (damaged {figures['ae_damaged']:.0%}), "
              f"gain {figures['gain']['rate']:+.0%} "
              f"[{figures['gain']['low']:+.0%}, {figures['gain']['high']:+.0%}], AUC {figures['presence_auc']}, "
              f"{line['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
