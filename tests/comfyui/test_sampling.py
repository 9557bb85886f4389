"""The Attend-and-Excite sampler inside real ComfyUI sampling, on small random-weight
SD1.x models: maps, gradients, every sampler, batches, isolation, interrupts."""
import logging

import pytest
import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import support
from attend_and_excite.nodes.core.record import AttentionRecord
from attend_and_excite.nodes.glue.family import SD1
from attend_and_excite.nodes.glue.guidance import GuidancePass, autograd_weights, with_backward_attention
from attend_and_excite.nodes.glue.recorder import (AttentionRecorder, blocks_at_level, cross_attention_blocks,
                                                   modules_through)
from attend_and_excite.nodes.glue.sampler import attend_excite_sampler

FORCED = support.forced()


@pytest.fixture(scope="module")
def model():
    return support.tiny_model(seed=1)


def run(model, sampler_name, settings=FORCED, latent=None, positive=None, **options):
    pos, neg = support.conditionings()
    latent = torch.zeros(1, 4, 8, 8) if latent is None else latent
    out, record = support.sample(model, sampler_name, settings, positive or pos, neg, latent, **options)
    return out, record.logs


def test_blocks_of_the_sd15_topology_at_latent_over_4():
    model = support.tiny_model(config=support.SD15_TOPOLOGY)
    found = [(b.name, b.number) for b in blocks_at_level(model.model.diffusion_model, 2)]
    assert found == [("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)]
    middle = [b for b in cross_attention_blocks(model.model.diffusion_model) if b.name == "middle"]
    assert middle[0].level == 3


def test_only_the_modules_the_truncated_pass_runs_get_autograd_weights():
    with torch.inference_mode():
        model = support.tiny_model(config=support.SD15_TOPOLOGY)
    unet = model.model.diffusion_model
    last = blocks_at_level(unet, 2)[-1]
    ran = modules_through(unet, last)
    assert ran == [unet.time_embed, *unet.input_blocks, unet.middle_block, *unet.output_blocks[:6]]
    skipped = [*unet.output_blocks[6:], unet.out]
    before = {name: (p, p.data_ptr()) for name, p in unet.named_parameters()}
    with autograd_weights(ran):
        assert not any(p.is_inference() for m in ran for p in m.parameters())
        assert all(p.is_inference() for m in skipped for p in m.parameters())
        # views over the same memory, not copies
        assert all(p.data_ptr() == before[name][1] for name, p in unet.named_parameters())
    assert all(p is before[name][0] and p.is_inference() for name, p in unet.named_parameters())


def test_autograd_views_give_the_gradient_of_the_inference_weights():
    with torch.inference_mode():
        layer = torch.nn.Linear(6, 4)
    assert layer.weight.is_inference()
    x = torch.randn(3, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        torch.autograd.grad(layer(x).square().sum(), x)
    with autograd_weights([layer]):
        gradient, = torch.autograd.grad(layer(x).square().sum(), x)
    weight, bias = layer.weight.clone(), layer.bias.clone()
    assert torch.allclose(gradient, 2 * (x.detach() @ weight.T + bias) @ weight)


def test_guidance_pass_routes_backends_without_backward_to_sdpa():
    import comfy.ldm.modules.attention as attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 16, 64, requires_grad=True) for _ in range(3))
    seen = []
    options = with_backward_attention({"transformer_options": {"optimized_attention_override": lambda f, *a, **kw: (
        seen.append(f.__name__), f(*a, **kw))[1]}})
    override = options["transformer_options"]["optimized_attention_override"]
    routed = override(attention.attention_sage, q, k, v, 8)
    assert torch.equal(routed, attention.attention_pytorch(q, k, v, 8))
    assert torch.equal(override(attention.attention_basic, q, k, v, 8), attention.attention_basic(q, k, v, 8))
    assert seen == ["attention_pytorch", "attention_basic"]   # sage swapped; an existing override still applies
    torch.autograd.grad(routed.sum(), q)


def test_guidance_pass_records_the_level_maps_and_has_a_gradient():
    import comfy.conds
    model = support.tiny_model(config=support.SD15_TOPOLOGY)
    recorder = support.listing(AttentionRecorder(blocks_at_level(model.model.diffusion_model, 2)))
    context = support.random_conditioning(1)[0][0]
    entry = {"model_conds": {"c_crossattn": comfy.conds.CONDCrossAttn(context)}, "uuid": "positive"}
    guidance = GuidancePass(model.model, entry, recorder, subjects=[[2], [5]], kept=SD1.kept(77, [6]))
    model.model.current_patcher = model     # as sampling's preparation sets it
    x = torch.randn(1, 4, 32, 32) * 14.6
    seen = []
    options = {**model.model_options, "transformer_options": {"optimized_attention_override": lambda f, *a, **kw: (
        seen.append(f.__name__), f(*a, **kw))[1]}}
    with torch.enable_grad():
        at = guidance.evaluate(x, torch.tensor([14.6]), options)
        loss, peaks, grad = at.loss, at.peaks, at.gradient()
    user_override = options["transformer_options"]["optimized_attention_override"]
    assert guidance.model_options["transformer_options"]["optimized_attention_override"] is not user_override
    assert seen                                  # ours wraps the user's override, which still applies
    assert recorder.recorded == [(("input", 7), 0, (8, 8)), (("input", 8), 0, (8, 8)), (("output", 3), 0, (8, 8)),
                                 (("output", 4), 0, (8, 8)), (("output", 5), 0, (8, 8))]
    assert peaks.shape == (1, 2) and 0 < loss.item() <= 1
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_the_loss_is_fp32_on_an_fp16_model():
    import comfy.conds
    model = support.tiny_model(config=dict(support.TINY_UNET, dtype=torch.float16))
    recorder = AttentionRecorder(blocks_at_level(model.model.diffusion_model, 2))
    context = support.random_conditioning(1)[0][0].half()
    entry = {"model_conds": {"c_crossattn": comfy.conds.CONDCrossAttn(context)}, "uuid": "positive"}
    guidance = GuidancePass(model.model, entry, recorder, subjects=[[2], [5]], kept=SD1.kept(77, [6]))
    model.model.current_patcher = model
    assert next(model.model.diffusion_model.parameters()).dtype == torch.float16
    with torch.enable_grad():
        at = guidance.evaluate(torch.randn(1, 4, 16, 16) * 14.6, torch.tensor([14.6]), model.model_options)
        loss, peaks, grad = at.loss, at.peaks, at.gradient()
    assert loss.dtype == peaks.dtype == guidance.last_maps.dtype == torch.float32
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("sampler_name", comfy.samplers.KSampler.SAMPLERS)
def test_zero_scale_equals_the_stock_ksampler(model, sampler_name):
    off = support.forced(thresholds={0: 1.0}, max_refinement=1, scale_factor=0.0)
    ours, logs = run(model, sampler_name, off)
    stock, _ = run(model, sampler_name, stock=True)
    assert logs, "the guidance pass did not run"
    assert torch.equal(ours, stock)


@pytest.mark.parametrize("sampler_name", comfy.samplers.KSampler.SAMPLERS)
def test_every_sampler_moves_its_own_state_at_each_guided_step(model, sampler_name, caplog):
    with caplog.at_level(logging.WARNING):
        ours, logs = run(model, sampler_name)
    stock, _ = run(model, sampler_name, stock=True)
    assert not torch.allclose(ours, stock)
    assert "another tensor than its state" not in caplog.text
    if sampler_name not in ("dpm_fast", "dpm_adaptive"):
        assert [log.step for log in logs] == [0, 1, 2]
        assert [log.refinement_iterations for log in logs] == [[2], [0], [2]]
        assert [len(log.losses) for log in logs] == [3, 1, 3]


def test_batch_rows_are_guided_independently(model):
    latent = torch.zeros(2, 4, 8, 8)
    both, logs = run(model, "euler", latent=latent)
    noise = comfy.sample.prepare_noise(latent, 7)
    assert len(logs[0].losses[0]) == 2
    for row in range(2):
        pos, neg = support.conditionings()
        with torch.inference_mode():
            sigmas = comfy.samplers.KSampler(model, steps=6, device="cpu", sampler="euler", scheduler="normal").sigmas
            sampler = attend_excite_sampler("euler", FORCED, AttentionRecord())
            alone = comfy.sample.sample_custom(model, noise[row:row + 1], 5.0, sampler, sigmas, pos, neg,
                                               latent[row:row + 1], seed=7, disable_pbar=True)
        assert torch.allclose(both[row:row + 1], alone, atol=1e-4, rtol=1e-4)


def test_long_prompt_subject_in_the_second_chunk(model):
    subjects = {"attend_excite": {"subjects": [[2], [90]], "labels": ["a", "b"], "end_columns": [76, 95]}}
    positive = support.random_conditioning(1, tokens=154, **subjects)
    out, logs = run(model, "euler", positive=positive)
    assert torch.isfinite(out).all() and [log.step for log in logs] == [0, 1, 2]
    assert len(logs[0].peaks[0][0]) == 2


def test_cfg_one_and_partial_denoise(model):
    out, logs = run(model, "euler", cfg=1.0, denoise=0.5, latent=torch.randn(1, 4, 8, 8))
    assert torch.isfinite(out).all() and [log.step for log in logs] == [0, 1, 2]


def snapshot(patcher):
    return ({k: v.clone() for k, v in patcher.model.state_dict().items()}, repr(patcher.model_options),
            {id(p) for p in patcher.model.parameters()})


def test_the_users_model_is_left_as_it_was(model):
    before = snapshot(model)
    run(model, "dpmpp_2m")
    after = snapshot(model)
    assert before[1] == after[1] and before[2] == after[2]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_model_loaded_under_inference_mode_gets_gradients():
    with torch.inference_mode():
        model = support.tiny_model(seed=3)
    assert all(p.is_inference() for p in model.model.parameters())
    params = [id(p) for p in model.model.parameters()]
    _, logs = run(model, "euler")
    assert logs[0].losses[0] != logs[0].losses[1]          # the refinement step moved the loss
    assert [id(p) for p in model.model.parameters()] == params
    assert all(p.is_inference() for p in model.model.parameters())


def test_an_existing_attn2_replace_patch_is_wrapped_not_dropped(model):
    import comfy.ldm.modules.attention as attention
    calls = []

    def user_patch(q, k, v, extra):
        calls.append(torch.is_grad_enabled())
        return attention.optimized_attention(q, k, v, extra["n_heads"])

    patched = model.clone()
    patched.set_model_attn2_replace(user_patch, "output", 0)
    run(patched, "euler")
    assert True in calls and False in calls     # guidance pass and normal steps both used it


def test_interrupt_stops_refinement_and_restores_weights():
    with torch.inference_mode():
        model = support.tiny_model(seed=4)
    before = snapshot(model)
    counted = []

    def interrupt_in_guidance(q, k, v, extra):
        if torch.is_grad_enabled():
            counted.append(1)
            if len(counted) == 2:
                comfy.model_management.interrupt_current_processing(True)
        import comfy.ldm.modules.attention as attention
        return attention.optimized_attention(q, k, v, extra["n_heads"])

    patched = model.clone()
    patched.set_model_attn2_replace(interrupt_in_guidance, "input", 1)
    many = support.forced(thresholds={0: 1.0}, max_refinement=20)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run(patched, "euler", many)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(counted) == 2                      # stopped at the next refinement iteration
    after = snapshot(model)
    assert before[1] == after[1] and before[2] == after[2]    # options and parameter objects
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert all(p.is_inference() for p in model.model.parameters())


class Overflow(torch.autograd.Function):
    """Identity forward; an infinite gradient backward, as an fp16 overflow gives."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_a_non_finite_gradient_skips_the_update_with_a_warning(model, caplog):
    import comfy.ldm.modules.attention as attention

    def overflow(q, k, v, extra):
        out = attention.optimized_attention(q, k, v, extra["n_heads"])
        return Overflow.apply(out) if torch.is_grad_enabled() else out

    patched = model.clone()
    patched.set_model_attn2_replace(overflow, "input", 1)
    with caplog.at_level(logging.WARNING):
        ours, logs = run(patched, "euler")
    stock, _ = run(patched, "euler", stock=True)
    assert [log.skipped_updates for log in logs] == [3, 1, 3]     # every update: 2 refinements + the step's own
    assert "updates skipped because the loss or its gradient was not finite" in caplog.text
    assert torch.equal(ours, stock)                              # nothing moved, nothing became NaN


@pytest.mark.parametrize("memory, advice", [("fast", "set guidance_memory to lean .* or lower the image size"),
                                            ("lean", "lean pass\\): lower the image size or the batch size")])
def test_out_of_memory_in_the_guidance_pass_says_what_to_change_and_restores_the_model(memory, advice):
    with torch.inference_mode():
        model = support.tiny_model(seed=4)
    before = snapshot(model)

    def exhausted(q, k, v, extra):
        if torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        import comfy.ldm.modules.attention as attention
        return attention.optimized_attention(q, k, v, extra["n_heads"])

    patched = model.clone()
    patched.set_model_attn2_replace(exhausted, "input", 1)
    with pytest.raises(torch.OutOfMemoryError, match=advice) as raised:
        run(patched, "euler", support.forced(guidance_memory=memory))
    assert raised.value.__context__ is None        # the failed pass's frames and graph are not kept alive
    after = snapshot(model)
    assert before[1] == after[1] and before[2] == after[2]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert all(p.is_inference() for p in model.model.parameters())
    assert all("forward" not in vars(m) for m in model.model.modules())     # no layer left recomputing
