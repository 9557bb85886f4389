"""Reuse and isolation on the tiny model: other patches keep acting during
Attend-and-Excite sampling, runs repeat bit for bit, and nothing accumulates."""
import gc
import resource
import warnings

import pytest
import torch

import comfy.ldm.modules.attention as attention
import support
from comfy_extras.nodes_pag import PerturbedAttentionGuidance

SUBJECTS = support.SUBJECTS
GUIDED = support.forced(thresholds={0: 1.0})
OFF = support.forced(thresholds={0: 1.0}, scale_factor=0.0)


@pytest.fixture(scope="module")
def model():
    with torch.inference_mode():     # as ComfyUI's loader: the weights are inference tensors
        return support.tiny_model(seed=5)


def run(model, settings=GUIDED, stock=False):
    positive, negative = support.conditionings()
    out, record = support.sample(model, "dpmpp_2m", settings, positive, negative, torch.zeros(1, 4, 8, 8),
                                 stock=stock)
    return out, record.logs


def with_lora(model):
    """A weight patch as a LoRA adds it (ComfyUI's "diff" patch on an attention weight the guidance pass runs)."""
    patched = model.clone()
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    weight = model.model.state_dict()[key]
    patched.add_patches({key: (torch.randn(weight.shape, generator=torch.Generator().manual_seed(9)),)}, 0.5)
    return patched


def with_wrapper(model, calls):
    patched = model.clone()

    def wrapper(apply_model, args):
        calls.append(torch.is_grad_enabled())
        return apply_model(args["input"] * 0.9, args["timestep"], **args["c"])
    patched.set_model_unet_function_wrapper(wrapper)
    return patched


def with_attn2_replace(model, calls):
    patched = model.clone()

    def replace(q, k, v, extra):
        calls.append(torch.is_grad_enabled())
        return attention.optimized_attention(q, k * 1.5, v, extra["n_heads"])
    patched.set_model_attn2_replace(replace, "input", 1)
    return patched


def with_pag(model):
    return PerturbedAttentionGuidance.execute(model, 2.0).result[0]


@pytest.mark.parametrize("patch", ["lora", "model_function_wrapper", "attn2_replace", "perturbed_attention"])
def test_other_patches_act_during_attend_and_excite(model, patch):
    calls = []
    patched = {"lora": lambda: with_lora(model), "model_function_wrapper": lambda: with_wrapper(model, calls),
               "attn2_replace": lambda: with_attn2_replace(model, calls),
               "perturbed_attention": lambda: with_pag(model)}[patch]()
    plain_off, _ = run(model, OFF)
    off, _ = run(patched, OFF)
    stock, _ = run(patched, stock=True)
    assert torch.equal(off, stock)              # zero scale: exactly the stock sampler with the patch
    assert not torch.equal(off, plain_off)      # and the patch changed the result
    guided, logs = run(patched)
    plain_guided, plain_logs = run(model)
    assert not torch.equal(guided, stock)
    if patch != "perturbed_attention":          # a post-CFG function is not part of the guidance pass
        assert logs[0].losses[0] != plain_logs[0].losses[0]     # the patch acted inside the guidance pass too
    if calls:
        assert True in calls and False in calls  # called in the guidance pass (grad) and in normal steps


def test_runs_repeat_bit_for_bit_and_do_not_affect_the_plain_sampler(model):
    plain_before, _ = run(model, stock=True)
    first, _ = run(model)
    plain_between, _ = run(model, stock=True)
    second, _ = run(model)
    assert torch.equal(first, second)
    assert torch.equal(plain_before, plain_between)


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():     # isinstance on some of torch's deprecated objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_ten_runs_do_not_grow_memory(model):
    run(model)                                   # warm-up: kernels, caches
    tensors = live_tensors()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(10):
        run(model)
    assert live_tensors() == tensors
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 50 * 1024     # KiB: under 50 MB


def tiny_controlnet(seed: int = 6):
    """A ComfyUI ControlNet (comfy.cldm) of the tiny UNet's shape, built under inference mode as
    ComfyUI's loader builds one, so its weights are inference tensors too."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    config = {k: v for k, v in support.TINY_UNET.items()
              if k not in ("out_channels", "transformer_depth_output", "use_temporal_attention",
                           "use_temporal_resblock")}
    with torch.inference_mode():
        network = comfy.cldm.cldm.ControlNet(hint_channels=3, **config)
        support.initialise(network, seed)
    return comfy.controlnet.ControlNet(network, load_device=mm.get_torch_device())


def test_a_controlnet_on_the_positive_conditioning_runs_through_the_guidance_pass(model):
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3)).movedim(-1, 1)
    control = tiny_controlnet().copy().set_cond_hint(hint, 0.8)
    positive = support.random_conditioning(1, control=control, control_apply_to_uncond=False, **SUBJECTS)
    negative = support.random_conditioning(2)
    latent = torch.zeros(1, 4, 8, 8)
    guided, record = support.sample(model, "dpmpp_2m", GUIDED, positive, negative, latent)
    plain_guided, plain_record = support.sample(model, "dpmpp_2m", GUIDED, support.random_conditioning(1, **SUBJECTS),
                                                negative, latent)
    off, _ = support.sample(model, "dpmpp_2m", OFF, positive, negative, latent)
    stock, _ = support.sample(model, "dpmpp_2m", OFF, positive, negative, latent, stock=True)
    assert torch.equal(off, stock)
    assert record.logs[0].losses[0] != plain_record.logs[0].losses[0]     # the control acted in the guidance pass
    assert torch.isfinite(guided).all() and not torch.equal(guided, stock)
    assert all(p.is_inference() for p in control.control_model.parameters())


@pytest.mark.parametrize("conditioning_batch, latent_batch", [(2, 3), (3, 2)])
def test_latent_rows_meet_the_conditioning_rows_that_comfyui_pairs_them_with(model, conditioning_batch,
                                                                              latent_batch):
    """ComfyUI repeats or cuts a conditioning batch to the latent's (repeat_to_batch_size); the
    guidance pass must score each latent row against the same conditioning row as sampling does."""
    rows = torch.randn(conditioning_batch, 77, 64, generator=torch.Generator().manual_seed(1))
    negative = support.random_conditioning(2)
    latent = torch.zeros(latent_batch, 4, 8, 8)

    def peaks_with(conditioning, settings=GUIDED):
        out, record = support.sample(model, "dpmpp_2m", settings, [[conditioning, dict(SUBJECTS)]], negative, latent)
        return out, torch.tensor(record.logs[0].peaks[0])

    _, peaks = peaks_with(rows)
    for row in range(latent_batch):
        _, alone = peaks_with(rows[row % conditioning_batch].unsqueeze(0))   # one row, repeated to every latent row
        assert torch.allclose(peaks[row], alone[row], atol=1e-6)
    assert not torch.allclose(peaks[0], peaks[1])
    off, _ = peaks_with(rows, OFF)
    stock, _ = support.sample(model, "dpmpp_2m", OFF, [[rows, dict(SUBJECTS)]], negative, latent, stock=True)
    assert torch.equal(off, stock)
