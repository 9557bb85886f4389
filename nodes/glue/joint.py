"""Records joint attention in MMDiT models (SD3, Flux): the image queries' attention to the
text keys, in the guidance pass only.

Each recorded block gets a `dit` replace patch on the pass's copied options. It runs the
block (or a replacement already there) with an attention override that, for the block's
joint attention call, computes the probabilities explicitly (fp32, softmax over the whole
joint sequence, after Flux's RoPE: what the model attends with) and then lets the chosen
backend compute the attention itself. Every other call keeps ComfyUI's optimized backend.
"""
from dataclasses import dataclass

import torch

import comfy.model_patcher

from ..core.maps import joint_text_probabilities, split_heads
from .recorder import AttentionSum, ForwardDone

# Children of the diffusion model that run after the joint blocks (or are them).
BLOCK_LISTS = ("double_blocks", "joint_blocks")
AFTER_JOINT_BLOCKS = {"single_blocks", "final_layer"}


@dataclass(frozen=True)
class JointBlock:
    number: int

    @property
    def key(self) -> tuple:
        """Its `dit` patch key."""
        return "double_block", self.number


def joint_blocks(diffusion_model) -> list[JointBlock]:
    """Flux's double-stream blocks, or SD3's joint blocks: ComfyUI patches both as `double_block`."""
    blocks = next((getattr(diffusion_model, name) for name in BLOCK_LISTS if hasattr(diffusion_model, name)), None)
    if blocks is None:
        raise ValueError("this model has no joint attention blocks (Flux's double blocks, SD3's joint blocks)")
    return [JointBlock(n) for n in range(len(blocks))]


class JointAttentionRecorder(AttentionSum):
    """Sums the image queries' attention over the text keys, over heads and blocks, in fp32."""

    attention = "joint attention"
    in_place_model = True      # Flux's blocks add their updates to their inputs in place

    def __init__(self, blocks: list[JointBlock], patch_size: int):
        self.blocks = blocks
        self.patch_size = patch_size
        self.reset()

    def reset(self, latent_shape: tuple = ()):
        """Before each pass; the latent's shape lays the image tokens out on the patch grid."""
        self.total = None
        self.heads = 0
        self.shape = tuple(-(-side // self.patch_size) for side in latent_shape[-2:])
        self.recorded = []     # (block number, text tokens) of the last pass, for inspection
        self.open = bool(latent_shape)

    def modules_run(self, diffusion_model) -> list[torch.nn.Module]:
        """The modules that a forward stopped after the last recorded block runs."""
        name = next(n for n in BLOCK_LISTS if hasattr(diffusion_model, n))
        return [m for n, m in diffusion_model.named_children() if n not in AFTER_JOINT_BLOCKS | {name}] + \
            self.recomputed_layers(diffusion_model)

    def recomputed_layers(self, diffusion_model) -> list[torch.nn.Module]:
        """The joint blocks the pass runs: the lean pass runs each again in its backward."""
        blocks = next(getattr(diffusion_model, n) for n in BLOCK_LISTS if hasattr(diffusion_model, n))
        return list(blocks)[:self.blocks[-1].number + 1]

    def install(self, model_options: dict) -> dict:
        """A copy of model_options whose recorded blocks record, wrapping any `dit`
        replacement already there."""
        model_options = {**model_options, "transformer_options": model_options.get("transformer_options", {})}
        existing = model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        for block in self.blocks:
            model_options = comfy.model_patcher.set_model_options_patch_replace(
                model_options, self._patch(block, existing.get(block.key), block is self.blocks[-1]), "dit", *block.key)
        return model_options

    def _patch(self, block: JointBlock, previous, is_last: bool):
        def record(args, extra):
            text_length, image_length = args["txt"].shape[1], args["img"].shape[1]
            options = args["transformer_options"]
            outer = options.get("optimized_attention_override")

            def override(func, *call, **kwargs):
                self._add(call, kwargs, text_length, image_length, block)
                return outer(func, *call, **kwargs) if outer is not None else func(*call, **kwargs)
            inner = {**args, "transformer_options": {**options, "optimized_attention_override": override}}
            out = previous(inner, extra) if previous is not None else extra["original_block"](inner)
            if is_last:
                raise ForwardDone
            return out
        return record

    def _add(self, call: tuple, kwargs: dict, text_length: int, image_length: int, block: JointBlock):
        q, k = call[0], call[1]
        heads = call[3] if len(call) > 3 else kwargs["heads"]
        if not kwargs.get("skip_reshape", False):
            q, k = split_heads(q, heads), split_heads(k, heads)
        if q.shape[2] != text_length + image_length:
            return    # not the joint call (SD3.5 medium's image-only attention)
        grid = self.shape[0] * self.shape[1]     # later image tokens: Kontext's reference latents
        summed = joint_text_probabilities(q, k, text_length)[:, :, :grid].sum(dim=1)
        if not self.open:
            return
        self.total = summed if self.total is None else self.total + summed
        self.heads += heads
        self.recorded.append((block.number, text_length))
