"""The guidance pass: a conditional-only forward through ComfyUI's own model call
(as PAG and SAG do), with gradients, up to the last block whose maps the loss needs."""
import contextlib
import copy
import dataclasses
import logging
from dataclasses import dataclass

import torch

import comfy.ldm.modules.attention
import comfy.model_management
import comfy.samplers

from ..core.excite import Evaluation
from ..core.memory import choose_pass, fast_pass_bytes
from ..core.scoring import GuidanceLoss
from ..core.settings import DEFAULTS
from .capture import GRAPHS, CaptureFailed, CapturedPass, capture_blockers, replay_key
from .recompute import copy_activation, recomputing
from .recorder import ForwardDone


def autograd_view(tensor: torch.Tensor) -> torch.Tensor:
    """A normal tensor over an inference tensor's memory: autograd can save it for
    backward, and nothing is copied. Tensor subclasses (quantized weights) are copied."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        return tensor.detach().clone()
    return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(
        tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride())


@contextlib.contextmanager
def autograd_weights(modules: list[torch.nn.Module]):
    """Makes the inference-tensor weights of `modules` usable by autograd until exit.

    ComfyUI loads models under torch.inference_mode(), and autograd cannot save
    inference tensors for backward. Each one is swapped for a normal tensor over the
    same memory (so LoRA weights already patched in are what it sees) and put back
    on exit, whatever happens.
    """
    swapped = []
    try:
        with torch.inference_mode(False):
            for owner in (o for module in modules for o in module.modules()):
                for store in (owner._parameters, owner._buffers):
                    for name, tensor in store.items():
                        if tensor is not None and tensor.is_inference():
                            view = autograd_view(tensor)
                            if isinstance(tensor, torch.nn.Parameter):
                                view = torch.nn.Parameter(view, requires_grad=False)
                            swapped.append((store, name, tensor))
                            store[name] = view
        yield
    finally:
        for store, name, tensor in reversed(swapped):
            store[name] = tensor


# Attention kernels without a backward. In the guidance pass only, the blocks that would
# use one get PyTorch's SDPA instead; every other model call keeps the chosen backend.
NO_BACKWARD = {"attention_sage", "attention3_sage", "attention_comfy_kitchen_int8"}


def with_backward_attention(model_options: dict) -> dict:
    """A copy of model_options whose attention calls can be differentiated, through
    ComfyUI's optimized_attention_override (an override already there still applies)."""
    transformer_options = model_options.get("transformer_options", {})
    previous = transformer_options.get("optimized_attention_override")

    def override(func, *args, **kwargs):
        if getattr(func, "__name__", "") in NO_BACKWARD:      # a steered kernel (boost.py) keeps its steering
            pytorch = comfy.ldm.modules.attention.attention_pytorch
            func = func.on(pytorch) if hasattr(func, "on") else pytorch
        return previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
    return {**model_options, "transformer_options": {**transformer_options, "optimized_attention_override": override}}


@contextlib.contextmanager
def differentiable_paths():
    """ComfyUI's own switch for differentiable code paths (newer releases: `in_training`), on
    for the guidance pass: otherwise some kernels have no backward (comfy_kitchen's RoPE in Flux)."""
    if not hasattr(comfy.model_management, "in_training"):
        yield
        return
    previous, comfy.model_management.in_training = comfy.model_management.in_training, True
    try:
        yield
    finally:
        comfy.model_management.in_training = previous


def control_modules(entry: dict) -> list[torch.nn.Module]:
    """The networks of the ControlNets / T2I adapters chained on a conditioning entry: the
    guidance pass runs them, and ComfyUI loads their weights as inference tensors too."""
    found, control = [], entry.get("control")
    while control is not None:
        found += [m for m in (getattr(control, "control_model", None), getattr(control, "t2i_model", None))
                  if isinstance(m, torch.nn.Module)]
        control = getattr(control, "previous_controlnet", None)
    return found


def _entry_on(entry: dict, device: torch.device) -> dict:
    """A copy of a conditioning entry whose model conds are on `device`: moved once, not
    at every pass (and a captured pass cannot copy from the host)."""
    moved = {}
    for name, cond in entry["model_conds"].items():
        value = getattr(cond, "cond", None)
        if isinstance(value, torch.Tensor) or isinstance(value, list) and value and \
                all(isinstance(v, torch.Tensor) for v in value):
            cond = copy.copy(cond)
            cond.cond = value.to(device) if isinstance(value, torch.Tensor) else [v.to(device) for v in value]
        moved[name] = cond
    return {**entry, "model_conds": moved}


