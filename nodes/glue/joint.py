"""Joint attention (text and image tokens in one softmax): where a family's joint attention calls
are, and the recorders of its maps.

- Double-stream blocks (SD3, Flux.1, Flux.2, Chroma, Qwen-Image): each hooked block gets a `dit`
  replace patch on a copy of the options. It runs the block (or a replacement already there) with an
  attention override that hands the block's joint call to a handler.
- Single-stream layers (Z-Image): no block patch exists on every release, so an attention override on
  a copy of the options tells the main layers' calls from the refiners' by their sequence's length
  ([text, image], each padded to the model's multiple) and hands them to the handler, counted.

A handler gets (func, call, kwargs, proceed, text_length, number) and returns the attention's output,
`proceed(kernel)` running the call with a kernel through the overrides that were there before: the
recorders record the image queries' attention to the text keys (fp32, softmax over the whole joint
sequence, after RoPE: what the model attends with) and proceed with the chosen backend; the
gradient-free steering (boost.py) proceeds with a steered kernel, so an override outside it (a recorder
of the guidance pass) still sees the whole call. Every other call keeps ComfyUI's backend.
"""
from dataclasses import dataclass

import torch

import comfy.model_patcher

from ..core.maps import joint_text_probabilities, split_heads
from .recorder import AttentionSum, ForwardDone

# Children of a diffusion model that run after its joint blocks.
AFTER_JOINT_BLOCKS = {"single_blocks", "final_layer", "norm_out", "proj_out"}
# The lists of double-stream blocks ComfyUI patches as `double_block`: Flux's, SD3's, Qwen-Image's.
BLOCK_LISTS = ("double_blocks", "joint_blocks", "transformer_blocks")


@dataclass(frozen=True)
class JointBlock:
    number: int

    @property
    def key(self) -> tuple:
        """Its `dit` patch key."""
        return "double_block", self.number


def joint_blocks(diffusion_model, name: str = "") -> list[JointBlock]:
    """The double-stream blocks of `name` (by default the first list the model has): ComfyUI patches each
    as `double_block`."""
    name = name or next((n for n in BLOCK_LISTS if hasattr(diffusion_model, n)), "")
    if not hasattr(diffusion_model, name):
        raise ValueError("this model has no joint attention blocks (Flux's double blocks, SD3's joint blocks)")
    return [JointBlock(n) for n in range(len(getattr(diffusion_model, name)))]


def attention_call(call: tuple, kwargs: dict) -> tuple:
    """(q, k as (B, H, N, D), heads, mask) of an optimized-attention call."""
    q, k = call[0], call[1]
    heads = call[3] if len(call) > 3 else kwargs["heads"]
    mask = call[4] if len(call) > 4 else kwargs.get("mask")
    if not kwargs.get("skip_reshape", False):
        q, k = split_heads(q, heads), split_heads(k, heads)
    return q, k, heads, mask


def hook_blocks(model_options: dict, blocks: list[JointBlock], handler, stop_after_last: bool = False) -> dict:
    """A copy of model_options whose `blocks` hand their joint attention call to `handler`, wrapping any `dit`
    replacement already there; stop_after_last: the forward ends after the last block (ForwardDone)."""
    model_options = {**model_options, "transformer_options": model_options.get("transformer_options", {})}
    existing = model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for block in blocks:
        patch = _block_patch(block, existing.get(block.key), handler, stop_after_last and block is blocks[-1])
        model_options = comfy.model_patcher.set_model_options_patch_replace(model_options, patch, "dit", *block.key)
    return model_options


def _proceed(outer, call: tuple, kwargs: dict):
    """kernel -> the call's output with that kernel, through the override that was there before (which
    sees the whole call: a recorder records what the model attends with, a backend swap still applies)."""
    def proceed(kernel):
        return outer(kernel, *call, **kwargs) if outer is not None else kernel(*call, **kwargs)
    return proceed


def _block_patch(block: JointBlock, previous, handler, is_last: bool):
    def hooked(args, extra):
        text_length, image_length = args["txt"].shape[1], args["img"].shape[1]
        options = args["transformer_options"]
        outer = options.get("optimized_attention_override")

        def override(func, *call, **kwargs):
            proceed = _proceed(outer, call, kwargs)
            if attention_call(call, kwargs)[0].shape[2] != text_length + image_length:
                return proceed(func)            # SD3.5 medium's image-only attention
            return handler(func, call, kwargs, proceed, text_length, block.number)
        inner = {**args, "transformer_options": {**options, "optimized_attention_override": override}}
        out = previous(inner, extra) if previous is not None else extra["original_block"](inner)
        if is_last:
            raise ForwardDone
        return out
    return hooked


def hook_layers(model_options: dict, is_joint, handler) -> dict:
    """A copy of model_options whose attention calls of the single-stream layers' [text, image] sequence
    (`is_joint(kwargs, length)`) go to handler(func, call, kwargs, proceed, length), wrapping an override
    already there."""
    options = model_options.get("transformer_options", {})
    outer = options.get("optimized_attention_override")

    def override(func, *call, **kwargs):
        proceed = _proceed(outer, call, kwargs)
        length = attention_call(call, kwargs)[0].shape[2]
        if not is_joint(kwargs, length):
            return proceed(func)
        return handler(func, call, kwargs, proceed, length)
    return {**model_options, "transformer_options": {**options, "optimized_attention_override": override}}


