"""A test-only custom node (never shipped: the test server alone links it into its custom_nodes): the
tiny random model of a family (tests/tiny_families.py) as MODEL, CLIP and VAE, so that a family's
template runs on the live server and in the browser with its loaders swapped for this node. The VAE is
tiny too, with the family's latent layout; its pictures are noise."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))     # tests/

NODE = "AttendExciteTestTinyFamily"
# family -> (the tiny model's name in tiny_families, its VAE: "kl" with latent channels and halvings, or "wan")
VAES = {"z-image": ("kl", 16, 3), "qwen-image": ("wan", 16, 3), "flux.2": ("kl", 128, 4),
        "flux.2 klein": ("kl", 128, 4), "chroma": ("kl", 16, 3)}


def tiny_vae(kind: str, channels: int, halvings: int):
    import comfy.sd
    import support
    generator_seed = 11
    if kind == "wan":      # Qwen-Image's VAE: Wan 2.1's, 3-D latents; ComfyUI reads its width from the weights
        import comfy.ldm.wan.vae
        model = comfy.ldm.wan.vae.WanVAE(dim=32, z_dim=channels, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                         attn_scales=[], temperal_downsample=[False, True, True])
        support.initialise(model, generator_seed)
        return comfy.sd.VAE(sd=model.state_dict())
    from comfy.ldm.models.autoencoder import AutoencoderKL
    ddconfig = dict(double_z=True, z_channels=channels, resolution=256, in_channels=3, out_ch=3, ch=32,
                    ch_mult=[1] + [2] * halvings, num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    model = AutoencoderKL(ddconfig=ddconfig, embed_dim=channels)
    support.initialise(model, generator_seed)
    return comfy.sd.VAE(sd=model.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": channels}})


class TinyFamily:
    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    DESCRIPTION = "Test only: a tiny random model of the family (its pictures are noise)."

    @classmethod
    def INPUT_TYPES(cls):
        """family; type: the CLIPLoader type this node stands in for, which the token picker reads."""
        import tiny_families
        return {"required": {"family": ([n for n in tiny_families.FAMILIES if not tiny_families.missing(n)],),
                             "type": (["lumina2", "qwen_image", "flux2", "chroma"],)}}

    def load(self, family, type):
        import tiny_families
        with torch.inference_mode(False):
            clip = tiny_families.tiny_clip(family)
            vae = tiny_vae(*VAES[family])
        return tiny_families.tiny_model(family).clone(), clip, vae


NODE_CLASS_MAPPINGS = {NODE: TinyFamily}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "Tiny random model (tests only)"}
