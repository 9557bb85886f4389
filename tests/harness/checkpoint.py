"""Random-weight "mini" checkpoints that ComfyUI's own loader detects as SD15, SDXL or SD3.

Full-size text encoders and VAE (detection and the text encoders' configs fix their
shapes) and a small UNet with the family's width, context and transformer depths, so
that the loader's detection sees the real family and the latent/4 level has
cross-attention; for SD3 a two-block MMDiT (its width follows from its depth) with CLIP-L
alone, which SD3's loader accepts (its context is CLIP-L padded to 4096). Written in the
checkpoint layout by ComfyUI's own saving conversions (about 0.6 GB for SD15, 2.4 GB for
SDXL, 0.4 GB for SD3, fp16; made in seconds). Their images are noise: they show that the
pipeline runs, nothing more. Never commit one.
Usage: python tests/harness/checkpoint.py sd15|sdxl|sd3 OUT.safetensors (inside the harness env).
"""
import os
import sys

import torch

SD_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
               in_channels=4, model_channels=320, use_temporal_attention=False, use_temporal_resblock=False)
MINI = {  # family -> (ComfyUI config class, UNet config, text encoder class, its arguments, latent channels)
    "sd15": ("SD15", dict(SD_UNET, num_res_blocks=[1, 1, 1], transformer_depth=[1, 1, 1], channel_mult=[1, 1, 1],
                          transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 1, 1], context_dim=768,
                          adm_in_channels=None, use_linear_in_transformer=False), "comfy.sd1_clip.SD1ClipModel", {}, 4),
    # SDXL's detection keys (width 320, depths 0,0,2,2,10,10, context 2048, adm 2816) on one channel width
    "sdxl": ("SDXL", dict(SD_UNET, num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10],
                          channel_mult=[1, 1, 1], transformer_depth_middle=10,
                          transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048,
                          adm_in_channels=2816, num_classes="sequential", use_linear_in_transformer=True),
             "comfy.sdxl_clip.SDXLClipModel", {}, 4),
    "sd3": ("SD3", dict(in_channels=16, out_channels=16, patch_size=2, depth=2, adm_in_channels=2048,
                        pos_embed_max_size=32, num_patches=1024,
                        context_embedder_config={"target": "torch.nn.Linear",
                                                 "params": {"in_features": 4096, "out_features": 128}}),
            "comfy.text_encoders.sd3_clip.SD3ClipModel", {"clip_g": False, "t5": False}, 16),
}
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


def make_mini(family: str, path: str, seed: int = 0):
    import importlib

    import comfy.ldm.models.autoencoder
    import comfy.supported_models
    import comfy.utils

    config_name, unet_config, text_encoder, text_options, latent_channels = MINI[family]
    model = getattr(comfy.supported_models, config_name)(dict(unet_config, dtype=torch.float32)).get_model({})
    module, name = text_encoder.rsplit(".", 1)
    clip = getattr(importlib.import_module(module), name)(device="cpu", dtype=torch.float32, **text_options)
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD_VAE, z_channels=latent_channels),
                                                     embed_dim=latent_channels)
    for part in (model.diffusion_model, clip, vae):
        _initialise(part, seed)
    # the config's own conversions (BaseModel.state_dict_for_saving changed its signature across releases)
    config = model.model_config
    state = config.process_unet_state_dict_for_saving(model.diffusion_model.state_dict())
    state.update(config.process_clip_state_dict_for_saving(clip.state_dict()))
    state.update(config.process_vae_state_dict_for_saving(vae.state_dict()))
    comfy.utils.save_torch_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from support import import_comfy
    import_comfy()
    make_mini(sys.argv[1], sys.argv[2])
    print(sys.argv[2])
