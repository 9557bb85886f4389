"""The demo models: small text-to-image models trained by tests/harness/train_demo.py on pictures of
shapes captioned with their kinds (shapes.py), each an SD1 CLIP text model with ComfyUI's bundled
tokenizer and a KL autoencoder around a diffusion model: a UNet from ComfyUI's SD15 config
(cross-attention), or, the joint-attention demo, ComfyUI's own Flux class at a tiny width (image and
text tokens in one softmax, as SD3, Flux, Qwen-Image and Z-Image attend)."""
import dataclasses
import json
import os
import re

import torch

import comfy.latent_formats
import comfy.ldm.flux.model
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attend_excite_shapes.safetensors")

UNET = dict(image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1, 1],
            channel_mult=[1, 2, 2], transformer_depth=[1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1],
            transformer_depth_middle=1, context_dim=64, use_spatial_transformer=True, legacy=False,
            use_linear_in_transformer=True, adm_in_channels=None, use_temporal_attention=False,
            use_temporal_resblock=False, use_checkpoint=False)
TEXT = dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=3,
            max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", layer_norm_eps=1e-5,
            eos_token_id=49407, bos_token_id=49406, pad_token_id=49407, projection_dim=64)
VAE = dict(double_z=True, z_channels=4, resolution=128, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2, 2],
           num_res_blocks=1, attn_resolutions=[], dropout=0.0)

# The joint-attention demo: Flux's double- and single-stream blocks at width 128 on the autoencoder's
# 16 x 16 latent in 2 x 2 patches (64 image tokens beside CLIP's 77: 8 x 8 maps, a cell 16 pixels; one
# token a latent cell costs a step 2.5 times as much on a CPU); no guidance embedding; the pooled caption
# vector as Flux's `y`.
JOINT = dict(image_model="flux", in_channels=4, out_channels=4, vec_in_dim=64, context_in_dim=64, hidden_size=128,
             mlp_ratio=4.0, num_heads=4, depth=4, depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000,
             qkv_bias=True, guidance_embed=False, patch_size=2)
JOINT_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attend_excite_shapes_joint.safetensors")
ARCHITECTURES = ("unet", "joint")

UNET_PREFIX, TEXT_PREFIX, VAE_PREFIX = "model.diffusion_model.", "cond_stage_model.", "first_stage_model."
# The text model's token table is shipped as the rows the vocabulary uses: the others are zero.
TOKEN_TABLE = "clip_l.transformer.text_model.embeddings.token_embedding.weight"
TOKEN_ROWS = "token_rows"


class AttendExciteShapesDemo(comfy.supported_models.SD15):
    """The demo model's config: SD1.x in every respect but the heads (32 channels each, not
    8 per block) and v-prediction (as SD2.x's 768 px models: with epsilon prediction a model
    this small barely reads its caption); its own name tells the sampler to record the maps
    at the latent's own size."""
    unet_extra_config = {"num_heads": -1, "num_head_channels": 32}

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.V_PREDICTION


class AttendExciteJointShapesDemo(comfy.supported_models.Flux):
    """The joint-attention demo's config: ComfyUI's Flux (flow matching, its model sampling) on the
    SD1 autoencoder's 4-channel latent; its own name tells the sampler its family."""
    latent_format = comfy.latent_formats.SD15


def build_unet(dtype=torch.float32, unet=UNET):
    config = AttendExciteShapesDemo(dict(unet))
    config.set_inference_dtype(dtype, None)
    return config.get_model({})


NORM_WEIGHT = r"_norm\.weight$"
# Flux parameters that newer ComfyUI requires and 0.3.75 lacks, at the values that give Flux.1's model (the
# one the joint demo was trained as): no text-position axis counts the text tokens.
FLUX1_NEWER_PARAMS = {"txt_ids_dims": []}


def build_joint(dtype=torch.float32, joint=JOINT):
    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    config = AttendExciteJointShapesDemo({**{k: v for k, v in FLUX1_NEWER_PARAMS.items() if k in fields}, **joint})
    config.set_inference_dtype(dtype, None)
    return config.get_model({})


