"""SD3 and Flux (MMDiT): maps from joint attention, the step in flow-matching space, subjects on
their encoders' columns; on tiny random models built by ComfyUI's own SD3 and Flux configs."""
import functools
import types

import pytest
import torch

import comfy.model_management
import comfy.samplers
import comfy.supported_models
import comfy.text_encoders.flux
import comfy.text_encoders.sd3_clip
import support
from attend_and_excite.nodes.core.schedule import build_schedule
from attend_and_excite.nodes.core.tokens import PIECE, layout
from attend_and_excite.nodes.glue.family import detect_family
from attend_and_excite.nodes.glue.guidance import GuidancePass, autograd_weights
from attend_and_excite.nodes.glue.joint import JointAttentionRecorder, joint_blocks
from attend_and_excite.nodes.glue.sampler import OWN_GRID
from attend_and_excite.nodes.glue.text import subject_info
from test_sampling import snapshot

CONTEXT, POOLED = 48, 32
FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=POOLED, context_in_dim=CONTEXT,
            hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=1, axes_dim=[8, 12, 12],
            theta=10000, qkv_bias=True, guidance_embed=True, patch_size=2)
SD3 = dict(in_channels=16, out_channels=16, patch_size=2, depth=2, adm_in_channels=POOLED, pos_embed_max_size=16,
           num_patches=256, context_embedder_config={"target": "torch.nn.Linear",
                                                     "params": {"in_features": CONTEXT, "out_features": 128}})
# SD3.5 medium's layout: an image-only self-attention beside the joint one in some blocks.
SD35_MEDIUM = dict(SD3, x_block_self_attn=True, x_block_self_attn_layers=[0])
MODELS = {"flux": ("Flux", FLUX), "flux schnell": ("FluxSchnell", dict(FLUX, guidance_embed=False)),
          "sd3": ("SD3", SD3), "sd3.5 medium": ("SD3", SD35_MEDIUM)}
TOKENS = 12          # a short T5 prompt: "a cat and a frog" pieces, end token, padding
FORCED = support.forced()


@functools.cache
def model_of(name: str):
    config_name, unet = MODELS[name]
    with torch.inference_mode():
        model = support.tiny_model(seed=3, config=unet, family=config_name)
    return types.SimpleNamespace(name=name, model=model, flux=config_name.startswith("Flux"))


@pytest.fixture(params=list(MODELS))
def mmdit(request):
    return model_of(request.param)


def conds(mmdit, subjects=((2,), (5,))):
    extra = {"pooled_output": torch.randn(1, POOLED, generator=torch.Generator().manual_seed(4))}
    if mmdit.name == "flux":
        extra["guidance"] = 3.5
    info = {"attend_excite": {"subjects": [list(s) for s in subjects], "labels": ["cat", "frog"], "end_columns": [7]}}
    positive = support.random_conditioning(1, CONTEXT, TOKENS if mmdit.flux else 77 + TOKENS, **extra, **info)
    negative = support.random_conditioning(2, CONTEXT, TOKENS if mmdit.flux else 77 + TOKENS, **extra)
    return positive, negative


def run(mmdit, sampler_name="euler", settings=FORCED, cfg=None, **options):
    positive, negative = conds(mmdit)
    return support.sample(mmdit.model, sampler_name, settings, positive, negative, torch.zeros(1, 16, 16, 12),
                          cfg=cfg if cfg is not None else (1.0 if mmdit.name == "flux" else 4.0), **options)


def test_flux_and_sd3_are_their_families(mmdit):
    family = detect_family(mmdit.model.model)
    assert family.name == ("Flux.1" if mmdit.flux else "SD3") and family.joint and family.flow


def test_maps_come_from_every_joint_block_with_a_gradient(mmdit):
    base = mmdit.model.model
    unet = base.diffusion_model
    family = detect_family(base)
    recorder = support.listing(JointAttentionRecorder(joint_blocks(unet), unet.patch_size))
    positive, _ = conds(mmdit)
    context, extra = positive[0]
    entry = {"model_conds": base.extra_conds(cross_attn=context, device=torch.device("cpu"),
                                             **{k: v for k, v in extra.items() if k != "attend_excite"}),
             "uuid": "positive"}
    guidance = GuidancePass(base, entry, recorder, subjects=[[2], [5]], kept=family.kept(context.shape[1], [7]))
    base.current_patcher = mmdit.model
    x = torch.randn(1, 16, 16, 12)          # a non-square latent: h and w must not swap
    with autograd_weights(guidance.modules), torch.inference_mode(False), torch.enable_grad():
        at = guidance.evaluate(x, torch.tensor([0.8]), mmdit.model.model_options)
        grad = at.gradient()
    assert recorder.recorded == [(n, context.shape[1]) for n in range(len(joint_blocks(unet)))]
    assert guidance.last_maps.shape == (1, 2, 8, 6)       # the 2 x 2 patch grid
    assert 0 < at.loss.item() <= 1 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    single = getattr(unet, "single_blocks", [])
    assert not {id(m) for m in single} & {id(m) for m in guidance.modules}     # the pass stops before them


