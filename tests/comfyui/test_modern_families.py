"""Z-Image, Qwen-Image, Flux.2 (dev and Klein) and Chroma: subjects on their real tokenizers, maps from
their joint attention, and the sampler's invariants, on tiny random models of ComfyUI's own classes
with tiny text encoders of their real classes (tests/tiny_families.py)."""
import functools

import pytest
import torch

import comfy.samplers
import support
import tiny_families
from attend_and_excite.nodes.core.families import PROMPT
from attend_and_excite.nodes.core.losses import LOSSES
from attend_and_excite.nodes.core.tokens import PIECE, TEMPLATE
from attend_and_excite.nodes.glue.family import detect_family
from attend_and_excite.nodes.glue.sampler import OWN_GRID
from attend_and_excite.nodes.glue.text import SUBJECTS_KEY, encode_with_subjects, prompt_tokens
from test_mmdit import assert_left_as_it_was
from test_sampling import snapshot

NAMES = list(tiny_families.FAMILIES)
PROMPT_TEXT = "a red cat and a blue frog"
FAMILY_NAMES = {"z-image": "Z-Image", "qwen-image": "Qwen-Image", "flux.2": "Flux.2", "flux.2 klein": "Flux.2",
                "chroma": "Chroma"}
# Flux.2's text context as the tokenizer-less tree sees it: 12 columns, "cat" at 4, "frog" at 8.
FLUX2_BY_HAND = {"subjects": [[4], [8]], "labels": ["cat", "frog"], "modifiers": [[[3]], [[7]]],
                 "modifier_labels": [["red"], ["blue"]], "prompt_columns": [2, 3, 4, 5, 6, 7, 8],
                 "end_columns": [], "context_length": 12}


def latent(name: str, batch: int = 1, small: bool = False) -> torch.Tensor:
    """An 8 x 6 grid of image tokens (small: 4 x 4, for the runs of every sampler)."""
    if name.startswith("flux.2"):       # patch size 1 at 16x: the maps' grid is the latent's
        return torch.zeros(batch, 128, *((4, 4) if small else (8, 6)))
    side = (8, 8) if small else (16, 12)
    if name == "qwen-image":
        return torch.zeros(batch, 16, 1, *side)     # Qwen-Image's latent has a frame axis
    return torch.zeros(batch, 16, *side)


def cfg_of(name: str) -> float:
    return 2.5 if name == "qwen-image" else 1.0    # Qwen-Image samples with cfg; the distilled ones at 1


@functools.cache
def conditionings(name: str, text: str = PROMPT_TEXT):
    """(positive with subjects, negative): from the family's tiny text encoder, or, where this ComfyUI
    cannot build its tokenizer (Flux.2 dev on 0.3.75), random contexts with the subjects written by hand."""
    family = tiny_families.family(name)
    extra = family.extra
    if tiny_families.missing(name):
        if name != "flux.2":
            pytest.skip(tiny_families.missing(name))
        extra = {**extra, "pooled_output": None}       # as the text encoder gives it: Flux.2 reads no pooled vector
        positive = support.random_conditioning(1, family.width, 12, **extra, **{SUBJECTS_KEY: FLUX2_BY_HAND})
        return positive, support.random_conditioning(2, family.width, 12, **extra)
    clip = family.clip()
    positive = [[e, {**x, **extra}] for e, x in encode_with_subjects(clip, text, "")]
    negative = [[e, {**x, **extra}] for e, x in clip.encode_from_tokens_scheduled(clip.tokenize(""))]
    return positive, negative


def run(name: str, sampler_name: str = "euler", settings=None, stock: bool = False, batch: int = 1, model=None,
        positive=None, small: bool = False):
    default_positive, negative = conditionings(name)
    return support.sample(model or tiny_families.tiny_model(name), sampler_name, settings or support.forced(),
                          positive or default_positive, negative, latent(name, batch, small), cfg=cfg_of(name),
                          stock=stock)


@pytest.mark.parametrize("name", NAMES)
def test_each_family_is_detected_and_its_maps_come_from_its_joint_attention(name):
    family = detect_family(tiny_families.tiny_model(name).model)
    assert family.name == FAMILY_NAMES[name] and family.joint and family.flow


# The families whose tokenizer wraps the prompt in a chat template: the words of the prompt, what
# the template puts before them (in the columns the diffusion model receives).
TEMPLATED = {"z-image": 3, "qwen-image": 0, "flux.2": None, "flux.2 klein": 3}


