"""A random-weight "mini SD1.5" checkpoint that ComfyUI's own loader detects as SD15.

Full-size CLIP-L text encoder and VAE (their shapes are fixed by detection), and a
small UNet with the SD1.5 width (320), context (768) and three levels, so that the
latent/4 level has cross-attention. About 600 MB in fp16, made in seconds. Its
images are noise: it shows that the pipeline runs, nothing more. Never commit one.
Usage: python tests/harness/checkpoint.py OUT.safetensors (inside the harness env).
"""
import sys

import torch

MINI_SD15_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True,
                      legacy=False, adm_in_channels=None, in_channels=4, model_channels=320,
                      num_res_blocks=[1, 1, 1], transformer_depth=[1, 1, 1], channel_mult=[1, 1, 1],
                      transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=768, num_heads=8,
                      transformer_depth_output=[1, 1, 1, 1, 1, 1], use_temporal_attention=False,
                      use_temporal_resblock=False)
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _initialise(module: torch.nn.Module, seed: int):
    """comfy.ops layers skip initialisation; run torch's own on each of them."""
    torch.manual_seed(seed)
    bases = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding)
    for layer in module.modules():
        for base in bases:
            if isinstance(layer, base):
                base.reset_parameters(layer)
                break


def make_mini_sd15(path: str, seed: int = 0):
    import comfy.ldm.models.autoencoder
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.utils

    unet = comfy.supported_models.SD15(dict(MINI_SD15_UNET, dtype=torch.float32)).get_model({}).diffusion_model
    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
    state = {}
    for prefix, module in (("model.diffusion_model.", unet), ("cond_stage_model.", clip.clip_l), ("first_stage_model.", vae)):
        _initialise(module, seed)
        state.update({prefix + k: v.half() for k, v in module.state_dict().items() if v.is_floating_point()})
    comfy.utils.save_torch_file(state, path)


if __name__ == "__main__":
    sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
    from support import import_comfy
    import_comfy()
    make_mini_sd15(sys.argv[1])
    print(sys.argv[1])
