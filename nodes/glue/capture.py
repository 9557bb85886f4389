"""The guidance pass as one CUDA graph: captured once per sampling call and replayed for
every guided step and refinement iteration.

Run eagerly, the pass (truncated forward with maps, loss, backward to the latent) spends
most of its wall time launching kernels while the GPU waits. A replay launches them all
at once. A graph replays exactly what was captured, so it is used only where nothing in
the pass changes between steps but the latent and sigma; elsewhere the pass runs eagerly,
with the same results, and the log says why.
"""
import contextlib
import os

import torch

from ..core.excite import Evaluation

EAGER_VARIABLE = "ATTEND_EXCITE_EAGER"
# Wrappers that ComfyUI runs inside the guidance pass (others wrap the whole sampling).
WRAPPERS_IN_PASS = ("calc_cond_batch", "apply_model", "diffusion_model")
# What a conditioning entry may carry that acts per step (or needs a host read) in the pass.
ENTRY_KEYS = {"control": "a ControlNet or T2I adapter", "hooks": "conditioning hooks", "gligen": "GLIGEN boxes",
              "timestep_start": "a timestep range", "timestep_end": "a timestep range"}


def _has_entries(options) -> bool:
    if isinstance(options, dict):
        return any(_has_entries(value) for value in options.values())
    if isinstance(options, (list, tuple)):
        return len(options) > 0
    return options is not None


def capture_blockers(x: torch.Tensor, base_model, modules: list[torch.nn.Module], entry: dict,
                     model_options: dict) -> list[str]:
    """Why the guidance pass cannot be captured in this sampling call; empty when it can.
    model_options: the sampler's, before the pass adds its own patches."""
    reasons = []
    if x.device.type != "cuda":
        reasons.append(f"the model runs on {x.device.type}, not on a CUDA GPU")
    if os.environ.get(EAGER_VARIABLE, "") not in ("", "0"):
        reasons.append(f"{EAGER_VARIABLE} is set")
    weights = [t for module in modules for t in module.parameters()]
    if getattr(base_model, "model_lowvram", False) or any(t.device != x.device for t in weights) or \
            any(getattr(m, "comfy_cast_weights", False) for module in modules for m in module.modules()):
        reasons.append("the model is not fully loaded on the GPU (low-VRAM or partial loading moves weights "
                       "at every call)")
    reasons += [f"the positive conditioning carries {why}" for key, why in ENTRY_KEYS.items() if key in entry]
    if "model_function_wrapper" in model_options:
        reasons.append("a model function wrapper is set (another node patches the model call)")
    transformer_options = model_options.get("transformer_options", {})
    for key, what in (("patches", "attention or block patches"), ("patches_replace", "attention replacements")):
        if _has_entries(transformer_options.get(key)):
            reasons.append(f"the model carries {what} ({', '.join(transformer_options[key])})")
    wrappers = [kind for kind in WRAPPERS_IN_PASS if _has_entries(transformer_options.get("wrappers", {}).get(kind))]
    if wrappers:
        reasons.append(f"the model carries {', '.join(wrappers)} wrappers")
    if "optimized_attention_override" in transformer_options:
        reasons.append("another node overrides the attention function")
    return list(dict.fromkeys(reasons))


_STREAMS = {}


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per GPU for every capture: each new stream would get cuBLAS its own
    workspace, kept for the process's life."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _STREAMS:
        _STREAMS[index] = torch.cuda.Stream(index)
    return _STREAMS[index]


class CaptureFailed(RuntimeError):
    """CUDA refused to capture the pass: the caller runs it eagerly instead."""


class CapturedPass:
    """forward(leaf, sigma) -> (LossValue, peaks, maps), differentiable in leaf, warmed up once
    eagerly, then captured with its backward and replayed on copies of x and sigma."""

    def __init__(self, forward):
        self.forward = forward
        self.graph = None
        self.warmed = False
        self.static = None       # (leaf, sigma) the graph reads
        self.outputs = None      # (loss, peaks, maps, grad) the graph writes
        self.stream = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[Evaluation, torch.Tensor]:
        """The evaluation at x and the subject maps, valid until the next call."""
        if self.static is None:
            self.static = (torch.empty_like(x).requires_grad_(True), torch.empty_like(sigma))
            self.stream = _capture_stream(x.device)
        leaf, static_sigma = self.static
        with torch.no_grad():
            leaf.copy_(x)
            static_sigma.copy_(sigma)
        current = torch.cuda.current_stream(x.device)
        if self.graph is None:
            self.stream.wait_stream(current)
            if not self.warmed:     # CUDA graphs need one eager run on the capture's stream first
                with torch.cuda.stream(self.stream):
                    outputs = self._with_gradient(leaf, static_sigma)
                current.wait_stream(self.stream)
                for tensor in outputs:
                    tensor.record_stream(current)
                self.warmed = True
                loss, peaks, maps, grad = outputs
                return Evaluation(loss, peaks, lambda: grad), maps
            self._capture(leaf, static_sigma)
        self.graph.replay()
        loss, peaks, maps, grad = self.outputs
        return Evaluation(loss.clone(), peaks.clone(), lambda: grad), maps

    def _with_gradient(self, leaf, sigma):
        value, peaks, maps = self.forward(leaf, sigma)
        (grad,) = torch.autograd.grad(value.loss.sum(), leaf)
        return value.loss.detach(), peaks.detach(), maps.detach(), grad

    def _capture(self, leaf, sigma):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(self.stream):
            # relaxed: ComfyUI's batching asks for the free memory, a call CUDA may deem unsafe in a capture
            graph.capture_begin(capture_error_mode="relaxed")
            try:
                outputs = self._with_gradient(leaf, sigma)
            except BaseException as error:
                with contextlib.suppress(RuntimeError):
                    graph.capture_end()
                if isinstance(error, (torch.OutOfMemoryError, KeyboardInterrupt)):
                    raise
                raise CaptureFailed(str(error).splitlines()[0] if str(error) else type(error).__name__) from error
            graph.capture_end()
        self.graph, self.outputs = graph, outputs
