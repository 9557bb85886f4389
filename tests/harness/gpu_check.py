"""The device check, one script for a lent GPU: the CUDA-only tests (tests/gpu), then the
guidance pass's cost on the SD1.5 shape at 512 px and the SDXL shape at 1024 px (fp16, random
weights, 50 euler steps): each configuration's time as a ratio to plain sampling and its peak
allocated memory over plain sampling's, fast against lean, no refinement, the default thresholds
and forced full refinement. About 5 minutes on an H200; stops early where the tests fail.

    make gpu-check          (or: python tests/harness/gpu_check.py [--out DIR])

Writes DIR/gpu_check.json (default out/gpu_check/) and prints it.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness.benchmark import MEMORY_CONFIGS, run_in_process  # noqa: E402
from harness.server import REPO  # noqa: E402


def figures(rows: dict) -> dict:
    """Each configuration's seconds per image, ratio to plain, and peak GiB over plain's."""
    plain = rows["plain KSampler"]
    return {name: {"seconds": round(row["seconds"], 3), "x_plain": round(row["seconds"] / plain["seconds"], 3),
                   "peak_over_plain_gib": round(row["peak_gib"] - plain["peak_gib"], 3),
                   "guidance_pass": row["guidance_pass"]} for name, row in rows.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "out", "gpu_check"))
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: the device check runs on a lent GPU (see CONTRIBUTING.md, On a GPU)")
    os.makedirs(args.out, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    start = time.perf_counter()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/gpu"],
                           cwd=REPO, capture_output=True, text=True)
    result["tests"] = {"returncode": tests.returncode, "seconds": round(time.perf_counter() - start),
                       "tail": tests.stdout[-6000:]}
    print(tests.stdout[-6000:], flush=True)
    if tests.returncode == 0:
        for shape in ("sd15", "sdxl"):
            began = time.perf_counter()
            result[shape] = figures(run_in_process(MEMORY_CONFIGS, shape))
            result[shape + "_seconds"] = round(time.perf_counter() - began)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "tests"}, indent=1))
    sys.exit(tests.returncode)


if __name__ == "__main__":
    main()
