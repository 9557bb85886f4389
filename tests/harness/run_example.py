"""The main job: run an example workflow headless on a real ComfyUI.

    python tests/harness/run_example.py [--checkpoint FILE] [--out DIR] [--steps N] [--size PX]

Without --checkpoint it runs the demo workflow on the demo model that ships with the
package (no download, a CPU is enough): plain KSampler and Attend-and-Excite on the same
seeds, written as one comparison picture, with the heatmaps, to the folder it prints.
With --checkpoint (an SD1.x .safetensors/.ckpt) it runs the SD1.5 example on that file.
"""
import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness.server import REPO, running_server  # noqa: E402
from harness.workflow import to_api  # noqa: E402

EXAMPLE = os.path.join(REPO, "example_workflows", "attend_and_excite_sd15.json")
DEMO_EXAMPLE = os.path.join(REPO, "example_workflows", "attend_and_excite_demo.json")


def link_checkpoint(base: str, checkpoint: str) -> str:
    folder = os.path.join(base, "models", "checkpoints")
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(checkpoint)
    target = os.path.join(folder, name)
    if not os.path.exists(target):
        os.symlink(os.path.abspath(checkpoint), target)
    return name


EMPTY_LATENTS = ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyFlux2LatentImage")


# Templates of the families without a mini checkpoint (their text encoders are too large to make
# here): the test server runs them on a tiny random model of the family (tests/tiny_families.py)
# through its test-only loader, which takes the template's loaders' place.
TINY_FAMILIES = {"zimage": "z-image", "qwen_image": "qwen-image", "flux2": "flux.2", "chroma": "chroma"}
LOADERS = {"UNETLoader": "MODEL", "CLIPLoader": "CLIP", "VAELoader": "VAE"}
TINY_LOADER = "AttendExciteTestTinyFamily"


def mini_family(example: str) -> str:
    """Which generated checkpoint (harness.checkpoint.MINI) runs an example; "demo": the
    package's own demo model, no checkpoint; a tiny family's name: its tiny random model."""
    name = os.path.basename(os.fspath(example)).removesuffix(".json")
    family = name.removeprefix("attend_and_excite_")
    if family in TINY_FAMILIES:
        return family
    return next((family for family in ("demo", "sdxl", "sd3", "flux") if family in name), "sd15")


def runs_here(example: str) -> bool:
    """Whether the tests can run an example: Flux.1's text encoder (T5-XXL) and width are too large
    for a mini checkpoint on these machines, so the Flux.1 example is validated and shown, not run."""
    return mini_family(example) != "flux"


def tiny_loader_swapped(prompt: dict, family: str) -> dict:
    """The API prompt with its loaders replaced by the test-only loader of the family's tiny model."""
    loaders = {node_id for node_id, node in prompt.items() if node["class_type"] in LOADERS}
    if not loaders:
        return prompt
    swapped = {node_id: node for node_id, node in prompt.items() if node_id not in loaders}
    tiny = "tiny"
    clip_type = next(node["inputs"]["type"] for node in prompt.values() if node["class_type"] == "CLIPLoader")
    swapped[tiny] = {"class_type": TINY_LOADER, "inputs": {"family": TINY_FAMILIES[family], "type": clip_type}}
    slots = {name: slot for slot, name in enumerate(LOADERS.values())}
    for node in swapped.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] in loaders:
                node["inputs"][name] = [tiny, slots[LOADERS[prompt[value[0]]["class_type"]]]]
    return swapped


def example_prompt(object_info: dict, checkpoint: str, steps: int | None, size: int | None,
                   path: str = EXAMPLE, max_refinement: int | None = None) -> dict:
    with open(path) as f:
        prompt = to_api(json.load(f), object_info)
    if mini_family(path) in TINY_FAMILIES:
        prompt = tiny_loader_swapped(prompt, mini_family(path))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        if steps and "steps" in inputs:
            inputs["steps"] = steps
        if max_refinement is not None and "max_refinement" in inputs:
            inputs["max_refinement"] = max_refinement
        if size and node["class_type"] in EMPTY_LATENTS:
            inputs["width"] = inputs["height"] = size
    return prompt


def comparison(base: str, plain: list[str], guided: list[str]) -> str:
    """The plain images above the Attend-and-Excite ones (same seeds), as one picture."""
    from PIL import Image
    rows = [[Image.open(p).convert("RGB") for p in paths] for paths in (plain, guided)]
    width, height = rows[0][0].size
    picture = Image.new("RGB", (width * len(rows[0]), height * 2), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            picture.paste(image, (x * width, y * height))
    path = os.path.join(base, "plain_vs_attend_and_excite.png")
    picture.save(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an SD1.x checkpoint file; default: the package's demo model")
    parser.add_argument("--out", default=os.path.join(REPO, "out", "example"), help="output folder")
    parser.add_argument("--steps", type=int, help="override the workflow's steps")
    parser.add_argument("--size", type=int, help="override the workflow's image size")
    args = parser.parse_args()
    base = os.path.abspath(args.out)
    os.makedirs(base, exist_ok=True)
    checkpoint = link_checkpoint(base, args.checkpoint) if args.checkpoint else None
    example = EXAMPLE if args.checkpoint else DEMO_EXAMPLE
    with running_server(base, os.environ["COMFYUI_DIR"]) as server:
        _, object_info = server.request("/object_info")
        prompt = example_prompt(object_info, checkpoint, args.steps, args.size, path=example)
        result = server.run_prompt(prompt, timeout=3600)
    if result["status"]["status_str"] != "success":
        sys.exit("the workflow failed: " + json.dumps(result["status"])[:3000])

    def files(node_id):
        return [os.path.join(base, image["type"], image.get("subfolder", ""), image["filename"])
                for image in result["outputs"].get(node_id, {}).get("images", [])]
    saved = {prompt[n]["inputs"]["filename_prefix"]: files(n) for n in prompt if prompt[n]["class_type"] == "SaveImage"}
    plain = next(paths for prefix, paths in saved.items() if "plain" in prefix)
    guided = next(paths for prefix, paths in saved.items() if "attend_excite" in prefix)
    written = [comparison(base, plain, guided)]
    for node_id, node in prompt.items():     # heatmaps, overlays and the peak plot (previews, in temp/)
        for number, path in enumerate(p for p in files(node_id) if f"{os.sep}temp{os.sep}" in p):
            target = os.path.join(base, f"{node['class_type']}_{number + 1}.png")
            shutil.copyfile(path, target)
            written.append(target)
    log = next(output["text"][0] for output in result["outputs"].values() if "text" in output)
    written.append(os.path.join(base, "attend_excite_log.json"))
    with open(written[-1], "w") as f:
        f.write(log)
    print(f"Done: {os.path.basename(example)} on {args.checkpoint or 'the demo model'}; top row plain KSampler, "
          f"bottom row Attend-and-Excite (same seeds), heatmaps and the log of {len(json.loads(log)['steps'])} "
          f"guided steps, in {base}")
    for path in written:
        print("  " + path)


if __name__ == "__main__":
    main()