@pytest.mark.parametrize("name", [n for n in NAMES if n != "chroma"])
def test_subjects_are_words_of_the_prompt_in_the_columns_the_model_receives(name):
    why = tiny_families.missing(name)
    if why:
        pytest.skip(why)
    clip = tiny_families.tiny_clip(name)
    tokenized = clip.tokenize(PROMPT_TEXT)
    context = clip.encode_from_tokens_scheduled(tokenized)[0][0]
    tokens, _ = prompt_tokens(clip.tokenizer, tokenized, context.shape[1])
    pieces = [t for t in tokens if t.kind == PIECE]
    assert [t.text for t in pieces] == PROMPT_TEXT.split() and len(tokens) == context.shape[1]
    assert [t.column for t in tokens] == list(range(context.shape[1]))        # one token per context column
    first = TEMPLATED[name]
    if first is not None:
        assert pieces[0].column == first
    template = [t for t in tokens if t.kind == TEMPLATE]
    assert template and all(t.column < pieces[0].column or t.column > pieces[-1].column for t in template)
    info = encode_with_subjects(clip, PROMPT_TEXT, "")[0][1][SUBJECTS_KEY]
    assert info["labels"] == ["cat", "frog"] and info["modifier_labels"] == [["red"], ["blue"]]
    assert info["prompt_columns"] == [t.column for t in pieces] and info["context_length"] == context.shape[1]


def test_qwen_image_subjects_count_from_the_user_turn_the_encoder_keeps():
    """Qwen-Image's encoder drops its system prompt and the user turn's opening: a subject's column is
    its position in what the diffusion model receives, 34 columns before its tokenizer position."""
    clip = tiny_families.tiny_clip("qwen-image")
    tokenized = clip.tokenize(PROMPT_TEXT)
    ids = [t[0] for t in tokenized["qwen25_7b"][0]]
    info = encode_with_subjects(clip, PROMPT_TEXT, "cat")[0][1][SUBJECTS_KEY]
    assert clip.tokenizer.qwen25_7b.inv_vocab[ids[info["subjects"][0][0] + 34]] == "Ġcat"
    assert prompt_tokens(clip.tokenizer, tokenized)[0] == prompt_tokens(clip.tokenizer, tokenized, len(ids) - 34)[0]


@pytest.mark.parametrize("sampler_name", comfy.samplers.KSampler.SAMPLERS)
@pytest.mark.parametrize("name", NAMES)
def test_zero_scale_equals_the_stock_sampler_and_every_step_is_found(name, sampler_name):
    off = support.forced(thresholds={0: 1.0}, max_refinement=1, scale_factor=0.0)
    ours, record = run(name, sampler_name, off, small=True)
    stock, _ = run(name, sampler_name, stock=True, small=True)
    assert torch.equal(ours, stock)
    steps = [log.step for log in record.logs]
    assert steps[0] == 0 if sampler_name in OWN_GRID else steps == [0, 1, 2]


@pytest.mark.parametrize("name", NAMES)
def test_a_guided_step_lowers_the_loss_and_moves_the_latent(name):
    guided, record = run(name)
    stock, _ = run(name, stock=True)
    assert not torch.equal(guided, stock) and torch.isfinite(guided).all()
    first = record.logs[0].losses
    assert len(first) == 3 and first[1][0] < first[0][0]        # the refinement's gradient steps lower it
    assert record.model == FAMILY_NAMES[name] and record.maps[0].shape[:2] == (1, 2)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", NAMES)
def test_lean_equals_fast_for_every_loss(name, loss):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # several threads split reductions by timing (test_lean.py)
    try:
        settings = {"loss": loss, "thresholds": None if loss != "attend_and_excite" else {0: 1.0, 2: 1.0}}
        fast, fast_record = run(name, settings=support.forced(guidance_memory="fast", **settings))
        lean, lean_record = run(name, settings=support.forced(guidance_memory="lean", **settings))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fast, lean)
    assert [log.losses for log in fast_record.logs] == [log.losses for log in lean_record.logs]
    assert lean_record.guidance_memory == "lean"


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_is_scored_row_by_row_and_the_model_is_left_as_it_was(name):
    model = tiny_families.tiny_model(name)
    before = snapshot(model)
    _, record = run(name, batch=2)
    first = record.logs[0].losses[0]
    assert len(first) == 2 and record.maps[0].shape[:2] == (2, 2)
    assert_left_as_it_was(model, before)