@dataclass(frozen=True)
class PassPlan:
    """How a sampling call's guidance pass runs, decided at its first evaluation; forward only reads it."""
    memory: str                     # "fast" or "lean", and for auto why
    lean: bool                      # layers keep their inputs for the backward and run again there
    copies: bool                    # saved activations kept as copies: the model or a ControlNet works in place
    eager_reasons: tuple[str, ...]  # why the pass cannot be a CUDA graph; empty: it is captured

    @property
    def captured(self) -> bool:
        return not self.eager_reasons


class GuidancePass:
    """Scores a latent: the smoothed peak attention of every subject, the loss and its gradient."""

    def __init__(self, base_model, positive_entry: dict, recorder, *, subjects, kept: torch.Tensor,
                 smoothing_kernel: int = DEFAULTS.smoothing_kernel, smoothing_sigma: float = DEFAULTS.smoothing_sigma,
                 loss: str = DEFAULTS.loss, modifiers=None, prompt_columns=(),
                 guidance_memory: str = DEFAULTS.guidance_memory, family: str = ""):
        """recorder: an AttentionRecorder (UNets) or a joint recorder; subjects, kept, modifiers and
        prompt_columns: context columns (see GuidanceLoss); guidance_memory: auto, fast or lean; family: the
        model family's name (auto's estimate)."""
        self.base_model = base_model
        self.entry = positive_entry
        self.recorder = recorder
        self.loss = GuidanceLoss(loss=loss, subjects=subjects, kept=kept, prompt_columns=prompt_columns,
                                 modifiers=modifiers if modifiers is not None else [[] for _ in subjects],
                                 smoothing_kernel=smoothing_kernel, smoothing_sigma=smoothing_sigma)
        # Only what the truncated forward runs needs weights that autograd can save.
        self.modules = recorder.modules_run(base_model.diffusion_model) + control_modules(positive_entry)
        self.recomputed_layers = recorder.recomputed_layers(base_model.diffusion_model)
        self.requested_memory, self.family = guidance_memory, family
        # What else the pass computes from (its subjects, smoothing, recorded blocks): part of a graph's key.
        self.pass_inputs = (loss, tuple(map(tuple, subjects)), tuple(kept.tolist()), smoothing_kernel,
                            smoothing_sigma, type(recorder).__name__, tuple(recorder.blocks))
        self.plan = None          # PassPlan, at the first evaluation
        self.conds = None         # the positive entry on the latent's device
        self.model_options = None  # the sampler's, with the recorder's patches and differentiable attention
        self.saved = None         # the saved-tensor hooks that keep copies, where the plan asks for them
        self.captured = None      # CapturedPass, where the plan captures
        self.replay_key = None
        self.capture_note = ""    # "kept from the previous run" when the last call's graph is replayed
        self.last_maps = None     # (B, S, h, w) of the latest evaluation

    @property
    def memory(self) -> str:
        return self.plan.memory if self.plan else ""

    @property
    def mode(self) -> str:
        """The log's guidance_pass: "CUDA graph", or "eager: " and why."""
        if self.plan is None:
            return ""
        if self.plan.captured:
            return "CUDA graph" + (f", {self.capture_note}" if self.capture_note else "")
        return "eager: " + "; ".join(self.plan.eager_reasons)

    def begin_step(self, binding: float):
        """binding: Divide & Bind's weight at the step about to be guided."""
        self.loss.begin_step(binding)

    def end_step(self):
        self.loss.end_step(self.last_maps)

    def evaluate(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> Evaluation:
        """Under enable_grad, outside inference mode."""
        if self.plan is None:
            self._prepare(x, model_options)
        if self.captured is not None:
            try:
                evaluation, self.last_maps = self.captured(x, sigma)
                return evaluation
            except CaptureFailed as error:
                logging.warning("Attend-and-Excite: the guidance pass could not be captured as a CUDA graph (%s); "
                                "it runs eagerly", error)
                self.captured = None
                self.plan = dataclasses.replace(self.plan, eager_reasons=(f"the capture failed ({error})",))
        leaf = x.detach().clone().requires_grad_(True)
        value, peaks, maps = self.forward(leaf, sigma)
        self.last_maps = maps.detach()
        return Evaluation.of(leaf, value.loss, peaks, value.indicator, value.terms)

    def forward(self, leaf: torch.Tensor, sigma: torch.Tensor):
        """(LossValue, peaks (B, S), subject maps (B, S, h, w)), differentiable in leaf."""
        layers = recomputing(self.recomputed_layers, self.plan.copies, differentiable_paths) if self.plan.lean else \
            contextlib.nullcontext()
        with self.recorder.recording(leaf.shape):
            try:
                with self.saved, differentiable_paths(), layers:
                    comfy.samplers.calc_cond_batch(self.base_model, self.conds, leaf, sigma, self.model_options)
            except ForwardDone:
                pass
            average = self.recorder.take_average()
        return self.loss(average)

    def _plan(self, x: torch.Tensor, model_options: dict) -> PassPlan:
        """fast or lean (auto: from the counted memory and ComfyUI's free-memory estimate), and whether the
        pass can be captured. model_options: the sampler's, before the pass adds its own."""
        on_cpu = x.device.type == "cpu"
        dtype = getattr(self.base_model, "manual_cast_dtype", None) or self.base_model.get_dtype() or x.dtype
        billions = sum(p.numel() for p in self.base_model.diffusion_model.parameters()) / 1e9    # the variant's size
        mode, why = choose_pass(self.requested_memory, on_cpu,
                                0 if on_cpu else comfy.model_management.get_free_memory(x.device),
                                fast_pass_bytes(self.family, x.shape[0], x.shape[-2] * x.shape[-1], dtype.itemsize,
                                                billions),
                                comfy.model_management.minimum_inference_memory())
        if why:
            logging.info("Attend-and-Excite: guidance_memory auto picked the %s pass: %s", mode, why)
        reasons = capture_blockers(x, self.base_model, self.modules, self.entry, model_options)
        if mode == "lean":
            reasons.append("guidance_memory is lean (a captured graph would hold the pass's memory between runs, "
                           "which lean spares)")
        if not self.loss.loss.capturable:
            reasons.append(f"the {self.loss.loss.name} loss runs eagerly (only attend_and_excite's pass is captured)")
        return PassPlan(memory=f"{mode} (auto: {why})" if why else mode, lean=mode == "lean",
                        copies="control" in self.entry or self.recorder.in_place_model, eager_reasons=tuple(reasons))

    def _prepare(self, x: torch.Tensor, model_options: dict):
        """At the first evaluation: the plan; the conditioning and the loss's index tensors on the latent's
        device; the recording options; the captured pass, kept from the previous call where it matches."""
        self.plan = self._plan(x, model_options)
        self.conds = [[_entry_on(self.entry, x.device)]]
        self.loss.to(x.device)
        self.model_options = with_backward_attention(self.recorder.install(model_options))
        # ComfyUI adds a ControlNet's output to the UNet's skip connections, and Flux's blocks their updates to
        # their inputs, in place, after autograd saved them: there, saved activations are kept as copies.
        self.saved = torch.autograd.graph.saved_tensors_hooks(copy_activation, lambda t: t) if self.plan.copies \
            else contextlib.nullcontext()
        if not self.plan.captured:
            GRAPHS.clear()   # its memory may be what pushed the model off the GPU (low-VRAM loading)
            (logging.debug if x.device.type != "cuda" else logging.info)("Attend-and-Excite: the guidance pass runs %s",
                                                                         self.mode)
            return
        self.replay_key = replay_key(x, self.base_model, self.modules, self.pass_inputs)
        kept = GRAPHS.take(self.replay_key, self.conds[0][0])
        self.captured = kept or CapturedPass(self.forward)
        self.capture_note = "kept from the previous run" if kept else ""

    def close(self, keep: bool = True):
        """Keeps the captured graph for the next sampling call, or frees it and its memory."""
        if self.captured is not None:
            if keep:
                GRAPHS.keep(self.replay_key, self.conds[0][0], self.captured, self.base_model)
            else:
                GRAPHS.clear()
        self.captured = None
