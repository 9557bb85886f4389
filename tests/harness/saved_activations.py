"""Where the guidance pass's memory goes: the activations autograd saves for its backward,
per UNet block, for the full-width SDXL (or SD1.5) UNet, counted on PyTorch's meta device
(shapes only: no weights, no compute, seconds on a CPU).

    bash tests/harness/comfy_env.sh python tests/harness/saved_activations.py [--shape sdxl|sd15] [--size 1024]

Attention runs as the fused kernel a GPU uses in fp16 (flash attention: it saves q, k, v,
the output and a log-sum-exp, not the attention matrix); the recorded cross-attention
layers compute their softmax explicitly, as the package does. Parameters are not counted
(they are resident anyway). A tensor saved by several operations counts once.
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import support  # noqa: E402

support.import_comfy(cpu=True)
support.import_package()
import comfy.supported_models  # noqa: E402
from attend_and_excite.nodes.glue.family import FAMILIES  # noqa: E402
from attend_and_excite.nodes.glue.recorder import AttentionRecorder, ForwardDone, blocks_at_level  # noqa: E402

# The real widths (ComfyUI's detected configs): SDXL 320 channels, 64-channel heads; SD1.5 320 channels, 8 heads.
SHAPES = {"sdxl": ("SDXL", dict(support.SDXL_TOPOLOGY, model_channels=320, num_heads=-1, num_head_channels=64), 2816),
          "sd15": ("SD15", dict(support.SD15_TOPOLOGY, model_channels=320, context_dim=768), None)}


def flash_attention(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                    skip_output_reshape=False, **kwargs):
    if not skip_reshape:
        b, _, inner = q.shape
        q, k, v = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
    return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])


def block_labels(unet) -> list[tuple[str, torch.nn.Module]]:
    return [(f"input {i}", m) for i, m in enumerate(unet.input_blocks)] + [("middle", unet.middle_block)] + \
        [(f"output {i}", m) for i, m in enumerate(unet.output_blocks)]


def saved_bytes(shape: str, size: int, batch: int = 1) -> dict:
    family, unet_config, adm = SHAPES[shape]
    config = getattr(comfy.supported_models, family)(dict(unet_config, dtype=torch.float16))
    unet = config.get_model({}, device="meta").diffusion_model
    context_dim = unet_config["context_dim"]
    for p in unet.parameters():
        p.requires_grad_(False)
    recorder = AttentionRecorder(blocks_at_level(unet, FAMILIES[family].map_level))
    options = recorder.install({"transformer_options": {"optimized_attention_override": flash_attention}})
    current, per_block, seen = ["(before the blocks)"], collections.Counter(), {}
    for label, block in block_labels(unet):
        for layer in block.children():    # ComfyUI calls a block's layers one by one, not the block
            layer.register_forward_pre_hook(lambda _m, _a, label=label: current.__setitem__(0, label))

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if not isinstance(base, torch.nn.Parameter) and id(base) not in seen:
            seen[id(base)] = base
            per_block[current[0]] += base.numel() * base.element_size()
        return tensor

    latent = size // 8
    x = torch.zeros(batch, 4, latent, latent, device="meta", dtype=torch.float16, requires_grad=True)
    extra = {"y": torch.zeros(batch, adm, device="meta", dtype=torch.float16)} if adm else {}
    context = torch.zeros(batch, 77, context_dim, device="meta", dtype=torch.float16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        try:
            unet(x, torch.zeros(batch, device="meta"), context=context, transformer_options=options["transformer_options"],
                 **extra)
        except ForwardDone:
            pass
    return {"shape": shape, "size": size, "batch": batch, "map_level": FAMILIES[family].map_level,
            "recorded": sorted({f"{b[0]} {b[1]}" for b, _, _ in recorder.recorded}),
            "total_gib": sum(per_block.values()) / 2 ** 30,
            "per_block_mib": {label: round(n / 2 ** 20, 1) for label, n in per_block.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="sdxl")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (SDXL 1024, SD1.5 512)")
    args = parser.parse_args()
    size = args.size or (1024 if args.shape == "sdxl" else 512)
    print(json.dumps(saved_bytes(args.shape, size), indent=1))


if __name__ == "__main__":
    main()