def test_flux2_subjects_move_with_the_left_padding_the_model_adds():
    """Flux.2 pads its context on the left to 512 columns: the subjects, given in the text encoder's
    columns, are read that many columns later; a context padded by hand to 512 gives the same run."""
    positive, _ = conditionings("flux.2")
    pad = 512 - positive[0][0].shape[1]

    def moved(columns):
        return [moved(c) for c in columns] if isinstance(columns, list) else columns + pad
    padded_info = {**positive[0][1][SUBJECTS_KEY], "context_length": 512}
    padded_info.update({key: moved(padded_info[key]) for key in ("subjects", "modifiers", "prompt_columns")})
    context = torch.nn.functional.pad(positive[0][0], (0, 0, pad, 0))
    padded = [[context, {**positive[0][1], SUBJECTS_KEY: padded_info}]]
    ours, record = run("flux.2")
    by_hand, by_hand_record = run("flux.2", positive=padded)
    assert torch.equal(ours, by_hand) and torch.equal(record.maps[0], by_hand_record.maps[0])


def test_zimage_records_its_first_layers_from_the_joint_sequence_and_stops_there():
    """3 tiny main layers: the first third (1) recorded, over the text padded to 32 columns; the refiners
    (text alone, image alone) are not; the later layers never run in the pass."""
    model = tiny_families.tiny_model("z-image")
    ran = []
    layers = model.model.diffusion_model.layers
    hooks = [layer.register_forward_hook(lambda m, i, o, n=n: ran.append(n) if torch.is_grad_enabled() else None)
             for n, layer in enumerate(layers)]
    try:
        _, record = run("z-image", settings=support.forced(thresholds={0: 1.0}, max_refinement=0, steps_to_alter=1))
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == []          # each pass stops inside layer 0, in its attention
    assert record.maps[0].shape == (1, 2, 8, 6)


def test_a_dit_patch_and_an_attention_override_already_there_still_run():
    """Another node's Qwen-Image block replacement and Z-Image attention override run in the guidance pass
    (and the model patchers are left as they were)."""
    calls = {"block": 0, "override": 0}

    def block_patch(args, extra):
        calls["block"] += torch.is_grad_enabled()
        return extra["original_block"](args)

    def override(func, *args, **kwargs):
        calls["override"] += torch.is_grad_enabled()
        return func(*args, **kwargs)

    qwen = tiny_families.tiny_model("qwen-image").clone()
    qwen.set_model_patch_replace(block_patch, "dit", "double_block", 0)
    zimage = tiny_families.tiny_model("z-image").clone()
    zimage.model_options["transformer_options"]["optimized_attention_override"] = override
    before = repr(qwen.model_options), repr(zimage.model_options)
    run("qwen-image", model=qwen)
    run("z-image", model=zimage)
    assert calls["block"] > 0 and calls["override"] > 0
    assert (repr(qwen.model_options), repr(zimage.model_options)) == before


def test_qwen_image_edit_reference_images_are_refused_with_what_to_do():
    positive, negative = conditionings("qwen-image")
    reference = torch.zeros(1, 16, 1, 16, 12)
    positive = [[e, {**x, "reference_latents": [reference]}] for e, x in positive]
    with pytest.raises(ValueError, match="the Edit models' reference images are not supported"):
        support.sample(tiny_families.tiny_model("qwen-image"), "euler", support.forced(), positive, negative,
                       latent("qwen-image"), cfg=2.5)


def test_token_indices_on_a_templated_family_need_the_pack_s_text_encode():
    clip = tiny_families.tiny_clip("z-image")
    plain = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT_TEXT))
    with pytest.raises(ValueError, match="on Z-Image, token_indices need the conditioning of 'CLIP Text Encode"):
        support.sample(tiny_families.tiny_model("z-image"), "euler", support.forced(token_indices=((5,), (9,))),
                       plain, plain, latent("z-image"))
    assert detect_family(tiny_families.tiny_model("z-image").model).context == PROMPT


def test_heatmaps_and_masks_are_sized_to_the_image_of_each_family_s_vae():
    """Flux.2's VAE makes 16 pixels of a latent cell, Qwen-Image's latent has a frame axis."""
    from attend_and_excite.nodes.heatmaps import attention_results
    for name, pixels in (("flux.2", 16), ("qwen-image", 8)):
        samples, record = run(name)
        (_, _, _, _, masks), _ = attention_results(None, record, {"samples": samples}, 0, 0.0)
        assert masks.shape == (2, samples.shape[-2] * pixels, samples.shape[-1] * pixels)

