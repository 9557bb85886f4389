"""The repository as users get it: it reads nothing outside itself, its core imports with
torch alone and without side effects, and its code keeps the Comfy Registry's security rules."""
import ast
import os
import re
import subprocess
import sys

import pytest

from support import PACKAGE_NAME, REPO

# Written in pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", r"parent\.parent\.parent", r"dirname\(REPO\)",
                               "/" + "work/", "/" + "root/", "/" + "home/"]))
TEXT_ENDINGS = (".py", ".sh", ".js", ".md", ".toml", ".txt", ".json", ".cfg", ".yml", ".yaml", "Makefile", "run")


def repository_files() -> list[str]:
    """The files a clone holds (git's list; every file but the ignored folders without git)."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return [name for name in listed.splitlines() if os.path.isfile(os.path.join(REPO, name))]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for root, folders, names in os.walk(REPO):
            folders[:] = [f for f in folders if f not in {".git", ".comfy", "out", "__pycache__", ".hypothesis"}]
            files += [os.path.relpath(os.path.join(root, name), REPO) for name in names]
        return files


def package_sources() -> list[str]:
    """The Python files ComfyUI loads: everything but the tests."""
    return [name for name in repository_files() if name.endswith(".py") and not name.startswith("tests/")]


def test_nothing_refers_to_a_path_outside_the_repository():
    found = []
    for name in repository_files():
        if not name.endswith(TEXT_ENDINGS):
            continue
        with open(os.path.join(REPO, name), encoding="utf-8", errors="replace") as f:
            found += [f"{name}:{number}: {line.strip()}" for number, line in enumerate(f, 1) if OUTSIDE.search(line)]
    assert found == []


def test_the_benchmark_prompts_ship_with_the_tests():
    import json
    with open(os.path.join(REPO, "tests", "data", "ae_prompts.json")) as f:
        prompts = json.load(f)
    assert {group: len(items) for group, items in prompts.items()} == {"animals": 66, "animals_objects": 144,
                                                                      "objects": 66}


# The modules that hold the algorithm (not the picture-drawing ones, which use the package's
# declared numpy and Pillow): importable with torch and nothing else.
ALGORITHM = ["boost", "excite", "losses", "maps", "nouns", "record", "schedule", "settings", "tokens"]
NOT_AVAILABLE = ["comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes",
                 "aiohttp", "numpy", "PIL"]


def test_the_core_imports_with_torch_alone_and_the_package_import_has_no_side_effect():
    script = f"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {NOT_AVAILABLE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
sys.path.insert(0, sys.argv[1])
import {PACKAGE_NAME}, {PACKAGE_NAME}.nodes, {PACKAGE_NAME}.nodes.demo
for module in {ALGORITHM!r}:
    __import__("{PACKAGE_NAME}.nodes.core." + module)
print(sorted(m for m in sys.modules if m.split(".")[0] in {NOT_AVAILABLE!r}))
"""
    parent = os.path.dirname(sys.modules[PACKAGE_NAME].__path__[0])
    done = subprocess.run([sys.executable, "-c", script, parent], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "system", "popen", "b64decode"}
FORBIDDEN_IMPORTS = {"subprocess", "pip", "marshal", "base64", "codecs", "ctypes", "pickle"}


def violations(source: str) -> list[str]:
    """What the registry's rules forbid in a Python source: eval/exec, subprocess and shell
    calls (so no runtime pip install), and code decoded at run time."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
            if name in FORBIDDEN_CALLS:
                found.append(f"calls {name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"imports {m}" for m in modules if m.split(".")[0] in FORBIDDEN_IMPORTS and
                      getattr(node, "level", 0) == 0]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.search(r"pip\s+install", node.value):
            found.append(f"mentions pip install: {node.value[:60]!r}")
    return found


@pytest.mark.parametrize("path", package_sources())
def test_the_package_code_keeps_the_registry_security_rules(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        assert violations(f.read()) == []


def test_the_security_scan_sees_what_it_forbids():
    planted = "import subprocess\nfrom base64 import b64decode\neval('1')\nos.system('x')\nhint = 'pip install foo'\n"
    assert violations(planted) == ["imports subprocess", "imports base64", "calls eval", "calls system",
                                   "mentions pip install: 'pip install foo'"]
