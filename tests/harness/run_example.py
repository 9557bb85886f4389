"""The main job: run the package's example workflow headless on a real ComfyUI.

    python tests/harness/run_example.py [--checkpoint FILE] [--out DIR] [--steps N] [--size PX]

With --checkpoint (an SD1.x .safetensors/.ckpt), the workflow runs on it. Without,
it runs on a generated random-weight checkpoint: its images are noise and only show
that the pipeline runs. Images and the per-step log land in the folder it prints.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness.server import REPO, running_server  # noqa: E402
from harness.workflow import to_api  # noqa: E402

EXAMPLE = os.path.join(REPO, "example_workflows", "attend_and_excite_sd15.json")
GENERATED = "mini_sd15_random_weights.safetensors"


def prepare_checkpoint(base: str, checkpoint: str | None) -> str:
    folder = os.path.join(base, "models", "checkpoints")
    os.makedirs(folder, exist_ok=True)
    if checkpoint:
        name = os.path.basename(checkpoint)
        target = os.path.join(folder, name)
        if not os.path.exists(target):
            os.symlink(os.path.abspath(checkpoint), target)
        return name
    target = os.path.join(folder, GENERATED)
    if not os.path.exists(target):
        from support import import_comfy
        import_comfy()
        from harness.checkpoint import make_mini
        print("No --checkpoint given: generating a random-weight mini SD1.5 checkpoint. Its images are noise;\n"
              "they only show that the pipeline runs.", flush=True)
        make_mini("sd15", target)
    return GENERATED


def mini_family(example: str) -> str:
    """Which generated checkpoint (harness.checkpoint.MINI) runs an example."""
    return "sdxl" if "sdxl" in os.path.basename(example) else "sd15"


def example_prompt(object_info: dict, checkpoint: str, steps: int | None, size: int | None,
                   path: str = EXAMPLE, max_refinement: int | None = None) -> dict:
    with open(path) as f:
        prompt = to_api(json.load(f), object_info)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        if steps and "steps" in inputs:
            inputs["steps"] = steps
        if max_refinement is not None and "max_refinement" in inputs:
            inputs["max_refinement"] = max_refinement
        if size and node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = size
    return prompt


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an SD1.x checkpoint file; default: a generated random one")
    parser.add_argument("--out", default=os.path.join(REPO, "out", "example"), help="output folder")
    parser.add_argument("--steps", type=int, help="override the workflow's 50 steps")
    parser.add_argument("--size", type=int, help="override the workflow's 512 px")
    args = parser.parse_args()
    if not args.checkpoint:   # random weights: keep the CPU run short
        args.steps, args.size = args.steps or 10, args.size or 256
    base = os.path.abspath(args.out)
    os.makedirs(base, exist_ok=True)
    checkpoint = prepare_checkpoint(base, args.checkpoint)
    with running_server(base, os.environ["COMFYUI_DIR"]) as server:
        _, object_info = server.request("/object_info")
        result = server.run_prompt(example_prompt(object_info, checkpoint, args.steps, args.size), timeout=3600)
    if result["status"]["status_str"] != "success":
        sys.exit("the workflow failed: " + json.dumps(result["status"])[:3000])
    images = [os.path.join(base, image["type"], image.get("subfolder", ""), image["filename"])
              for output in result["outputs"].values() for image in output.get("images", [])]
    log = next(output["text"][0] for output in result["outputs"].values() if "text" in output)
    with open(os.path.join(base, "attend_excite_log.json"), "w") as f:
        f.write(log)
    steps = json.loads(log)["steps"]
    print(f"Done: {len(images)} images (saved images in output/; heatmaps, overlays and the peak plot in temp/) "
          f"and the log of {len(steps)} guided steps in {base}")
    for image in images:
        print("  " + image)
    print("  " + os.path.join(base, "attend_excite_log.json"))


if __name__ == "__main__":
    main()
