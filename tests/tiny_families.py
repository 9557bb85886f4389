"""Tiny random models of the families ComfyUI users run now (Z-Image, Qwen-Image, Flux.2 dev and
Klein, Chroma), each built by ComfyUI's own config class, with a tiny text encoder of the family's
real class behind its real tokenizer (made small through ComfyUI's `<name>_model_config` option).

What the tiny sizes keep of the real structure: Z-Image's time embedding (width 256 at least), the
Qwen and Mistral text models' 128-channel heads, Flux.2's text model reading three hidden layers
(10, 20, 30 for Mistral; 9, 18, 27 for Qwen3), Flux.2's 4-axis RoPE and 128 latent channels at
patch size 1, Chroma's approximator, Z-Image's learned pad tokens (a multiple of 32).

ComfyUI's state-dict detection fixes some full-size widths (Z-Image's 3840, Flux.2's 48 heads), so
these models are built from the config classes that detection picks, not from files.
"""
import base64
import functools
import importlib
import importlib.util
import json
import types

import torch

import support

# Text-model sizes (head size 128, as the real configs fix it).
QWEN3 = dict(hidden_size=256, intermediate_size=512, num_attention_heads=2, num_key_value_heads=1)
QWEN25 = dict(QWEN3)
MISTRAL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=2, num_key_value_heads=1,
               vocab_size=512)     # the tekken vocabulary below: 20 special tokens, 256 bytes, some words
T5 = dict(d_model=64, d_ff=128, d_kv=32, num_heads=2, num_layers=2)


def zimage_config(context: int) -> dict:
    return dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, n_layers=3, n_refiner_layers=1,
                n_heads=2, n_kv_heads=2, multiple_of=256, ffn_dim_multiplier=8.0 / 3.0, norm_eps=1e-5, qk_norm=True,
                cap_feat_dim=context, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
                z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)


def qwen_image_config(context: int) -> dict:
    return dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                attention_head_dim=32, num_attention_heads=2, joint_attention_dim=context, axes_dims_rope=(8, 12, 12))


def flux2_config(context: int, guidance: bool = True) -> dict:
    return support.for_this_comfyui(dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None,
                             context_in_dim=context, hidden_size=64, mlp_ratio=3.0, num_heads=2, depth=2,
                             depth_single_blocks=1, axes_dim=[8, 8, 8, 8], theta=2000, patch_size=1, qkv_bias=False,
                             guidance_embed=guidance, global_modulation=True, mlp_silu_act=True, ops_bias=False,
                             default_ref_method="index", ref_index_scale=10.0))


def chroma_config(context: int) -> dict:
    return dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=context, hidden_size=64,
                mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000,
                patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=64, n_layers=2)


def tekken_blob(words: tuple = ()) -> bytes:
    """A Mistral tekken vocabulary in its real format (ComfyUI does not ship Mistral's, which lives in the
    text-encoder file): special tokens with Mistral's ids for the ones the template uses, every byte, and
    the merges that make ' word' one piece for each of `words`."""
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]
    pieces = [bytes([b]) for b in range(256)]
    for word in words:
        encoded = (" " + word).encode()
        for end in range(2, len(encoded) + 1):
            if encoded[:end] not in pieces:
                pieces.append(encoded[:end])
    vocab = [{"rank": rank, "token_bytes": base64.b64encode(piece).decode()} for rank, piece in enumerate(pieces)]
    return json.dumps({"config": {"pattern": "", "default_vocab_size": len(specials) + len(pieces),
                                  "default_num_special_tokens": len(specials)},
                       "vocab": vocab,
                       "special_tokens": [{"rank": rank, "token_str": s, "is_control": True}
                                          for rank, s in enumerate(specials)]}).encode()


MISTRAL_WORDS = ("cat", "frog", "red", "blue", "and", "a", "hedgehog", "in", "snow", "turtle", "bowl")

