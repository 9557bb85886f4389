"""SD2.x and SDXL next to SD1.x: detection from the loaded model, the map level's blocks,
token slicing with each family's real tokenizers, and the sampler's invariants on small
random-weight UNets of the real topologies (built by ComfyUI's own config classes)."""
import types

import pytest
import torch

import comfy.model_base
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.text_encoders.sd2_clip
import support
from attend_and_excite.nodes.core.maps import kept_columns
from attend_and_excite.nodes.glue.family import detect_family
from attend_and_excite.nodes.glue.guidance import GuidancePass, autograd_weights
from attend_and_excite.nodes.glue.recorder import AttentionRecorder, blocks_at_level, modules_through
from attend_and_excite.nodes.glue.text import subject_info

FORCED = support.forced()
V_PREDICTION = comfy.model_base.ModelType.V_PREDICTION
FAMILIES = {  # test id -> (config class, topology, model type, context width, pooled width)
    "SD2.x": ("SD20", support.SD2_TOPOLOGY, None, 1024, None),
    "SD2.x-v": ("SD20", support.SD2_TOPOLOGY, V_PREDICTION, 1024, None),
    "SDXL": ("SDXL", support.SDXL_TOPOLOGY, None, 2048, 1280),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    config_class, topology, model_type, context, pooled = FAMILIES[request.param]
    with torch.inference_mode():    # as ComfyUI's loader: the weights are inference tensors
        model = support.tiny_model(seed=1, config=topology, family=config_class, model_type=model_type)
    return types.SimpleNamespace(name=request.param, model=model, context=context, pooled=pooled)


def conds(family):
    pooled = torch.randn(1, family.pooled, generator=torch.Generator().manual_seed(3)) if family.pooled else None
    return support.conditionings(family.context, **({} if pooled is None else {"pooled_output": pooled}))


def run(family, sampler_name, settings=FORCED, **options):
    """(samples, guided-step logs, (B, S, h, w) maps of the first guided step)"""
    positive, negative = conds(family)
    out, record = support.sample(family.model, sampler_name, settings, positive, negative, torch.zeros(1, 4, 16, 16),
                                 **options)
    return out, record.logs, record.maps[0] if record.maps else None


def bare_config(name: str):
    """A model as detection sees it: ComfyUI's config class with its latent format."""
    # hidden_size: newer Flux.2 configs read it when they are made
    return types.SimpleNamespace(model_config=getattr(comfy.supported_models, name)({"in_channels": 4,
                                                                                    "hidden_size": 3072}))


@pytest.mark.parametrize("config, family", [
    ("SD15", "SD1.x"), ("SD15_instructpix2pix", "SD1.x"), ("SD20", "SD2.x"), ("SD21UnclipH", "SD2.x"),
    ("SDXL", "SDXL"), ("SSD1B", "SDXL"), ("Segmind_Vega", "SDXL"), ("KOALA_700M", "SDXL"),
    ("SDXL_instructpix2pix", "SDXL"), ("SD3", "SD3"), ("Flux", "Flux.1"), ("FluxSchnell", "Flux.1"),
    ("FluxInpaint", "Flux.1"), ("ZImage", "Z-Image"), ("QwenImage", "Qwen-Image"), ("Flux2", "Flux.2"),
    ("Chroma", "Chroma")])
def test_families_are_detected_from_the_config_class(config, family):
    assert detect_family(bare_config(config)).name == family


SUPPORTED = "SD1.x, SD2.x, SDXL, SD3, Flux.1, Z-Image, Qwen-Image, Flux.2, Chroma"


@pytest.mark.parametrize("config", ["Lumina2", "SDXLRefiner", "SD_X4Upscaler", "LotusD", "Stable_Zero123",
                                    "HunyuanVideo", "StableAudio"])
def test_other_models_are_refused_with_what_is_supported(config):
    with pytest.raises(ValueError, match=f"supports {SUPPORTED} models; this model is {config}"):
        detect_family(bare_config(config))


def test_a_refused_model_stops_sampling_before_any_step():
    refiner = dict(support.TINY_UNET, model_channels=64, context_dim=1280, adm_in_channels=2560,
                   num_classes="sequential", use_linear_in_transformer=True)
    model = support.tiny_model(config=refiner, family="SDXLRefiner")
    extra = {"pooled_output": torch.randn(1, 1280)}
    positive = support.random_conditioning(1, context_dim=1280, **extra, **support.SUBJECTS)
    negative = support.random_conditioning(2, context_dim=1280, **extra)
    with pytest.raises(ValueError, match=f"supports {SUPPORTED} models"):
        support.sample(model, "euler", FORCED, positive, negative, torch.zeros(1, 4, 8, 8))


def test_sdxl_level_blocks_are_ten_deep_and_include_the_middle():
    with torch.inference_mode():
        model = support.tiny_model(config=support.SDXL_TOPOLOGY, family="SDXL")
    unet = model.model.diffusion_model
    found = [(b.name, b.number, b.depth) for b in blocks_at_level(unet, 2)]
    assert found == [("input", 7, 10), ("input", 8, 10), ("middle", 0, 10), ("output", 0, 10), ("output", 1, 10),
                     ("output", 2, 10)]
    assert [(b.name, b.number, b.depth) for b in blocks_at_level(unet, 1)] == [
        ("input", 4, 2), ("input", 5, 2), ("output", 3, 2), ("output", 4, 2), ("output", 5, 2)]
    with pytest.raises(ValueError, match="no cross-attention at the latent/1 level; set map_level to one of: "
                                         "latent/2, latent/4"):
        blocks_at_level(unet, 0)


def expected_blocks(name: str) -> list:
    if name == "SDXL":
        return [(("input", 7), i) for i in range(10)] + [(("input", 8), i) for i in range(10)] + \
            [(("middle", 0), i) for i in range(10)] + [(("output", n), i) for n in range(3) for i in range(10)]
    return [(("input", 7), 0), (("input", 8), 0), (("output", 3), 0), (("output", 4), 0), (("output", 5), 0)]


def test_guidance_pass_reads_the_intended_blocks_and_has_a_gradient(family):
    base = family.model.model
    recorder = support.listing(AttentionRecorder(blocks_at_level(base.diffusion_model, detect_family(base).map_level)))
    positive, _ = conds(family)
    context, extra = positive[0]
    entry = {"model_conds": base.extra_conds(cross_attn=context, device=torch.device("cpu"), **extra),
             "uuid": "positive"}
    guidance = GuidancePass(base, entry, recorder, subjects=[[2], [5]], kept=detect_family(base).kept(77, [6]))
    base.current_patcher = family.model      # as sampling's preparation sets it
    x = torch.randn(1, 4, 24, 32) * 14.6      # a non-square latent: h and w must not swap
    with autograd_weights(modules_through(base.diffusion_model, recorder.blocks[-1])), \
            torch.inference_mode(False), torch.enable_grad():
        at = guidance.evaluate(x, torch.tensor([14.6]), family.model.model_options)
        loss, peaks, grad = at.loss, at.peaks, at.gradient()
    assert [(block, index) for block, index, _ in recorder.recorded] == expected_blocks(family.name)
    assert {shape for _, _, shape in recorder.recorded} == {(6, 8)}     # latent/4
    assert guidance.last_maps.shape == (1, 2, 6, 8)
    assert peaks.shape == (1, 2) and 0 < loss.item() <= 1
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_zero_scale_equals_the_stock_ksampler(family):
    """With a multistep sampler, whose history would carry any stray change."""
    off = support.forced(thresholds={0: 1.0}, max_refinement=1, scale_factor=0.0)
    ours, logs, _ = run(family, "dpmpp_2m", off)
    stock, _, _ = run(family, "dpmpp_2m", stock=True)
    assert logs, "the guidance pass did not run"
    assert torch.equal(ours, stock)


def test_guided_steps_move_the_sampler_state_and_leave_the_model_as_it_was(family):
    before = {k: v.clone() for k, v in family.model.model.state_dict().items()}
    options = repr(family.model.model_options)
    ours, logs, _ = run(family, "dpmpp_2m")
    stock, _, _ = run(family, "dpmpp_2m", stock=True)
    assert torch.isfinite(ours).all() and not torch.allclose(ours, stock)
    assert [log.step for log in logs] == [0, 1, 2]
    assert [log.refinement_iterations for log in logs] == [[2], [0], [2]]
    assert logs[0].losses[0] != logs[0].losses[1]          # refinement moved the loss
    assert repr(family.model.model_options) == options
    assert all(torch.equal(before[k], v) for k, v in family.model.model.state_dict().items())
    assert all(p.is_inference() for p in family.model.model.parameters())


def test_maps_come_from_latent_over_4_unless_map_level_says_otherwise(family):
    _, _, maps = run(family, "euler", support.forced(steps_to_alter=1, thresholds={}))
    assert maps.shape == (1, 2, 4, 4)
    _, _, maps = run(family, "euler", support.forced(steps_to_alter=1, thresholds={}, map_level=1))
    assert maps.shape == (1, 2, 8, 8)


# Token slicing with each family's real tokenizer (no text model needed).
PROMPT = "a cat and a frog"


def test_sd1_keeps_every_column_but_the_start_token_and_the_last_slot():
    tokenizer = comfy.sd1_clip.SD1Tokenizer()
    info = subject_info(tokenizer, tokenizer.tokenize_with_weights(PROMPT), "cat, frog")
    assert info == {"subjects": [[2], [5]], "labels": ["cat", "frog"], "modifiers": [[], []],
                    "modifier_labels": [[], []], "prompt_columns": [1, 2, 3, 4, 5], "end_columns": [6]}
    assert kept_columns(77, 77, info["end_columns"], detect_family(bare_config("SD15")).drop_from_end).tolist() == \
        list(range(1, 76))


def test_sd2_drops_the_end_token_and_the_zero_padding():
    tokenizer = comfy.text_encoders.sd2_clip.SD2Tokenizer()
    tokenized = tokenizer.tokenize_with_weights(PROMPT)
    ids = [token for token, _ in tokenized["h"][0]]
    assert ids[6] == tokenizer.clip_h.end_token and set(ids[7:]) == {0}     # SD2 pads with 0, not the end token
    info = subject_info(tokenizer, tokenized, "cat, frog")
    assert info["subjects"] == [[2], [5]] and info["end_columns"] == [6]
    assert kept_columns(77, 77, info["end_columns"], detect_family(bare_config("SD20")).drop_from_end).tolist() == \
        [1, 2, 3, 4, 5]


def test_sdxl_encoders_share_the_columns_and_pad_differently():
    tokenizer = comfy.sdxl_clip.SDXLTokenizer()
    long_prompt = PROMPT + ", " + ", ".join(["a red hat"] * 30)     # two chunks
    tokenized = tokenizer.tokenize_with_weights(long_prompt)
    for chunk_l, chunk_g in zip(tokenized["l"], tokenized["g"], strict=True):
        ids_l, ids_g = [t for t, _ in chunk_l], [t for t, _ in chunk_g]
        end = ids_l.index(tokenizer.clip_l.end_token)
        assert ids_l[:end + 1] == ids_g[:end + 1]
        assert set(ids_l[end + 1:]) <= {tokenizer.clip_l.end_token} and set(ids_g[end + 1:]) <= {0}
    second_end = 77 + [t for t, _ in tokenized["l"][1]].index(tokenizer.clip_l.end_token)
    info = subject_info(tokenizer, tokenized, "cat, frog")
    assert info["subjects"] == [[2], [5]] and info["end_columns"] == [76, second_end]
    kept = kept_columns(154, 77, info["end_columns"], detect_family(bare_config("SDXL")).drop_from_end).tolist()
    assert kept == list(range(1, 76)) + list(range(78, second_end))


def test_the_attention_boost_acts_on_each_family_and_is_neutral_at_one(family):
    """The boost's patch on SD2.x's and SDXL's cross-attention blocks (SDXL's context: CLIP-L and
    CLIP-G side by side, so the subject columns are the same), both blocks options."""
    from attend_and_excite.nodes.boost import AttendExciteAttentionBoost
    positive, negative = conds(family)
    latent = torch.zeros(1, 4, 16, 16)

    def stock(model):
        return support.sample(model, "euler", None, positive, negative, latent, steps=3, stock=True)[0]
    plain = stock(family.model)
    for blocks in ("all", "map level"):
        inputs = dict(start_percent=0.0, end_percent=1.0, blocks=blocks, renormalise=False)
        neutral = AttendExciteAttentionBoost.execute(family.model, alpha=1.0, beta=1.0, **inputs).result[0]
        boosted = AttendExciteAttentionBoost.execute(family.model, alpha=3.0, beta=0.5, **inputs).result[0]
        assert torch.equal(stock(neutral), plain), blocks
        assert not torch.equal(stock(boosted), plain), blocks
