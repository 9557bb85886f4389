"""Where the guidance pass's memory goes, in each guidance_memory mode: the activations it keeps
for its backward, the most the backward holds at once, and the pass's arithmetic, for each
family's full-width model (SD1.5, SDXL, SD3.5 large, Flux.1-dev, Z-Image, Qwen-Image, Flux.2 dev and Klein,
Chroma), counted on PyTorch's meta device (shapes only: no weights, no compute; seconds to minutes on a CPU).

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
from attend_and_excite.nodes.core import families  # noqa: E402
from attend_and_excite.nodes.glue.family import recorder_for  # noqa: E402
from attend_and_excite.nodes.glue.recompute import recomputing  # noqa: E402
from attend_and_excite.nodes.glue.recorder import AttentionRecorder, ForwardDone, blocks_through  # noqa: E402

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
# Z-Image (6B) as ComfyUI detects it: 30 layers 3840 wide, Qwen3-4B's 2560-wide context.
ZIMAGE = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
              n_heads=30, n_kv_heads=30, multiple_of=256, ffn_dim_multiplier=8.0 / 3.0, norm_eps=1e-5, qk_norm=True,
              cap_feat_dim=2560, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
              z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)
# Qwen-Image (20B): 60 double-stream blocks 3072 wide, Qwen2.5-VL-7B's 3584-wide context.
QWEN_IMAGE = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=60,
                  attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56))


def flux2(hidden: int, depth: int, single: int, context: int, guidance: bool) -> dict:
    """Flux.2's layout (128-channel heads, 4-axis RoPE, 128 latent channels at patch size 1) at a size:
    dev 6144 wide (8 + 48 blocks, Mistral 3's 3 x 5120 context), Klein 4B 3072 (5 + 20, Qwen3-4B's
    3 x 2560), Klein 9B 4096 (8 + 24, Qwen3-8B's 3 x 4096)."""
    return support.for_this_comfyui(dict(
        image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=context,
        hidden_size=hidden, mlp_ratio=3.0, num_heads=hidden // 128, depth=depth, depth_single_blocks=single,
        axes_dim=[32, 32, 32, 32], theta=2000, patch_size=1, qkv_bias=False, guidance_embed=guidance,
        global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index", ref_index_scale=10.0))


# Chroma (8.9B): Flux.1-schnell's blocks, a modulation approximator instead of the pooled vector.
CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=4096, hidden_size=3072,
              mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000,
              patch_size=2, qkv_bias=True, in_dim=64, out_dim=3072, hidden_dim=5120, n_layers=5)
SHAPES = {  # name -> (family, config class, config, dtype, default size, text tokens, context width, pooled width)
    "sd15": (families.SD1, "SD15", dict(support.SD15_TOPOLOGY, model_channels=320, context_dim=768), torch.float16,
             512, 77, 768, None),
    "sdxl": (families.SDXL, "SDXL", dict(support.SDXL_TOPOLOGY, model_channels=320, num_heads=-1,
                                         num_head_channels=64), torch.float16, 1024, 77, 2048, 2816),
    "sd35": (families.SD3, "SD3", SD35_LARGE, torch.float16, 1024, 154, 4096, 2048),
    "flux": (families.FLUX, "Flux", FLUX_DEV, torch.bfloat16, 1024, 256, 4096, 768),
    # LLM contexts: a 60-word prompt in its template (Flux.2's is padded to 512 by the model, Klein's
    # tokenizer pads to 512); Chroma's T5 as Flux's.
    "zimage": (families.ZIMAGE, "ZImage", ZIMAGE, torch.bfloat16, 1024, 96, 2560, None),
    "qwen_image": (families.QWEN_IMAGE, "QwenImage", QWEN_IMAGE, torch.bfloat16, 1328, 96, 3584, None),
    "flux2_dev": (families.FLUX2, "Flux2", flux2(6144, 8, 48, 15360, True), torch.bfloat16, 1024, 512, 15360, None),
    "flux2_klein_4b": (families.FLUX2, "Flux2", flux2(3072, 5, 20, 7680, False), torch.bfloat16, 1024, 512, 7680,
                       None),
    "flux2_klein_9b": (families.FLUX2, "Flux2", flux2(4096, 8, 24, 12288, False), torch.bfloat16, 1024, 512, 12288,
                       None),
    "chroma": (families.CHROMA, "Chroma", CHROMA, torch.bfloat16, 1024, 256, 4096, None),
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
        family, config_class, config, dtype, _, tokens, context_width, pooled = SHAPES[shape]
        self.shape, self.dtype = shape, dtype
        this_comfyui = support.for_this_comfyui(dict(config, dtype=dtype))
        model_config = getattr(comfy.supported_models, config_class)(this_comfyui)
        self.model = model_config.get_model({}, device="meta").diffusion_model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.recorder = recorder_for(self.model, family, None, tokens)
        self.options = self.recorder.install(
            {"transformer_options": {"optimized_attention_override": flash_attention}})
        latent = model_config.latent_format
        side = size // family.pixels_per_cell
        self.x_shape = (batch, latent.latent_channels, *([1] if family is families.QWEN_IMAGE else []), side, side)
        self.inputs = {"context": torch.zeros(batch, tokens, context_width, device="meta", dtype=dtype)}
        if pooled:
            self.inputs["y"] = torch.zeros(batch, pooled, device="meta", dtype=dtype)
        if config.get("guidance_embed") or family is families.CHROMA:
            self.inputs["guidance"] = torch.full((batch,), 3.5, device="meta")
        if family is families.ZIMAGE:
            self.inputs["num_tokens"] = tokens

    def layers(self, mode: str) -> list[torch.nn.Module]:
        if mode == "fast":
            return []
        if mode == "lean, whole blocks":
            return whole_blocks(self.model, self.recorder)
        return self.recorder.recomputed_layers(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The truncated forward; the recorded maps' sum (what the loss reads, as one number)."""
        with self.recorder.recording(x.shape):
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
    modes = [m for m in MODES if isinstance(build.recorder, AttentionRecorder) or m != "lean, whole blocks"]
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
            "latent_cells": build.x_shape[-2] * build.x_shape[-1],
            "parameters_b": round(sum(p.numel() for p in build.model.parameters()) / 1e9, 2), "modes": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="sdxl")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's own)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="every shape at its own size, batch 1 and 2, as JSON")
    args = parser.parse_args()
    if args.table:
        print(json.dumps([measure(s, SHAPES[s][4], b) for s in SHAPES for b in (1, 2)], indent=1))
        return
    print(json.dumps(measure(args.shape, args.size or SHAPES[args.shape][4], args.batch), indent=1))


if __name__ == "__main__":
    main()