# test id -> (ComfyUI config class, its config for a text width, tokenizer class, text-encoder factory and
# its arguments (as ComfyUI's loader calls it), the text model's name, its tiny config, the text width the
# diffusion model reads, conditioning extras)
FAMILIES = {
    "z-image": ("ZImage", zimage_config, "comfy.text_encoders.z_image.ZImageTokenizer",
                "comfy.text_encoders.z_image.te", {}, "qwen3_4b", dict(QWEN3, num_hidden_layers=3), 256, {}),
    "qwen-image": ("QwenImage", qwen_image_config, "comfy.text_encoders.qwen_image.QwenImageTokenizer",
                   "comfy.text_encoders.qwen_image.te", {}, "qwen25_7b", dict(QWEN25, num_hidden_layers=2), 256, {}),
    "flux.2": ("Flux2", flux2_config, "comfy.text_encoders.flux.Flux2Tokenizer", "comfy.text_encoders.flux.flux2_te",
               {}, "mistral3_24b", dict(MISTRAL, num_hidden_layers=31), 3 * 256, {"guidance": 4.0}),
    "flux.2 klein": ("Flux2", functools.partial(flux2_config, guidance=False),
                     "comfy.text_encoders.flux.KleinTokenizer", "comfy.text_encoders.flux.klein_te",
                     {"model_type": "qwen3_4b"}, "qwen3_4b", dict(QWEN3, num_hidden_layers=28), 3 * 256, {}),
    "chroma": ("Chroma", chroma_config, "comfy.text_encoders.pixart_t5.PixArtTokenizer",
               "comfy.text_encoders.pixart_t5.pixart_te", {}, "t5xxl", T5, 64, {}),
}


def _attribute(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name, None)


def missing(name: str) -> str | None:
    """Why the running ComfyUI cannot build this family's text encoder, or None."""
    _, _, tokenizer, factory, *_ = FAMILIES[name]
    if _attribute(tokenizer) is None or _attribute(factory) is None:
        return f"this ComfyUI has no {tokenizer.rsplit('.', 1)[1]} (Flux.2 Klein's Qwen3 encoder came after 0.3.75)"
    if name == "flux.2" and importlib.util.find_spec("comfy.text_encoders.bpe_tokenizer") is None:
        return ("this ComfyUI's Flux.2 Mistral tokenizer needs transformers' MistralConverter, which cannot "
                "build it offline with the transformers installed here (0.33.0 reads the tekken data itself)")
    return None


@functools.cache
def tiny_clip(name: str, seed: int = 0):
    """A comfy.sd.CLIP of the family's real tokenizer and text-model class, small."""
    import comfy.sd
    import comfy.supported_models_base
    _, _, tokenizer, factory, arguments, model_name, text_config, *_ = FAMILIES[name]
    target = comfy.supported_models_base.ClipTarget(_attribute(tokenizer), _attribute(factory)(**arguments))
    tokenizer_data = {"tekken_model": tekken_blob(MISTRAL_WORDS)} if name == "flux.2" else {}
    clip = comfy.sd.CLIP(target, tokenizer_data=tokenizer_data,
                         model_options={"dtype": torch.float32, f"{model_name}_model_config": dict(text_config)})
    language = clip.cond_stage_model
    for child in language.modules():      # Qwen2.5-VL's vision tower is not used by a text prompt: left as made
        if hasattr(child, "visual"):
            child.visual = None
    support.initialise(language, seed)
    return clip


@functools.cache
def tiny_model(name: str, seed: int = 3):
    """A ModelPatcher around the family's diffusion model, from its ComfyUI config class."""
    config_class, config, *_, width, _ = FAMILIES[name]
    with torch.inference_mode():
        model = support.tiny_model(seed=seed, config=config(width), family=config_class)
        generator = torch.Generator().manual_seed(seed)
        for key, scale in model.model.diffusion_model.named_parameters():    # Flux's RMSNorm scales ("scale",
            if key.endswith("norm.scale"):                                     # not "weight") start at 1 too
                scale.copy_(1.0 + 0.02 * torch.randn(scale.shape, generator=generator))
    return model


def family(name: str):
    """The family's tiny model, text encoder and the conditioning extras its sampling needs."""
    *_, width, extra = FAMILIES[name]
    return types.SimpleNamespace(name=name, model=tiny_model(name), clip=lambda: tiny_clip(name), extra=extra,
                                 width=width)