def build_clip(dtype=torch.float32) -> comfy.sd.CLIP:
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    target.params = {"textmodel_json_config": dict(TEXT), "clip_model": comfy.sd1_clip.SDClipModel}
    return comfy.sd.CLIP(target, model_options={"dtype": dtype})


def vae_model(vae=VAE):
    from comfy.ldm.models.autoencoder import AutoencoderKL
    return AutoencoderKL(ddconfig=dict(vae), embed_dim=vae["z_channels"])


def pack(unet: torch.nn.Module, clip_model: torch.nn.Module, vae: torch.nn.Module, used_tokens: list[int],
         dtype=torch.float16) -> dict:
    """The shipped state dict: all three models in `dtype`, the token table as its used rows; Flux's RMSNorm
    scales under the names of the Flux checkpoints ComfyUI reads on every version (newer ComfyUI names them
    "weight" in the model and renames them on loading)."""
    state = {UNET_PREFIX + re.sub(NORM_WEIGHT, "_norm.scale", k): v for k, v in unet.state_dict().items()}
    state.update({TEXT_PREFIX + k: v for k, v in clip_model.state_dict().items()})
    state.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    rows = torch.tensor(sorted(used_tokens))
    state[TEXT_PREFIX + TOKEN_TABLE] = state[TEXT_PREFIX + TOKEN_TABLE][rows]
    state[TOKEN_ROWS] = rows
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def unpack(state: dict, prefix: str) -> dict:
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if prefix == TEXT_PREFIX:
        rows = part[TOKEN_TABLE]
        part[TOKEN_TABLE] = torch.zeros(TEXT["vocab_size"], rows.shape[1], dtype=rows.dtype)
        part[TOKEN_TABLE][state[TOKEN_ROWS]] = rows
    return part


def vocabulary(path: str = WEIGHTS) -> tuple:
    """The kind words the weights were trained on (their training settings), the shipped vocabulary by default."""
    from safetensors import safe_open
    from .shapes import SHAPES
    with safe_open(path, "pt") as f:
        settings = json.loads((f.metadata() or {}).get("settings", "{}"))
    return tuple(settings["kinds"].split(",")) if "kinds" in settings else SHAPES


def load(path: str = WEIGHTS):
    """(MODEL, CLIP, VAE) as ComfyUI's checkpoint loader returns them; the file's metadata says which
    architecture it holds."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the demo model's weights are missing ({path}, a few MB): update or reinstall "
                                f"the pack (ComfyUI-Manager: Try update or Try fix; a git clone: git pull), "
                                f"which puts the file back in that folder")
    state, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    metadata = metadata or {}
    vae_config = json.loads(metadata.get("vae", "null")) or VAE
    load_device = comfy.model_management.get_torch_device()
    unet_dtype = comfy.model_management.unet_dtype(model_params=0, supported_dtypes=[torch.float16, torch.float32])
    if metadata.get("architecture") == "joint":
        model = build_joint(unet_dtype, json.loads(metadata["joint"]))
    else:
        model = build_unet(unet_dtype, json.loads(metadata.get("unet", "null")) or UNET)
    # ComfyUI's own renames for the model's class (newer ComfyUI calls Flux's RMSNorm scales "weight")
    model.diffusion_model.load_state_dict(model.model_config.process_unet_state_dict(unpack(state, UNET_PREFIX)))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                               offload_device=comfy.model_management.unet_offload_device())
    clip = build_clip()
    missing, unexpected = clip.load_sd(unpack(state, TEXT_PREFIX), full_model=True)
    if missing or unexpected:
        raise ValueError(f"{path} does not hold the demo model's text model (missing {missing}, "
                         f"unexpected {unexpected})")
    vae = comfy.sd.VAE(sd=unpack(state, VAE_PREFIX), config={"params": {"ddconfig": dict(vae_config),
                                                                           "embed_dim": vae_config["z_channels"]}})
    return patcher, clip, vae
