import pytest
import torch

import support

support.import_comfy()
support.import_package()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
