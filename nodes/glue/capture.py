"""The guidance pass as one CUDA graph: captured in a sampling call, replayed for every
guided step and refinement iteration, and kept for the next call with the same inputs.

Run eagerly, the pass (truncated forward with maps, loss, backward to the latent) spends
most of its wall time launching kernels while the GPU waits. A replay launches them all
at once. A graph replays exactly what was captured, so it is used only where nothing in
the pass changes between steps but the latent and sigma; elsewhere the pass runs eagerly,
with the same results, and the log says why.
"""
import contextlib
import itertools
import os
import weakref

import torch

import comfy.model_management

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

    @property
    def ready(self) -> bool:
        """Captured: the next call only replays."""
        return self.graph is not None

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


def replay_key(x: torch.Tensor, base_model, modules: list[torch.nn.Module], pass_inputs: tuple) -> tuple:
    """What a replay reads besides the latent's and sigma's values and the conditioning (compared
    apart, by value): a graph replays raw addresses, so the weights' memory, their versions where
    autograd tracks them (ComfyUI's inference tensors have none: there, the patches ComfyUI applied
    to them stand for their content), the model's dtypes, the latent's layout and the pass's own
    inputs (subjects, smoothing, recorded blocks)."""
    weights = tuple((t.data_ptr(), t.dtype, t.shape, None if t.is_inference() else t._version)
                    for module in modules for t in itertools.chain(module.parameters(), module.buffers()))
    return (id(base_model), getattr(base_model, "current_weight_patches_uuid", None), base_model.get_dtype(),
            getattr(base_model, "manual_cast_dtype", None), weights, tuple(x.shape), x.dtype, x.device, pass_inputs)


def _same_value(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(u, v) for u, v in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError, RuntimeError):   # no equality that yields one truth value: not known the same
        return False


# Set anew by ComfyUI for every sampling call, whatever its inputs.
PER_CALL_ENTRY_KEYS = {"uuid"}


def same_conditioning(a: dict, b: dict) -> bool:
    """Whether two conditioning entries give the model the same inputs: each model cond of the
    same kind and value, the other fields (area, strength, mask, subjects) equal."""
    keys = a.keys() - PER_CALL_ENTRY_KEYS
    if keys != b.keys() - PER_CALL_ENTRY_KEYS or a["model_conds"].keys() != b["model_conds"].keys():
        return False
    for name, cond in a["model_conds"].items():
        other = b["model_conds"][name]
        if type(cond) is not type(other) or not _same_value(getattr(cond, "cond", cond), getattr(other, "cond", other)):
            return False
    return all(_same_value(a[key], b[key]) for key in keys - {"model_conds"})


def _loaded_model_of(base_model):
    """ComfyUI's record of the model as loaded: it drops it when it unloads the model, or loads a
    clone with other weight patches in its place."""
    return next((loaded for loaded in comfy.model_management.current_loaded_models
                 if getattr(loaded.model, "model", None) is base_model), None)


class GraphCache:
    """The last captured pass, replayed by the next sampling call with the same key and
    conditioning. Freed on a miss (before the new pass is captured), when ComfyUI unloads its
    model or swaps in another patched clone, and on demand (out of memory)."""

    def __init__(self):
        self._kept = None     # (key, conditioning entry, CapturedPass, finalizer)

    def take(self, key: tuple, entry: dict) -> CapturedPass | None:
        if self._kept is not None:
            kept_key, kept_entry, captured, _ = self._kept
            if kept_key == key and same_conditioning(kept_entry, entry):
                return captured
            self.clear()
        return None

    def keep(self, key: tuple, entry: dict, captured: CapturedPass, base_model):
        if self._kept is not None and self._kept[2] is captured:
            return
        self.clear()
        loaded = _loaded_model_of(base_model)
        if captured.ready and loaded is not None:
            self._kept = (key, entry, captured, weakref.finalize(loaded, self.clear))

    def clear(self):
        kept, self._kept = self._kept, None
        if kept is not None:
            kept[3].detach()


GRAPHS = GraphCache()