@pytest.mark.parametrize("name, sampler_name", [(name, sampler) for name in ("flux", "sd3")
                                                 for sampler in comfy.samplers.KSampler.SAMPLERS] +
                         [(name, sampler) for name in ("flux schnell", "sd3.5 medium")
                          for sampler in ("euler", "dpmpp_2m_sde", "uni_pc")])
def test_zero_scale_equals_the_stock_sampler_and_guides(name, sampler_name):
    """Every sampler of the KSampler list on a Flux and an SD3 model, each with its guided steps
    found (flow models start at sigma 1, which samplers working in log-SNR move just under it)."""
    mmdit = model_of(name)
    off = support.forced(thresholds={0: 1.0}, max_refinement=1, scale_factor=0.0)
    ours, record = run(mmdit, sampler_name, off)
    stock, _ = run(mmdit, sampler_name, stock=True)
    assert torch.equal(ours, stock)
    if sampler_name in OWN_GRID:     # each guided step at the first evaluation at or below its sigma
        assert [log.step for log in record.logs][0] == 0
    else:
        assert [log.step for log in record.logs] == [0, 1, 2]


def test_guidance_moves_the_latent_and_refines(mmdit):
    guided, record = run(mmdit)
    stock, _ = run(mmdit, stock=True)
    assert not torch.equal(guided, stock) and torch.isfinite(guided).all()
    assert [log.refinement_iterations for log in record.logs] == [[2], [0], [2]]
    assert record.maps[0].shape == (1, 2, 8, 6) and record.model == detect_family(mmdit.model.model).name


def test_sd3_guides_with_cfg_above_one_and_flux_dev_at_cfg_one(mmdit):
    """Flux dev is guidance-distilled (cfg 1, a guidance embedding); SD3.5 samples with cfg > 1."""
    cfg = 1.0 if mmdit.flux else 4.5
    guided, record = run(mmdit, cfg=cfg)
    assert not torch.equal(guided, run(mmdit, cfg=cfg, stock=True)[0]) and torch.isfinite(guided).all()
    assert [log.step for log in record.logs] == [0, 1, 2]


def test_the_flow_step_equals_a_step_on_the_unit_scale_latent():
    """x = (1 - sigma) x0 + sigma noise = s z, with z of unit scale and s^2 = (1 - sigma)^2 + sigma^2:
    the reference's move of z by alpha dL/dz is the package's move of x by alpha s^2 dL/dx."""
    with torch.inference_mode():
        model = support.tiny_model(seed=3, config=FLUX, family="Flux")
    base, unet = model.model, model.model.diffusion_model
    recorder = JointAttentionRecorder(joint_blocks(unet), unet.patch_size)
    positive, _ = conds(types.SimpleNamespace(name="flux", flux=True))
    context, extra = positive[0]
    entry = {"model_conds": base.extra_conds(cross_attn=context, device=torch.device("cpu"), guidance=3.5,
                                             pooled_output=extra["pooled_output"]), "uuid": "positive"}
    guidance = GuidancePass(base, entry, recorder, subjects=[[2], [5]], kept=detect_family(base).kept(TOKENS, [7]))
    base.current_patcher = model
    sigma = 0.7
    schedule = build_schedule(support.forced(), 6, flow=True)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))
    scale = ((1 - sigma) ** 2 + sigma ** 2) ** 0.5
    with autograd_weights(guidance.modules), torch.inference_mode(False), torch.enable_grad():
        gradient = guidance.evaluate(x, torch.tensor([sigma]), model.model_options).gradient()
        ours = x - schedule.step_size(0, sigma) * gradient
        z = (x / scale).requires_grad_(True)
        loss = guidance.forward(z * scale, torch.tensor([sigma]))[0].loss
        (grad_z,) = torch.autograd.grad(loss.sum(), z)
        direct = (z - schedule.step_sizes[0] * grad_z).detach() * scale
    assert torch.allclose(ours, direct, rtol=1e-5, atol=1e-6) and not torch.allclose(ours, x)


def test_map_level_is_refused_on_mmdit_with_what_to_set(mmdit):
    with pytest.raises(ValueError, match="set map_level to auto"):
        run(mmdit, settings=support.forced(map_level=1))


