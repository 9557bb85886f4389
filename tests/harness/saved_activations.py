"""Where the guidance pass's memory goes, in each guidance_memory mode: the activations it keeps
for its backward, the most the backward holds at once, and the pass's arithmetic, for the
full-width SD1.5, SDXL, SD3.5 large and Flux.1-dev models, counted on PyTorch's meta device (shapes only: no
weights, no compute; seconds to a minute on a CPU).

    bash tests/harness/comfy_env.sh python tests/harness/saved_activations.py [--shape sdxl] [--size 1024]
        [--batch 1] [--table]

Attention runs as the fused kernel a GPU uses in fp16/bf16 (flash attention: it saves q, k, v,
the output and a log-sum-exp, not the attention matrix); the recorded layers compute their
softmax explicitly, as the package does. Parameters are not counted (they are resident anyway).
A tensor saved by several operations counts once.

- kept: what autograd keeps from the end of the forward to the backward; for lean, also the
  inputs that each recomputed layer keeps (copies, where the model changes them in place);
- peak: kept, plus the largest set of activations one recomputed layer rebuilds in the backward
  (fast: kept);
- FLOPs: forward, loss and backward of one pass, lean's rerun included (torch's flop counter:
  matrix products and attention), as a ratio to the fast pass.
"""
import argparse
import collections
import contextlib
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import support  # noqa: E402

support.import_comfy(cpu=True)
support.import_package()
import comfy.supported_models  # noqa: E402
from comfy.ldm.modules.attention import SpatialTransformer  # noqa: E402
from attend_and_excite.nodes.glue.family import FAMILIES  # noqa: E402
from attend_and_excite.nodes.glue.joint import JointAttentionRecorder, joint_blocks  # noqa: E402
from attend_and_excite.nodes.glue.recompute import recomputing  # noqa: E402
from attend_and_excite.nodes.glue.recorder import (AttentionRecorder, ForwardDone, blocks_at_level,  # noqa: E402
                                                   blocks_through)

# The real widths (ComfyUI's detected configs): SDXL 320 channels, 64-channel heads; SD1.5 320
# channels, 8 heads; Flux.1-dev 3072 wide, 19 double and 38 single blocks, T5 4096 wide (256 tokens,
# ComfyUI's least).
FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                theta=10000, qkv_bias=True, guidance_embed=True, patch_size=2)
# SD3.5 large as ComfyUI detects it: 38 joint blocks 2432 wide; its context is 77 CLIP and 77 T5 tokens.
SD35_LARGE = dict(in_channels=16, out_channels=16, patch_size=2, depth=38, adm_in_channels=2048, input_size=None,
                  pos_embed_max_size=192, num_patches=36864, qk_norm="rms", pos_embed_scaling_factor=None,
                  x_block_self_attn_layers=[], context_embedder_config={
                      "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 2432}})
SHAPES = {  # name -> (config class, config, dtype, default size, text tokens, context width, pooled width)
    "sd15": ("SD15", dict(support.SD15_TOPOLOGY, model_channels=320, context_dim=768), torch.float16, 512, 77, 768,
             None),
    "sdxl": ("SDXL", dict(support.SDXL_TOPOLOGY, model_channels=320, num_heads=-1, num_head_channels=64),
             torch.float16, 1024, 77, 2048, 2816),
    "sd35": ("SD3", SD35_LARGE, torch.float16, 1024, 154, 4096, 2048),
    "flux": ("Flux", FLUX_DEV, torch.bfloat16, 1024, 256, 4096, 768),
}
MODES = ("fast", "lean", "lean, whole blocks")     # the last: the alternative measured for UNets


def flash_attention(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                    skip_output_reshape=False, **kwargs):
    if not skip_reshape:
        b, _, inner = q.shape
        q, k, v = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
    return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])


def whole_blocks(unet, recorder: AttentionRecorder) -> list[torch.nn.Module]:
    """The alternative to the package's choice: every layer of the blocks run, the recorded
    blocks' transformers whole (all but the one that ends the pass)."""
    ran = blocks_through(unet, recorder.blocks[-1])
    layers = [layer for _, block in ran for layer in block.children()]
    last = next(m for m in ran[-1][1].children() if isinstance(m, SpatialTransformer))
    return layers[:layers.index(last)]


