"""The guidance pass: a conditional-only forward through ComfyUI's own model call
(as PAG and SAG do), with gradients, up to the last block whose maps the loss needs."""
import contextlib
import copy
import logging

import torch

import comfy.ldm.modules.attention
import comfy.model_management
import comfy.samplers

from ..core.excite import Evaluation
from ..core.losses import Words, loss_named, retention_masks
from ..core.maps import SubjectScorer, gaussian_kernel
from ..core.memory import choose_pass, fast_pass_bytes
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


class GuidancePass:
    """Scores a latent: the smoothed peak attention of every subject, the loss and its gradient."""

    def __init__(self, base_model, positive_entry: dict, subjects: list[list[int]], kept: torch.Tensor,
                 recorder, kernel_size: int, sigma: float, loss: str = "attend_and_excite",
                 modifiers: list[list[list[int]]] | None = None, prompt_columns: list[int] = (),
                 guidance_memory: str = "auto", family: str = ""):
        """kept: the context columns of the token softmax; recorder: an AttentionRecorder
        (UNets) or a JointAttentionRecorder (MMDiT); modifiers: each subject's modifiers'
        columns; prompt_columns: every prompt token's (SynGen's token maps); guidance_memory:
        auto, fast or lean; family: the model family's name (auto's estimate)."""
        self.base_model = base_model
        self.entry = positive_entry
        self.loss = loss_named(loss)
        modifiers = modifiers if modifiers is not None else [[] for _ in subjects]
        used = {c for s in subjects for c in s} | {c for own in modifiers for m in own for c in m}
        prompt_columns = sorted(used | set(prompt_columns))
        self.words = Words.of(subjects, modifiers, prompt_columns)
        scored = subjects + [m for own in modifiers for m in own] if self.loss.reads_modifier_maps else subjects
        with torch.inference_mode(False):  # autograd saves these; inference tensors it cannot
            self.score = SubjectScorer(scored, kept.clone(), gaussian_kernel(kernel_size, sigma))
            self.token_columns = torch.tensor(prompt_columns, dtype=torch.long)
        self.binding = 0.0            # Divide & Bind's weight at the current step
        self.previous_masks = None    # A-STAR's masks of the previous guided step
        self.recorder = recorder
        # Only what the truncated forward runs needs weights that autograd can save.
        self.modules = recorder.modules_run(base_model.diffusion_model) + control_modules(positive_entry)
        self.conds = None
        self.model_options = None
        self.captured = None      # CapturedPass, where this call's pass can be a CUDA graph
        self.replay_key = None
        # What else the pass computes from (its subjects, smoothing, recorded blocks): part of a graph's key.
        self.pass_inputs = (loss, tuple(map(tuple, subjects)), tuple(kept.tolist()), kernel_size, sigma,
                            type(recorder).__name__, tuple(recorder.blocks))
        self.mode = ""            # "CUDA graph", or "eager: " and why
        self.last_maps = None     # (B, S, h, w) of the latest evaluation
        # ComfyUI adds a ControlNet's output to the UNet's skip connections, and Flux's blocks
        # their updates to their inputs, in place, after autograd saved them: there, saved
        # activations are kept as copies.
        self.copies = "control" in positive_entry or recorder.in_place_model
        self.saved = (torch.autograd.graph.saved_tensors_hooks(copy_activation, lambda t: t)
                      if self.copies else contextlib.nullcontext())
        self.requested_memory, self.family = guidance_memory, family
        self.recomputed_layers = recorder.recomputed_layers(base_model.diffusion_model)
        self.lean = False
        self.memory = ""          # the pass that ran: fast or lean, and for auto why

    def begin_step(self, binding: float):
        """binding: Divide & Bind's weight at the step about to be guided."""
        self.binding = binding

    def end_step(self):
        """A-STAR retains what the step's last evaluation, the one its update used, found."""
        if self.loss.retains_masks:
            self.previous_masks = retention_masks(self.last_maps)

    def evaluate(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> Evaluation:
        """Under enable_grad, outside inference mode."""
        if self.model_options is None:
            self._prepare(x, model_options)
        if self.captured is not None:
            try:
                evaluation, self.last_maps = self.captured(x, sigma)
                return evaluation
            except CaptureFailed as error:
                logging.warning("Attend-and-Excite: the guidance pass could not be captured as a CUDA graph (%s); "
                                "it runs eagerly", error)
                self.captured, self.mode = None, f"eager: the capture failed ({error})"
        leaf = x.detach().clone().requires_grad_(True)
        value, peaks, maps = self.forward(leaf, sigma)
        self.last_maps = maps.detach()
        return Evaluation.of(leaf, value.loss, peaks, value.indicator, value.terms)

    def forward(self, leaf: torch.Tensor, sigma: torch.Tensor):
        """(LossValue, peaks (B, S), subject maps (B, S, h, w)), differentiable in leaf."""
        self.recorder.reset(leaf.shape)
        layers = recomputing(self.recomputed_layers, self.copies, differentiable_paths) if self.lean else \
            contextlib.nullcontext()
        try:
            with self.saved, differentiable_paths(), layers:
                comfy.samplers.calc_cond_batch(self.base_model, self.conds, leaf, sigma, self.model_options)
        except ForwardDone:
            pass
        average = self.recorder.take_average()
        maps = self.score.maps(average)
        subject_maps = maps[:, :self.words.subjects]
        peaks = subject_maps.amax(dim=(-1, -2))
        tokens = average[..., self.token_columns].flatten(1, 2).transpose(1, 2) if self.loss.reads_token_maps else None
        value = self.loss.value(maps, peaks, self.words, tokens, self.binding, self.previous_masks)
        return value, peaks, subject_maps

    def _choose_memory(self, x: torch.Tensor):
        on_cpu = x.device.type == "cpu"
        dtype = getattr(self.base_model, "manual_cast_dtype", None) or self.base_model.get_dtype() or x.dtype
        billions = sum(p.numel() for p in self.base_model.diffusion_model.parameters()) / 1e9    # the variant's size
        mode, why = choose_pass(self.requested_memory, on_cpu,
                                0 if on_cpu else comfy.model_management.get_free_memory(x.device),
                                fast_pass_bytes(self.family, x.shape[0], x.shape[-2] * x.shape[-1], dtype.itemsize,
                                                billions),
                                comfy.model_management.minimum_inference_memory())
        self.lean = mode == "lean"
        self.memory = f"{mode} (auto: {why})" if why else mode
        if why:
            logging.info("Attend-and-Excite: guidance_memory auto picked the %s pass: %s", mode, why)

    def _prepare(self, x: torch.Tensor, model_options: dict):
        self._choose_memory(x)
        blockers = capture_blockers(x, self.base_model, self.modules, self.entry, model_options)
        if self.lean:
            blockers.append("guidance_memory is lean (a captured graph would hold the pass's memory between runs, "
                            "which lean spares)")
        self.conds = [[_entry_on(self.entry, x.device)]]
        self.score.to(x.device)
        self.token_columns = self.token_columns.to(x.device)
        if not self.loss.capturable:
            blockers.append(f"the {self.loss.name} loss runs eagerly (only attend_and_excite's pass is captured)")
        self.model_options = with_backward_attention(self.recorder.install(model_options))
        if blockers:
            GRAPHS.clear()   # its memory may be what pushed the model off the GPU (low-VRAM loading)
            self.mode = "eager: " + "; ".join(blockers)
            (logging.debug if x.device.type != "cuda" else logging.info)("Attend-and-Excite: the guidance pass runs %s",
                                                                         self.mode)
        else:
            self.replay_key = replay_key(x, self.base_model, self.modules, self.pass_inputs)
            kept = GRAPHS.take(self.replay_key, self.conds[0][0])
            self.captured = kept or CapturedPass(self.forward)
            self.mode = "CUDA graph, kept from the previous run" if kept else "CUDA graph"

    def close(self, keep: bool = True):
        """Keeps the captured graph for the next sampling call, or frees it and its memory."""
        if self.captured is not None:
            if keep:
                GRAPHS.keep(self.replay_key, self.conds[0][0], self.captured, self.base_model)
            else:
                GRAPHS.clear()
        self.captured = None