def test_flux_subjects_are_read_on_t5_columns():
    tokenizer = comfy.text_encoders.flux.FluxTokenizer()
    tokenized = tokenizer.tokenize_with_weights("a hedgehog and a cat, and (another cat:1.2)")
    info = subject_info(tokenizer, tokenized, "hedgehog, cat")
    tokens, _ = layout(tokenized["t5xxl"], tokenizer.t5xxl.inv_vocab, None, tokenizer.t5xxl.end_token)
    pieces = {t.column: t.text for t in tokens if t.kind == PIECE}
    hedgehog, cat = info["subjects"]
    assert "".join(pieces[c] for c in hedgehog) == "hedgehog" and hedgehog[0] == 2    # no start token: "▁", "a"
    assert len(cat) == 2 and all(pieces[c] == "cat" for c in cat)        # both, the weighted one too
    assert info["end_columns"] == [max(pieces) + 1]
    kept = detect_family(types.SimpleNamespace(model_config=comfy.supported_models.Flux({"in_channels": 16}))).kept(
        len(tokenized["t5xxl"][0]), info["end_columns"])
    assert kept.tolist() == sorted(pieces)            # every piece, no end token, no padding


@pytest.mark.parametrize("prompt", ["a photo of a teddy bear and a giraffe", "a red bench and a yellow clock",
                                    "a hedgehog, a turtle and two bowls", "an elephant sitting on a crocodile"])
def test_automatic_subjects_on_t5_pieces_are_those_on_clip(prompt, tokenizer):
    flux = comfy.text_encoders.flux.FluxTokenizer()
    t5 = subject_info(flux, flux.tokenize_with_weights(prompt), "")["labels"]
    assert t5 == subject_info(tokenizer, tokenizer.tokenize_with_weights(prompt), "")["labels"] and t5


def test_sd3_subjects_are_read_on_the_clip_columns():
    tokenizer = comfy.text_encoders.sd3_clip.SD3Tokenizer()
    tokenized = tokenizer.tokenize_with_weights("a cat and a frog")
    assert subject_info(tokenizer, tokenized, "cat, frog")["subjects"] == [[2], [5]]


def assert_left_as_it_was(patcher, before):
    """Weights, the parameter objects and the options as snapshot() saw them; inference tensors still."""
    after = snapshot(patcher)
    assert before[1] == after[1] and before[2] == after[2]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert all(p.is_inference() for p in patcher.model.parameters())


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_a_batch_is_scored_row_by_row_and_the_model_is_left_as_it_was(name):
    mmdit = model_of(name)
    before = snapshot(mmdit.model)
    positive, negative = conds(mmdit)
    _, record = support.sample(mmdit.model, "euler", FORCED, positive, negative, torch.zeros(2, 16, 16, 12),
                               cfg=1.0 if mmdit.flux else 4.0)
    first = record.logs[0].losses[0]
    assert len(first) == 2 and first[0] != first[1] and record.maps[0].shape == (2, 2, 8, 6)
    assert_left_as_it_was(mmdit.model, before)


def test_an_interrupt_in_refinement_restores_flux_and_runs_a_dit_patch_already_there():
    mmdit = model_of("flux")
    before = snapshot(mmdit.model)
    calls = []

    def block_patch(args, extra):      # another node's replacement of a double block
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 2:
                comfy.model_management.interrupt_current_processing(True)
        return extra["original_block"](args)

    patched = mmdit.model.clone()
    patched.set_model_patch_replace(block_patch, "dit", "double_block", 0)
    positive, negative = conds(mmdit)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            support.sample(patched, "euler", support.forced(thresholds={0: 1.0}, max_refinement=20), positive,
                           negative, torch.zeros(1, 16, 16, 12), cfg=1.0)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 2                   # called in the guidance pass; stopped at the next iteration
    assert_left_as_it_was(mmdit.model, before)


def test_token_positions_are_checked_against_the_columns_each_family_scores():
    flux = model_of("flux")
    _, record = run(flux, settings=support.forced(token_indices=((0,), (5,))))     # T5: no start token
    assert record.labels == ["0", "5"] and record.logs
    with pytest.raises(ValueError, match="token index 9 is not one of the tokens the method scores on Flux.1"):
        run(flux, settings=support.forced(token_indices=((2,), (9,))))             # after T5's end token
    with torch.inference_mode():
        sd1 = support.tiny_model(seed=3)
    positive, negative = support.conditionings()
    with pytest.raises(ValueError, match="token index 0 is not one of the tokens the method scores on SD1.x"):
        support.sample(sd1, "euler", support.forced(token_indices=((0,), (5,))), positive, negative,
                       torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="token index 80 is outside the conditioning's 77 tokens"):
        support.sample(sd1, "euler", support.forced(token_indices=((2,), (80,))), positive, negative,
                       torch.zeros(1, 4, 8, 8))
