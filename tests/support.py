"""Real ComfyUI in-process for the tests, and small random-weight models built from
ComfyUI's own classes (nothing is downloaded; nothing generated is committed)."""
import os
import sys
import tempfile

import torch
from hypothesis import HealthCheck, settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_NAME = "attend_and_excite"


def comfy_dir() -> str:
    path = os.environ.get("COMFYUI_DIR")
    if not path or not os.path.isfile(os.path.join(path, "comfy", "samplers.py")):
        raise RuntimeError("COMFYUI_DIR does not point at a ComfyUI tree; run the tests through "
                           "tests/harness/comfy_env.sh (see the README)")
    return path


def import_comfy(cpu: bool = True):
    """ComfyUI on sys.path (on the CPU unless told); `utils` and `server` before `nodes`, as main.py does."""
    path = comfy_dir()
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args
    args.cpu = cpu
    import utils.extra_config  # noqa: F401  (must precede `nodes`, which shadows `utils`)
    import comfy.model_management  # noqa: F401
    import nodes  # noqa: F401


def import_package():
    """This repository imported as a package, the way ComfyUI loads a custom node folder
    (its `nodes` subpackage must not shadow ComfyUI's top-level `nodes` module)."""
    if PACKAGE_NAME not in sys.modules:
        parent = tempfile.mkdtemp(prefix="ae-pkg-")
        os.symlink(REPO, os.path.join(parent, PACKAGE_NAME))
        sys.path.append(parent)
    return __import__(PACKAGE_NAME)


def initialise(module: torch.nn.Module, seed: int, noise: float = 0.02):
    """comfy.ops layers start uninitialised: give every weight a seeded value, with no
    exact zeros (zero-initialised projections would hide whole paths from a test); float
    buffers too (MMDiT's positional table is one, left as torch.empty made it)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.buffers():
            if tensor.dtype.is_floating_point and tensor.numel():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * noise)
        for name, tensor in module.named_parameters():
            if tensor.dtype.is_floating_point and tensor.numel():
                fresh = torch.randn(tensor.shape, generator=generator) * noise
                if name.endswith("weight") and tensor.dim() >= 2:
                    fan_in = tensor[0].numel()
                    fresh = torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5
                elif "norm" in name and name.endswith("weight"):
                    fresh = 1.0 + fresh
                tensor.copy_(fresh)


TINY_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=32,
                 num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 2],
                 transformer_depth=[1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1],
                 transformer_depth_middle=1, context_dim=64, use_spatial_transformer=True, legacy=False,
                 use_linear_in_transformer=False, adm_in_channels=None, use_temporal_attention=False,
                 use_temporal_resblock=False, use_checkpoint=False, num_head_channels=-1, num_heads=8,
                 dtype=torch.float32)


# The fields newer ComfyUI's Flux-style params require (0.33.0: txt_ids_dims, Chroma's vec_in_dim), with
# the values its detection gives each model.
NEWER_PARAMS = {"flux": {"txt_ids_dims": []}, "flux2": {"txt_ids_dims": [3]},
                "chroma": {"txt_ids_dims": [], "vec_in_dim": None}}


def for_this_comfyui(config: dict) -> dict:
    """A Flux, Flux.2 or Chroma config with the fields the running ComfyUI's params require; others as they are."""
    extra = NEWER_PARAMS.get(config.get("image_model"))
    if extra is None:
        return dict(config)
    import dataclasses
    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    params = comfy.ldm.chroma.model.ChromaParams if config["image_model"] == "chroma" else \
        comfy.ldm.flux.model.FluxParams
    fields = {f.name for f in dataclasses.fields(params)}
    return {**{k: v for k, v in extra.items() if k in fields}, **config}


def tiny_model(seed: int = 0, config: dict = TINY_UNET, family: str = "SD15", model_type=None):
    """A ModelPatcher around a small random UNet (or MMDiT) made by ComfyUI's config class `family`
    (comfy.supported_models: SD15, SD20, SDXL, SD3, Flux, ...); model_type overrides its default."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    model_config = getattr(comfy.supported_models, family)(for_this_comfyui(config))
    model = model_config.get_model({}) if model_type is None else \
        comfy.model_base.BaseModel(model_config, model_type=model_type)
    initialise(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                 max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 eos_token_id=49407, bos_token_id=0, pad_token_id=1, projection_dim=64)


def tiny_clip(seed: int = 0):
    """A comfy.sd.CLIP with ComfyUI's real SD1 tokenizer and a small random text model."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    target.params = {"textmodel_json_config": dict(TINY_TEXT), "clip_model": comfy.sd1_clip.SDClipModel}
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    initialise(clip.cond_stage_model, seed)
    return clip


def random_conditioning(seed: int, context_dim: int = 64, tokens: int = 77, **extra):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, context_dim, generator=generator), dict(extra)]]


# What 'CLIP Text Encode (Attend-and-Excite)' attaches for "a cat and a frog" (SD1.x columns).
SUBJECTS = {"attend_excite": {"subjects": [[2], [5]], "labels": ["cat", "frog"], "end_columns": [6]}}


