"""Template thumbnails and the README screenshot, from the browser tests' screenshots.

    make thumbnails    (runs tests/comfyui/test_browser.py, then this)

Each example_workflows/<name>.json gets <name>.jpg: the workflow after a run, as the
browser showed it (the demo example on the demo model, the SD ones on the random-weight
mini checkpoints, the Z-Image, Qwen-Image, Flux.2 and Chroma ones on tiny random models in
their loaders' place), or as dropped on the canvas for an example the tests cannot run (Flux.1).
Flux.2's runs only on a ComfyUI with its tokenizer (0.33.0 here): its browser test there leaves
its screenshot in the same folder.
"""
import os
import sys

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness.run_example import runs_here  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHOTS = os.path.join(os.environ.get("AE_TEST_OUTPUT", os.path.join(REPO, "out", "tests")), "browser")
README_SCREENSHOT = os.path.join(REPO, "js", "docs", "screenshot.jpg")


def save_jpeg(source: str, target: str, width: int):
    with Image.open(source) as picture:
        picture = picture.convert("RGB")
        picture.thumbnail((width, width * 10), Image.Resampling.LANCZOS)
        picture.save(target, quality=85, optimize=True)
    print(f"{target} ({os.path.getsize(target) // 1024} KB)")


def main():
    examples = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "example_workflows")) if f.endswith(".json"))
    for name in examples:
        after_run = os.path.join(SHOTS, f"after-run-{name}.png")
        # a template whose run this tree skips (Flux.2 on 0.3.75: its tokenizer) keeps a run from another tree
        shown = "after-run" if runs_here(name) and os.path.exists(after_run) else "example"
        shot = os.path.join(SHOTS, f"{shown}-{name}.png")
        if not os.path.exists(shot):
            sys.exit(f"no screenshot {shot}: run tests/comfyui/test_browser.py first")
        save_jpeg(shot, os.path.join(REPO, "example_workflows", f"{name}.jpg"), 800)
    save_jpeg(os.path.join(SHOTS, "after-run-attend_and_excite_demo.png"), README_SCREENSHOT, 1400)


if __name__ == "__main__":
    main()
