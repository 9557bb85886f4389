import os

import pytest
import torch

import support

support.import_comfy()
support.import_package()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mini_checkpoint(tmp_path_factory):
    """A generated random-weight checkpoint that ComfyUI detects as SD15 (about 600 MB, removed after)."""
    from harness.checkpoint import make_mini_sd15
    base = tmp_path_factory.mktemp("comfy-base")
    folder = base / "models" / "checkpoints"
    folder.mkdir(parents=True)
    make_mini_sd15(str(folder / "mini_sd15.safetensors"))
    return base, "mini_sd15.safetensors"


@pytest.fixture(scope="session")
def server(mini_checkpoint):
    """One real ComfyUI server with this package for the server and browser tests."""
    from harness.server import running_server
    base, _ = mini_checkpoint
    with running_server(str(base), os.environ["COMFYUI_DIR"]) as running:
        yield running


@pytest.fixture(scope="session")
def object_info(server):
    status, info = server.request("/object_info")
    assert status == 200
    return info
