"""The package as the Comfy Registry takes it, checked with comfy-cli's own code (offline):
its pyproject.toml parser, the security rules `comfy node validate` runs, and the archive
`comfy node pack` / `comfy node publish` build."""
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from support import REPO

RAW_FILE = re.compile(r"^https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/(?P<path>.+)$")
# What `comfy node validate` asks ruff for: exec (S102), eval (S307), several statements on a line (E702).
VALIDATE_RULES = "S102,S307,E702"


@pytest.fixture(scope="module")
def config():
    from comfy_cli.registry.config_parser import extract_node_configuration
    found = extract_node_configuration(os.path.join(REPO, "pyproject.toml"))
    assert found is not None, "comfy-cli could not read pyproject.toml"
    return found


def test_pyproject_holds_what_the_registry_requires(config):
    import semver
    project, comfy = config.project, config.tool_comfy
    assert semver.Version.is_valid(project.version), project.version
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,98}", project.name) and "comfyui" not in project.name
    assert project.description and project.license.file and os.path.isfile(os.path.join(REPO, project.license.file))
    assert project.urls.repository.startswith("https://github.com/") and project.urls.issues
    assert comfy.publisher_id and comfy.display_name
    icon = RAW_FILE.match(comfy.icon)
    assert icon and os.path.isfile(os.path.join(REPO, icon["path"])), f"the icon {comfy.icon} is not in the repository"
    # The dependencies never name torch: installing the package must not replace a user's torch.
    assert not any(re.match(r"torch\b", d) for d in project.dependencies)
    with open(os.path.join(REPO, "requirements.txt")) as f:
        assert sorted(line.strip() for line in f if line.strip()) == sorted(project.dependencies)


def test_requires_comfyui_admits_the_comfyui_under_test(config):
    import comfyui_version
    assert Version(comfyui_version.__version__) in SpecifierSet(config.project.supported_comfyui_version)


def test_comfy_node_validates_security_rules_find_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", ".", "-q", "--select", VALIDATE_RULES,
                           "--exit-zero", "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_the_security_check_sees_what_it_forbids(tmp_path):
    (tmp_path / "planted.py").write_text("exec('x = 1')\nvalue = eval('1'); other = 2\n")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", ".", "-q", "--select", VALIDATE_RULES,
                           "--exit-zero", "--no-cache"], cwd=tmp_path, capture_output=True, text=True)
    assert all(rule in done.stdout for rule in VALIDATE_RULES.split(",")), done.stdout


def test_make_test_lints_the_tree_with_the_registry_rules():
    """`make test` runs `make lint` first, and its ruff configuration keeps every rule the Registry asks for."""
    import tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        selected = tomllib.load(f)["tool"]["ruff"]["lint"]["select"]
    assert set(VALIDATE_RULES.split(",")) <= set(selected) and "F" in selected
    with open(os.path.join(REPO, "Makefile")) as f:
        makefile = f.read()
    assert re.search(r"^test: lint$", makefile, re.M) and re.search(r"^lint:\n\t.*ruff check", makefile, re.M)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, config):
    """The archive comfy-cli builds from this checkout (git's files less .comfyignore)."""
    from comfy_cli.file_utils import zip_files
    assert os.path.isdir(os.path.join(REPO, ".git")), "the archive is built from a git checkout, as comfy-cli does"
    path = tmp_path_factory.mktemp("pack") / "node.zip"
    here = os.getcwd()
    os.chdir(REPO)       # comfy-cli packs the current folder
    try:
        zip_files(str(path), includes=config.tool_comfy.includes)
    finally:
        os.chdir(here)
    with zipfile.ZipFile(path) as z:
        return path, set(z.namelist())


def test_the_archive_holds_what_users_need_and_none_of_the_tests(archive):
    path, names = archive
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    needed = [n for n in tracked if n.split("/")[0] in {"nodes", "js", "example_workflows"} or
              n in {"__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md"}]
    assert "nodes/demo/attend_excite_shapes.safetensors" in needed and "js/token_picker.js" in needed
    assert set(needed) <= names
    assert not [n for n in names if n.split("/")[0] in {"tests", ".ci"} or n == "Makefile"]
    size = round(os.path.getsize(path) / 1e6)
    assert size <= 20 and f"{size} MB, most of it the two demo models" in Path(REPO, "README.md").read_text()
