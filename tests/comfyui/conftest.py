"""The tests that run real ComfyUI code: ComfyUI imported in-process, and one server."""
import os

import pytest

import support

support.import_comfy()


@pytest.fixture(scope="session")
def tokenizer():
    """ComfyUI's bundled SD1 (CLIP-L) tokenizer."""
    import comfy.sd1_clip
    return comfy.sd1_clip.SD1Tokenizer()


@pytest.fixture(scope="session")
def mini_checkpoints(tmp_path_factory):
    """Generated random-weight checkpoints that ComfyUI detects as SD15 and SDXL (0.5 and
    2.4 GB, removed after): the base folder and {family: file name}."""
    from harness.checkpoint import MINI, make_mini
    base = tmp_path_factory.mktemp("comfy-base")
    folder = base / "models" / "checkpoints"
    folder.mkdir(parents=True)
    names = {family: f"mini_{family}.safetensors" for family in MINI}
    for family, name in names.items():
        make_mini(family, str(folder / name))
    return base, names


@pytest.fixture(scope="session")
def server(mini_checkpoints):
    """One real ComfyUI server with this package for the server and browser tests."""
    from harness.server import running_server
    base, _ = mini_checkpoints
    with running_server(str(base), os.environ["COMFYUI_DIR"]) as running:
        yield running


@pytest.fixture(scope="session")
def object_info(server):
    status, info = server.request("/object_info")
    assert status == 200
    return info