class Build:
    """A full-width model on the meta device, its recorder and its inputs."""

    def __init__(self, shape: str, size: int, batch: int):
        family, config, dtype, _, tokens, context_width, pooled = SHAPES[shape]
        self.shape, self.dtype = shape, dtype
        model_config = getattr(comfy.supported_models, family)(support.for_this_comfyui(dict(config, dtype=dtype)))
        self.model = model_config.get_model({}, device="meta").diffusion_model
        for p in self.model.parameters():
            p.requires_grad_(False)
        if family in ("Flux", "SD3"):
            self.recorder = JointAttentionRecorder(joint_blocks(self.model), self.model.patch_size)
        else:
            self.recorder = AttentionRecorder(blocks_at_level(self.model, FAMILIES[family].map_level))
        self.options = self.recorder.install(
            {"transformer_options": {"optimized_attention_override": flash_attention}})
        channels = config["in_channels"]
        self.x_shape = (batch, channels, size // 8, size // 8)
        self.inputs = {"context": torch.zeros(batch, tokens, context_width, device="meta", dtype=dtype)}
        if pooled:
            self.inputs["y"] = torch.zeros(batch, pooled, device="meta", dtype=dtype)
        if shape == "flux":
            self.inputs["guidance"] = torch.full((batch,), 3.5, device="meta")

    def layers(self, mode: str) -> list[torch.nn.Module]:
        if mode == "fast":
            return []
        if mode == "lean, whole blocks":
            return whole_blocks(self.model, self.recorder)
        return self.recorder.recomputed_layers(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The truncated forward; the recorded maps' sum (what the loss reads, as one number)."""
        self.recorder.reset(x.shape)
        try:
            self.model(x, torch.zeros(x.shape[0], device="meta"),
                       transformer_options=self.options["transformer_options"], **self.inputs)
        except ForwardDone:
            pass
        return self.recorder.take_average().sum()


def run_pass(build: Build, mode: str, labelled: list[torch.nn.Module], backward: bool = False) -> dict:
    """One pass in `mode`, as the package runs it (saved activations copied where the model changes
    them in place). Counts what autograd keeps, per layer of `labelled` ("outside": the rest), and
    the inputs that the recomputed layers keep; with backward, runs it too."""
    layers = build.layers(mode)
    copies = build.recorder.in_place_model
    seen, saved, inputs, region = set(), collections.Counter(), [0], ["outside"]

    def size(tensor, dedup=True) -> int:
        base = tensor._base if tensor._base is not None else tensor
        if isinstance(base, torch.nn.Parameter) or dedup and id(base) in seen:
            return 0
        seen.add(id(base))
        return base.numel() * base.element_size()

    def pack(tensor):
        saved[region[0]] += size(tensor, dedup=not copies)
        return tensor.clone() if copies and not isinstance(tensor, torch.nn.Parameter) else tensor

    def kept_inputs(_module, args, kwargs):     # what the rerun holds: tensor arguments, alone or in a list
        for argument in [*args, *kwargs.values()]:
            for t in argument if isinstance(argument, list) else [argument]:
                if isinstance(t, torch.Tensor):
                    inputs[0] += size(t, dedup=not copies)

    hooks = [layer.register_forward_pre_hook(kept_inputs, with_kwargs=True) for layer in layers]
    for index, layer in enumerate(labelled):
        hooks.append(layer.register_forward_pre_hook(lambda *_, i=index: region.__setitem__(0, i)))
        hooks.append(layer.register_forward_hook(lambda *_: region.__setitem__(0, "outside")))
    x = torch.zeros(build.x_shape, device="meta", dtype=build.dtype, requires_grad=True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), recomputing(layers, copies):
            loss = build.forward(x)
            if backward:
                loss.backward()   # (autograd.grad to a leaf trips the flop counter's module tracker)
    finally:
        for hook in hooks:
            hook.remove()
    return {"kept": sum(saved.values()) + inputs[0], "inputs": inputs[0],
            "largest_layer": max((n for r, n in saved.items() if r != "outside"), default=0)}


def measure(shape: str, size: int, batch: int) -> dict:
    build = Build(shape, size, batch)
    modes = [m for m in MODES if build.recorder.in_place_model is False or m != "lean, whole blocks"]
    gib, rows = 2 ** 30, {}
    for mode in modes:
        counted = run_pass(build, mode, [])
        # the most one recomputed layer rebuilds at once: what it saves in a fast pass
        rebuilt = 0 if mode == "fast" else run_pass(build, "fast", build.layers(mode))["largest_layer"]
        with FlopCounterMode(display=False) as counter:
            run_pass(build, mode, [], backward=True)
        rows[mode] = {"kept_gib": round(counted["kept"] / gib, 3),
                      "peak_gib": round((counted["kept"] + rebuilt) / gib, 3),
                      "layer_inputs_gib": round(counted["inputs"] / gib, 3),
                      "tflops": round(counter.get_total_flops() / 1e12, 3)}
    for row in rows.values():
        row["flops_x_fast"] = round(row["tflops"] / rows["fast"]["tflops"], 3)
    return {"shape": shape, "size": size, "batch": batch, "dtype": str(build.dtype).replace("torch.", ""),
            "modes": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="sdxl")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's own)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="every shape at its own size, batch 1 and 2, as JSON")
    args = parser.parse_args()
    if args.table:
        print(json.dumps([measure(s, SHAPES[s][3], b) for s in SHAPES for b in (1, 2)], indent=1))
        return
    print(json.dumps(measure(args.shape, args.size or SHAPES[args.shape][3], args.batch), indent=1))


if __name__ == "__main__":
    main()
