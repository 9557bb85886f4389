"""Cross-check of the maps the package records on Z-Image, Qwen-Image, Flux.2 and Chroma against diffusers'
own transformers (diffusers 0.42.1, in the test requirements), on one set of tiny random weights: made in
diffusers, converted key by key into ComfyUI's model of the same family. diffusers' attention calls are
watched (its `dispatch_attention_fn`); from the queries and keys it attends with, the image queries'
probabilities over the text keys (softmax over the whole joint sequence, in float64) are averaged over the
heads and the blocks the family records, in diffusers' own sequence layout. The package's maps come from its
recorder on ComfyUI's model. Prints each family's relative difference, and the difference with the text
columns shifted by one (which must be large: the check can fail).

    bash tests/harness/comfy_env.sh python tests/harness/crosscheck_families.py [z-image qwen-image flux.2 chroma]

tests/comfyui/test_crosscheck_families.py runs the same check.
"""
import contextlib
import importlib
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TEXT, SIGMA = 32, 0.7
LATENT = {"z-image": (1, 16, 12, 16), "qwen-image": (1, 16, 1, 12, 16), "flux.2": (1, 128, 6, 8),
          "chroma": (1, 16, 12, 16)}


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """diffusers zero-initialises some projections and starts norms at 1: give every weight a random value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def converted(state: dict, key_map: dict) -> dict:
    """A ComfyUI state dict from diffusers' through a ComfyUI key map (diffusers key -> ComfyUI key, or
    (ComfyUI key, (dim, start, length)) for a slice of a fused weight, or (ComfyUI key, None, function))."""
    out = {}
    for source, target in key_map.items():
        if source not in state:
            continue
        if isinstance(target, str):
            out[target] = state[source]
            continue
        if target[1] is None:            # a whole weight through a function (Flux's final modulation)
            out[target[0]] = target[2](state[source])
            continue
        name, (dim, start, length) = target[0], target[1]
        value = state[source]
        shape = list(value.shape)
        shape[dim] = max(shape[dim], start + length, out[name].shape[dim] if name in out else 0)
        whole = out.get(name)
        if whole is None or whole.shape[dim] < shape[dim]:
            grown = torch.zeros(shape, dtype=value.dtype)
            if whole is not None:
                grown.narrow(dim, 0, whole.shape[dim]).copy_(whole)
            whole = grown
        whole.narrow(dim, start, length).copy_(value)
        out[name] = whole
    return out


@contextlib.contextmanager
def watched_attention(module_name: str):
    """Every attention call of a diffusers transformer module: (query, key) as (B, S, H, D), and the mask."""
    module = importlib.import_module(f"diffusers.models.transformers.{module_name}")
    original, calls = module.dispatch_attention_fn, []

    def watch(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.detach().clone(), key.detach().clone(), attn_mask))
        return original(query, key, value, attn_mask=attn_mask, **kwargs)
    module.dispatch_attention_fn = watch
    try:
        yield calls
    finally:
        module.dispatch_attention_fn = original


def text_probabilities(calls: list, text: int, image: int, grid: tuple, image_first: int = 0) -> torch.Tensor:
    """(B, h, w, T): the mean over heads and calls of the image queries' softmax over every key, kept on
    the text keys, in float64, from diffusers' (B, S, H, D) queries and keys. image_first: the length of
    the image part (padding included) where the sequence is [image, text]; else it is [text, image]."""
    total, heads = 0, 0
    for query, key, _ in calls:
        q, k = query.double().transpose(1, 2), key.double().transpose(1, 2)
        probabilities = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
        rows, columns = (slice(0, image), slice(image_first, image_first + text)) if image_first else \
            (slice(text, text + image), slice(0, text))
        total = total + probabilities[:, :, rows, columns].sum(dim=1)
        heads += q.shape[1]
    return (total / heads).view(q.shape[0], *grid, text)


def package_maps(base_model, family, x: torch.Tensor, forward) -> torch.Tensor:
    """(B, h, w, T): the package's recorder on ComfyUI's model, as its guidance pass records."""
    from attend_and_excite.nodes.glue.family import recorder_for
    from attend_and_excite.nodes.glue.recorder import ForwardDone
    recorder = recorder_for(base_model.diffusion_model, family, None, TEXT)
    options = recorder.install({"transformer_options": {}})["transformer_options"]
    with torch.no_grad(), recorder.recording(x.shape):
        try:
            forward(options)
        except ForwardDone:
            pass
        return recorder.take_average().double()


def comfy_model(config_class: str, config: dict):
    import comfy.supported_models
    import support
    return getattr(comfy.supported_models, config_class)(support.for_this_comfyui(dict(config))).get_model({})


def loaded(model, state: dict, unused: tuple = ()):
    """ComfyUI's model with the converted weights; `unused`: its parameters that its forward never reads
    (diffusers has no counterpart). A norm's "scale" is its "weight" where this ComfyUI names it so (0.33.0)."""
    own = model.diffusion_model.state_dict()
    state = {(key.rsplit(".", 1)[0] + ".weight" if key.endswith(".scale") and key not in own else key): value
             for key, value in state.items()}
    missing, unexpected = model.diffusion_model.load_state_dict(state, strict=False)
    missing = [key for key in missing if key not in unused]
    if missing or unexpected:
        raise RuntimeError(f"the converted weights do not fit ComfyUI's {type(model).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
    return model


def qwen_image():
    from diffusers import QwenImageTransformer2DModel
    from attend_and_excite.nodes.core.families import QWEN_IMAGE
    torch.manual_seed(0)
    reference = perturbed(QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                                      attention_head_dim=32, num_attention_heads=2,
                                                      joint_attention_dim=48, axes_dims_rope=(8, 12, 12)), 1)
    config = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                  attention_head_dim=32, num_attention_heads=2, joint_attention_dim=48, axes_dims_rope=(8, 12, 12))
    model = loaded(comfy_model("QwenImage", config), reference.state_dict())     # ComfyUI's keys are diffusers'
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(LATENT["qwen-image"], generator=generator)
    context = torch.randn(1, TEXT, 48, generator=generator)
    b, c, _, h, w = x.shape
    packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    with watched_attention("transformer_qwenimage") as calls, torch.no_grad():
        reference(hidden_states=packed, encoder_hidden_states=context, timestep=torch.tensor([SIGMA]),
                  img_shapes=[[(1, h // 2, w // 2)]])
    theirs = text_probabilities(calls, TEXT, h * w // 4, (h // 2, w // 2))
    ours = package_maps(model, QWEN_IMAGE, x, lambda options: model.diffusion_model(
        x, torch.tensor([SIGMA]), context, transformer_options=options))
    return ours, theirs


def z_image():
    import comfy.utils
    from diffusers import ZImageTransformer2DModel
    from attend_and_excite.nodes.core.families import ZIMAGE
    # width 1024: both time embeddings are 1024 wide there (ComfyUI: min(width, 1024); diffusers: 1024)
    shared = dict(in_channels=16, dim=1024, n_layers=6, n_refiner_layers=1, n_heads=8, n_kv_heads=8, norm_eps=1e-5,
                  qk_norm=True, cap_feat_dim=48, rope_theta=256.0, axes_dims=[32, 48, 48], axes_lens=[1024, 512, 512])
    torch.manual_seed(0)
    reference = perturbed(ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), t_scale=1000.0,
                                                   **shared), 1)
    # multiple_of 2: both make 2730 FFN channels at this width (at the real 3840 both make 10240)
    config = dict(image_model="lumina2", patch_size=2, multiple_of=2, ffn_dim_multiplier=8.0 / 3.0,
                  z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32, **shared)
    model = loaded(comfy_model("ZImage", config),
                   converted(reference.state_dict(), comfy.utils.z_image_to_diffusers(config)), ("norm_final.weight",))
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(LATENT["z-image"], generator=generator)
    context = torch.randn(1, TEXT, 48, generator=generator)
    _, _, h, w = x.shape
    with watched_attention("transformer_z_image") as calls, torch.no_grad():
        # its timestep counts from the noise: 1 - sigma (ComfyUI's model turns sigma around itself)
        reference([x[0].unsqueeze(1)], torch.tensor([1 - SIGMA]), [context[0]])
    image = h * w // 4
    padded = image + (-image % 32)     # both pad the image to a multiple of 32 tokens
    joint = [call for call in calls if call[0].shape[1] == TEXT + padded][:ZIMAGE.recorded_count(6)]
    theirs = text_probabilities(joint, TEXT, image, (h // 2, w // 2), image_first=padded)    # its [image, text]
    ours = package_maps(model, ZIMAGE, x, lambda options: model.diffusion_model(
        x, torch.tensor([SIGMA]), context, TEXT, transformer_options=options))
    return ours, theirs


def packed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, their position ids) of a latent as diffusers' Flux-style pipelines pack it: 2 x 2 patches,
    row-major, each patch's channels then its rows and columns."""
    b, c, h, w = x.shape
    tokens = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return tokens, ids.reshape(-1, 3)


def chroma():
    import comfy.utils
    from diffusers import ChromaTransformer2DModel
    from attend_and_excite.nodes.core.families import CHROMA
    torch.manual_seed(0)
    reference = perturbed(ChromaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=48, axes_dims_rope=(8, 12, 12), approximator_num_channels=64, approximator_hidden_dim=64,
        approximator_layers=2), 1)
    config = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=48, hidden_size=64,
                  mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000,
                  patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=64, n_layers=2)
    key_map = comfy.utils.flux_to_diffusers(config)
    # Chroma's modulation approximator: ComfyUI's names for diffusers' layers
    for n in range(config["n_layers"]):
        for theirs, ours in (("linear_1", "in_layer"), ("linear_2", "out_layer")):
            for end in ("weight", "bias"):
                key_map[f"distilled_guidance_layer.layers.{n}.{theirs}.{end}"] = \
                    f"distilled_guidance_layer.layers.{n}.{ours}.{end}"
        key_map[f"distilled_guidance_layer.norms.{n}.weight"] = f"distilled_guidance_layer.norms.{n}.scale"
    for part in ("in_proj", "out_proj"):
        for end in ("weight", "bias"):
            key_map[f"distilled_guidance_layer.{part}.{end}"] = f"distilled_guidance_layer.{part}.{end}"
    model = loaded(comfy_model("Chroma", config), converted(reference.state_dict(), key_map))
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(LATENT["chroma"], generator=generator)
    context = torch.randn(1, TEXT, 48, generator=generator)
    tokens, image_ids = packed(x)
    with watched_attention("transformer_flux") as calls, torch.no_grad():     # Chroma runs Flux's processor
        reference(hidden_states=tokens, encoder_hidden_states=context, timestep=torch.tensor([SIGMA]),
                  img_ids=image_ids, txt_ids=torch.zeros(TEXT, 3))
    image = tokens.shape[1]
    joint = calls[:config["depth"]]            # the double-stream blocks come first
    theirs = text_probabilities(joint, TEXT, image, (x.shape[-2] // 2, x.shape[-1] // 2))
    ours = package_maps(model, CHROMA, x, lambda options: model.diffusion_model(
        x, torch.tensor([SIGMA]), context, torch.tensor([0.0]), transformer_options=options))
    return ours, theirs


def flux2():
    import comfy.utils
    from diffusers import Flux2Transformer2DModel
    import tiny_families
    from attend_and_excite.nodes.core.families import FLUX2
    torch.manual_seed(0)
    reference = perturbed(Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=2, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=48, axes_dims_rope=(8, 8, 8, 8), mlp_ratio=3.0, guidance_embeds=True), 1)
    config = tiny_families.flux2_config(48)
    key_map = comfy.utils.flux_to_diffusers(config)
    # Flux.2's own names (ComfyUI 0.33.0's map has them; 0.3.75's not yet)
    renames = {"ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2", "ff_context.linear_in": "txt_mlp.0",
               "ff_context.linear_out": "txt_mlp.2"}
    for n in range(config["depth"]):
        key_map.update({f"transformer_blocks.{n}.{theirs}.weight": f"double_blocks.{n}.{ours}.weight"
                        for theirs, ours in renames.items()})
    for n in range(config["depth_single_blocks"]):
        key_map.update({f"single_transformer_blocks.{n}.attn.{theirs}": f"single_blocks.{n}.{ours}"
                        for theirs, ours in (
            ("to_qkv_mlp_proj.weight", "linear1.weight"), ("to_out.weight", "linear2.weight"),
            ("norm_q.weight", "norm.query_norm.scale"), ("norm_k.weight", "norm.key_norm.scale"))})
    key_map.update({f"{theirs}.linear.weight": f"{theirs}.lin.weight" for theirs in (
        "double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation")})
    key_map.update({f"time_guidance_embed.{theirs}_embedder.linear_{n}.weight": f"{ours}_in.{layer}_layer.weight"
                    for theirs, ours in (("timestep", "time"), ("guidance", "guidance"))
                    for n, layer in ((1, "in"), (2, "out"))})
    model = loaded(comfy_model("Flux2", config), converted(reference.state_dict(), key_map))
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(LATENT["flux.2"], generator=generator)
    context = torch.randn(1, TEXT, 48, generator=generator)
    b, c, h, w = x.shape
    tokens = x.view(b, c, h * w).transpose(1, 2)                   # patch size 1: a token per latent cell
    image_ids = torch.zeros(h, w, 4)
    image_ids[..., 1] += torch.arange(h)[:, None]
    image_ids[..., 2] += torch.arange(w)[None, :]
    text_ids = torch.zeros(TEXT, 4)
    text_ids[:, 3] = torch.arange(TEXT)                              # Flux.2 numbers the text on its 4th axis
    with watched_attention("transformer_flux2") as calls, torch.no_grad():
        reference(hidden_states=tokens, encoder_hidden_states=context, timestep=torch.tensor([SIGMA]),
                  img_ids=image_ids.reshape(1, -1, 4), txt_ids=text_ids[None], guidance=torch.tensor([4.0]))
    theirs = text_probabilities(calls[:config["depth"]], TEXT, h * w, (h, w))
    ours = package_maps(model, FLUX2, x, lambda options: model.diffusion_model(
        x, torch.tensor([SIGMA]), context, guidance=torch.tensor([4.0]), transformer_options=options))
    return ours, theirs


CHECKS = {"z-image": z_image, "qwen-image": qwen_image, "flux.2": flux2, "chroma": chroma}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def compare(name: str) -> tuple[float, float]:
    """(relative difference, relative difference with the package's text columns shifted by one)."""
    ours, theirs = CHECKS[name]()
    return relative(ours, theirs), relative(ours.roll(1, dims=-1), theirs)


def main():
    import support
    support.import_comfy()
    support.import_package()
    for name in sys.argv[1:] or CHECKS:
        same, shifted = compare(name)
        print(f"{name}: relative difference {same:.2e}; text columns shifted by one: {shifted:.2e}")


if __name__ == "__main__":
    main()
