"""Where a published figure comes from: the machine, the date, and the code that measured it. Every script
that writes figures the docs show puts this record under "run" in its JSON."""
import datetime
import os
import platform
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def package_version() -> str:
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        return re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)


def commit() -> str:
    """The checked-out commit, marked "+changes" when the tree differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()
    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU"


def run_record() -> dict:
    import torch
    version_file = os.path.join(os.environ.get("COMFYUI_DIR", ""), "comfyui_version.py")
    comfyui = "unknown"
    if os.path.isfile(version_file):
        with open(version_file, encoding="utf-8") as f:
            comfyui = re.search(r'__version__\s*=\s*"([^"]+)"', f.read()).group(1)
    return {"machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "package_version": package_version(), "commit": commit(), "comfyui": comfyui,
            "torch": torch.__version__}
