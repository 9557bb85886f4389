"""The tests that need a CUDA GPU (the captured guidance pass): run alone, `pytest tests/gpu`,
since the other suites import ComfyUI on the CPU."""
import torch

import support

support.import_comfy(cpu=not torch.cuda.is_available())
