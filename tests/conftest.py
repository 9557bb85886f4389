"""Shared by both suites: tests/core needs torch alone, tests/comfyui a real ComfyUI (its
own conftest imports it)."""
import os

import pytest
import torch
from hypothesis import settings

import support

# The same examples on every run (CI must not turn red on a newly drawn one), and no
# example database written into the checkout; HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

support.import_package()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