def single_stream_lengths(diffusion_model, text_length: int, latent_shape: tuple) -> tuple[int, int]:
    """(text, text + image): a single-stream model's joint sequence, each part padded to the model's multiple."""
    multiple = getattr(diffusion_model, "pad_tokens_multiple", None) or 1
    image = 1
    for side in latent_shape[-2:]:
        image *= -(-side // diffusion_model.patch_size)
    text = text_length + (-text_length % multiple)
    return text, text + image + (-image % multiple)


class JointSum(AttentionSum):
    """Sums the image queries' attention over the text keys, over heads and blocks, in fp32."""

    attention = "joint attention"

    def _start(self, latent_shape: tuple):
        super()._start(latent_shape)
        self.shape = tuple(-(-side // self.patch_size) for side in latent_shape[-2:])

    def _record(self, func, call: tuple, kwargs: dict, proceed, text_length: int, number: int):
        """Adds a joint call's probabilities: the image queries of a [text, image, later image tokens]
        sequence (Kontext's reference latents and single-stream padding are no query of the maps) over the
        text keys. Computed even when closed (see AttentionSum.recording)."""
        q, k, heads, mask = attention_call(call, kwargs)
        grid = self.shape[0] * self.shape[1]
        summed = joint_text_probabilities(q, k, text_length, grid, mask).sum(dim=1)
        if self.open:
            self.total = summed if self.total is None else self.total + summed
            self.heads += heads
        return proceed(func)


class JointAttentionRecorder(JointSum):
    """Double-stream blocks, each through a `dit` replace patch."""

    in_place_model = True      # Flux's blocks add their updates to their inputs in place

    def __init__(self, blocks: list[JointBlock], patch_size: int, block_list: str = ""):
        self.blocks = blocks
        self.patch_size = patch_size
        self.block_list = block_list

    def _list(self, diffusion_model) -> str:
        return self.block_list or next(n for n in BLOCK_LISTS if hasattr(diffusion_model, n))

    def modules_run(self, diffusion_model) -> list[torch.nn.Module]:
        """The modules that a forward stopped after the last recorded block runs."""
        name = self._list(diffusion_model)
        return [m for n, m in diffusion_model.named_children() if n not in AFTER_JOINT_BLOCKS | {name}] + \
            self.recomputed_layers(diffusion_model)

    def recomputed_layers(self, diffusion_model) -> list[torch.nn.Module]:
        """The joint blocks the pass runs: the lean pass runs each again in its backward."""
        return list(getattr(diffusion_model, self._list(diffusion_model)))[:self.blocks[-1].number + 1]

    def install(self, model_options: dict) -> dict:
        """A copy of model_options whose recorded blocks record, wrapping any `dit` replacement already there."""
        return hook_blocks(model_options, self.blocks, self._record, stop_after_last=True)


class JointLayerRecorder(JointSum):
    """Single-stream layers over [text, image] (Z-Image's NextDiT): the first `count` of them, through
    an attention override on the pass's options. The refiners before them attend over the text alone
    or the image alone; the main layers' calls are the ones as long as both, each padded to the
    model's multiple."""

    in_place_model = False

    def __init__(self, diffusion_model, layer_list: str, recorded_count, text_length: int):
        self.diffusion_model = diffusion_model
        self.layer_list = layer_list
        self.blocks = list(range(recorded_count(len(getattr(diffusion_model, layer_list)))))
        self.patch_size = diffusion_model.patch_size
        self.text_length = text_length
        self.text_columns = self.joint_length = self.calls = 0

    def _start(self, latent_shape: tuple):
        """The layers' joint sequence for this latent, kept after the pass: the lean pass's reruns in the
        backward are found by its length too."""
        super()._start(latent_shape)
        self.text_columns, self.joint_length = single_stream_lengths(self.diffusion_model, self.text_length,
                                                                     latent_shape)
        self.calls = 0

    def modules_run(self, diffusion_model) -> list[torch.nn.Module]:
        """The whole model (its pad tokens are its own parameters); the forward stops in the last recorded layer."""
        return [diffusion_model]

    def recomputed_layers(self, diffusion_model) -> list[torch.nn.Module]:
        """The refiners and the main layers before the last recorded one: the lean pass runs each again
        in its backward."""
        refiners = [layer for name, child in diffusion_model.named_children()
                    if isinstance(child, torch.nn.ModuleList) and name != self.layer_list for layer in child]
        return refiners + list(getattr(diffusion_model, self.layer_list))[:self.blocks[-1]]

    def install(self, model_options: dict) -> dict:
        """A copy of model_options with the recording attention override (wrapping one already there)."""
        return hook_layers(model_options, lambda _, length: length == self.joint_length, self._record_layer)

    def _record_layer(self, func, call: tuple, kwargs: dict, proceed, _length: int):
        """A main layer's call; the pass stops in the last recorded layer, after its maps."""
        recording, layer = self.open, self.calls
        out = self._record(func, call, kwargs, proceed, self.text_columns, layer)
        if recording:
            self.calls += 1
            if layer == self.blocks[-1]:
                raise ForwardDone
        return out
