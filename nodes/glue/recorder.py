"""Records cross-attention probabilities in the guidance pass.

Only the cross-attention blocks at the map level get a replace patch, and only on
the copied model options of the guidance pass: every other attention call, and
every normal sampling step, keeps ComfyUI's optimized backend.
"""
import contextlib
from dataclasses import dataclass

import torch

from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample
import comfy.model_patcher

from ..core.maps import attention_probabilities, merge_heads, split_heads


class ForwardDone(Exception):
    """Raised after the last recorded block: nothing later feeds the loss."""


@dataclass(frozen=True)
class Block:
    name: str          # "input" | "middle" | "output"
    number: int
    depth: int         # transformer blocks inside its SpatialTransformer
    level: int         # how many times the latent was halved before it


def cross_attention_blocks(diffusion_model) -> list[Block]:
    """Every UNet block with cross-attention, in execution order, with its level
    read from the structure (Downsample / Upsample modules), not from block numbers;
    none for a model that is not a UNet."""
    if not hasattr(diffusion_model, "input_blocks"):
        return []
    def transformer(module):
        return next((m for m in module.modules() if isinstance(m, SpatialTransformer)), None)

    blocks, level = [], 0
    for number, module in enumerate(diffusion_model.input_blocks):
        level += sum(isinstance(m, Downsample) for m in module.children())
        if (t := transformer(module)) is not None:
            blocks.append(Block("input", number, len(t.transformer_blocks), level))
    if diffusion_model.middle_block is not None and (t := transformer(diffusion_model.middle_block)) is not None:
        blocks.append(Block("middle", 0, len(t.transformer_blocks), level))
    for number, module in enumerate(diffusion_model.output_blocks):
        if (t := transformer(module)) is not None:
            blocks.append(Block("output", number, len(t.transformer_blocks), level))
        level -= sum(isinstance(m, Upsample) for m in module.children())
    return blocks


def blocks_through(diffusion_model, last: Block) -> list[tuple[tuple[str, int], torch.nn.Module]]:
    """The blocks that a forward stopped right after `last` runs, in order, each with its (name, number)."""
    ran = [(("input", n), m) for n, m in enumerate(diffusion_model.input_blocks)]
    if last.name == "input":
        return ran[:last.number + 1]
    if diffusion_model.middle_block is not None:
        ran.append((("middle", 0), diffusion_model.middle_block))
    if last.name == "middle":
        return ran
    return ran + [(("output", n), m) for n, m in enumerate(diffusion_model.output_blocks)][:last.number + 1]


def modules_through(diffusion_model, last: Block) -> list[torch.nn.Module]:
    """The modules that a forward stopped right after `last` runs; the later blocks and
    the output head are left out."""
    after = {"input_blocks", "middle_block", "output_blocks", "out", "id_predictor"}
    return [m for name, m in diffusion_model.named_children() if name not in after] + \
        [m for _, m in blocks_through(diffusion_model, last)]


def blocks_at_level(diffusion_model, level: int) -> list[Block]:
    blocks = cross_attention_blocks(diffusion_model)
    found = [b for b in blocks if b.level == level]
    if not found:
        levels = ", ".join(f"latent/{2 ** n}" for n in sorted({b.level for b in blocks}))
        raise ValueError(f"this model has no cross-attention at the latent/{2 ** level} level; set map_level to "
                         f"one of: {levels or 'none (the model has no cross-attention)'}")
    return found


class AttentionSum:
    """What a recorder keeps of a pass: the probabilities summed over heads and layers."""

    attention = "cross-attention"
    total: torch.Tensor = None    # (B, h * w, T)
    heads = 0                     # attention maps summed into total: heads x layers
    shape: tuple = None           # (h, w)
    open = False

    def _start(self, latent_shape: tuple):
        """A pass's empty sum, laid out for `latent_shape` (the joint recorders place the image tokens by it)."""
        self.total, self.heads, self.shape = None, 0, None

    @contextlib.contextmanager
    def recording(self, latent_shape: tuple):
        """Open for one pass's forward, up to the loss's read of the maps. The patches compute a recorded
        layer's probabilities whether open or not, and add them only while open: the lean pass's backward
        runs recorded layers again (as SD3's checkpointed blocks do), and each rerun must save the tensors
        its first run saved, in the same order, and add nothing to the maps."""
        self._start(latent_shape)
        self.open = True
        try:
            yield self
        finally:
            self.open = False

    def take_average(self) -> torch.Tensor:
        """(B, h, w, T) mean over every recorded head and layer; drops the running sum."""
        if self.total is None:
            raise RuntimeError(f"the guidance pass recorded no {self.attention} (is the positive "
                               f"conditioning active at this step?)")
        b, _, t = self.total.shape
        average = (self.total / self.heads).view(b, *self.shape, t)
        self.total = None
        return average


class AttentionRecorder(AttentionSum):
    """Sums softmax(q k^T / sqrt(d)) over heads and blocks, in fp32."""

    in_place_model = False     # ComfyUI's UNets change no activation that autograd saved

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self.last = (blocks[-1].name, blocks[-1].number, blocks[-1].depth - 1)

    def modules_run(self, diffusion_model) -> list[torch.nn.Module]:
        """The modules that a forward stopped after the last recorded block runs."""
        return modules_through(diffusion_model, self.blocks[-1])

    def recomputed_layers(self, diffusion_model) -> list[torch.nn.Module]:
        """What the lean pass runs again in its backward: each transformer layer of the recorded
        blocks, and every other layer of the blocks the pass runs (ResBlocks, the earlier blocks'
        transformers whole, down- and upsamplers); not the layer whose attention ends the pass."""
        recorded = {(b.name, b.number) for b in self.blocks}
        ran = blocks_through(diffusion_model, self.blocks[-1])
        layers = []
        for key, block in ran:
            for layer in block.children():
                if key in recorded and isinstance(layer, SpatialTransformer):
                    layers += list(layer.transformer_blocks)
                else:
                    layers.append(layer)
        ends = next(m for m in ran[-1][1].modules() if isinstance(m, SpatialTransformer))
        last = ends.transformer_blocks[self.last[2]]
        return layers[:layers.index(last)]

    def install(self, model_options: dict) -> dict:
        """A copy of model_options whose recorded blocks compute attention here,
        wrapping any attn2 replace patch that is already there (IPAdapter-style)."""
        model_options = {**model_options, "transformer_options": model_options.get("transformer_options", {})}
        existing = model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
        for block in self.blocks:
            for index in range(block.depth):
                key = (block.name, block.number, index)
                previous = existing.get(key, existing.get(key[:2]))
                model_options = comfy.model_patcher.set_model_options_patch_replace(
                    model_options, self._patch(previous, key == self.last), "attn2", *key)
        return model_options

    def _patch(self, previous, is_last):
        def record(q, k, v, extra_options):
            heads = extra_options["n_heads"]
            probs = attention_probabilities(q, k, heads)
            if self.open:
                summed = probs.sum(dim=1)
                self.total = summed if self.total is None else self.total + summed
                self.heads += heads
                self.shape = tuple(extra_options["activations_shape"][-2:])
            if is_last:
                raise ForwardDone
            if previous is not None:
                return previous(q, k, v, extra_options)
            return merge_heads(probs.to(v.dtype) @ split_heads(v, heads))
        return record