# As SUBJECTS for "a red cat and a green frog": red -> cat, green -> frog (the binding losses' pairs).
PAIRED_SUBJECTS = {"attend_excite": {"subjects": [[2], [6]], "labels": ["cat", "frog"], "modifiers": [[[1]], [[5]]],
                                     "modifier_labels": [["red"], ["green"]], "prompt_columns": [1, 2, 3, 4, 5, 6],
                                     "end_columns": [7]}}


def conditionings(context_dim: int = 64, **extra):
    """(positive with SUBJECTS, negative): random conditionings from seeds 1 and 2."""
    return random_conditioning(1, context_dim, **extra, **SUBJECTS), random_conditioning(2, context_dim, **extra)


def forced(**changes):
    """Settings for 6 sampled steps whose thresholds no random model reaches, so every
    threshold step refines max_refinement times."""
    from attend_and_excite.nodes.core.settings import Settings
    return Settings(**{"steps_to_alter": 3, "thresholds": {0: 1.0, 2: 1.0}, "max_refinement": 2,
                       "schedule_steps": 6, **changes})


QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tokens_of(tokenizer, text: str):
    """(tokens, end columns) of a prompt on ComfyUI's SD1 tokenizer, as the node lays them out."""
    from attend_and_excite.nodes.core.tokens import layout
    inner = tokenizer.clip_l
    return layout(tokenizer.tokenize_with_weights(text)["l"], inner.inv_vocab, inner.start_token, inner.end_token)


# The real SD1.5 topology (block layout of ComfyUI's model_detection SD15 config) at a small width.
SD15_TOPOLOGY = dict(TINY_UNET, model_channels=32, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                     transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                     transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])

# The real SD2.x topology (SD15's block layout; context 1024, linear projections, 64-channel
# heads, set by ComfyUI's SD20 config class) at a small width.
SD2_TOPOLOGY = dict(SD15_TOPOLOGY, model_channels=64, context_dim=1024, use_linear_in_transformer=True)

# The real SDXL topology (three levels; 2 and 10 transformer blocks deep; context 2048 of
# CLIP-L + CLIP-G; pooled and size conditioning through adm) at a small width.
SDXL_TOPOLOGY = dict(TINY_UNET, model_channels=64, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                     transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                     transformer_depth_middle=10, context_dim=2048, adm_in_channels=2816, num_classes="sequential",
                     use_linear_in_transformer=True)


def sample(model, sampler_name, settings, positive, negative, latent, steps=6, cfg=5.0, denoise=1.0, seed=7,
           stock=False):
    """(samples, AttentionRecord): the stock KSampler when `stock`, else the
    Attend-and-Excite SAMPLER over sampler_name, through ComfyUI's own sampling."""
    import comfy.sample
    import comfy.samplers
    import nodes
    from attend_and_excite.nodes.core.record import AttentionRecord
    from attend_and_excite.nodes.glue.sampler import attend_excite_sampler
    record = AttentionRecord()
    with torch.inference_mode():
        if stock:
            out = nodes.common_ksampler(model, seed, steps, cfg, sampler_name, "normal", positive, negative,
                                        {"samples": latent}, denoise=denoise)[0]["samples"]
        else:
            sigmas = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler_name,
                                             scheduler="normal", denoise=denoise).sigmas
            sampler = attend_excite_sampler(sampler_name, settings, record)
            out = comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, seed), cfg, sampler, sigmas,
                                             positive, negative, latent, seed=seed, disable_pbar=True)
    return out, record


def default_inputs(node=None) -> dict:
    """A node's inputs as a new node has them: by default the samplers' guidance inputs (the paper's
    settings), else the given node's, its model aside."""
    if node is None:
        from attend_and_excite.nodes.sampler import AttendExciteSampler
        node = AttendExciteSampler
    return {entry.id: entry.default for entry in node.define_schema().inputs
            if entry.id not in ("model", "sampler_name")}


class KeptGraphs:
    """The package's graph cache as the tests count it: 1 while it keeps a captured pass."""

    def __getattr__(self, name):
        from attend_and_excite.nodes.glue.capture import GRAPHS as cache
        return getattr(cache, name)

    def __len__(self) -> int:
        return int(self._kept is not None)


GRAPHS = KeptGraphs()


def listing(recorder):
    """The recorder, with `recorded`: each layer the last pass recorded, in order (cross-attention:
    (block, block_index, (h, w)); joint attention: (block or layer number, text tokens)). Before its install."""
    from attend_and_excite.nodes.glue.joint import JointSum
    recorder.recorded = []
    start = recorder._start

    def started(latent_shape):
        recorder.recorded = []
        start(latent_shape)
    recorder._start = started
    if isinstance(recorder, JointSum):
        record = recorder._record

        def recording_joint(func, call, kwargs, proceed, text_length, number):
            if recorder.open:
                recorder.recorded.append((number, text_length))
            return record(func, call, kwargs, proceed, text_length, number)
        recorder._record = recording_joint
        return recorder
    patch = recorder._patch

    def listed_patch(previous, is_last):
        record = patch(previous, is_last)

        def recording_cross(q, k, v, extra_options):
            if recorder.open:
                recorder.recorded.append((tuple(extra_options["block"]), extra_options["block_index"],
                                          tuple(extra_options["activations_shape"][-2:])))
            return record(q, k, v, extra_options)
        return recording_cross
    recorder._patch = listed_patch
    return recorder
