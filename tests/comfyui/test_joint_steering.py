"""The gradient-free modes on joint attention (nodes/glue/boost.py): the Attention Boost's subject
weights and the Attention Temperature (after TACA) act on the image queries' logits over the text keys
only, through the blocks the family's maps come from; neutral, they are the stock sampler bit for bit."""
import functools
import types

import pytest
import torch

import comfy.ldm.modules.attention as attention
import comfy.samplers
import support
import test_mmdit
import test_modern_families
import tiny_families
from attend_and_excite.nodes.boost import AttendExciteAttentionBoost, AttendExciteAttentionTemperature
from attend_and_excite.nodes.glue.boost import SteeredKernel

TEXT, IMAGE, HEADS, D = 5, 12, 2, 8


def written_out(q, k, v, text, bias, temperature, masked_column=None, scaled=(slice(None), slice(None))):
    """softmax over the joint sequence with the image queries' logits over the keys `scaled` picks times
    `temperature` and `bias` added to their text logits (a masked column at -inf for every query), times v,
    in float64, (B, N, H*D)."""
    logits = q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5      # (B, H, N, S)
    image = slice(text, None)
    logits[:, :, image][..., scaled[1]] *= temperature
    logits[:, :, image, :text] += bias.double()[:, None, None, :]
    if masked_column is not None:
        logits[..., masked_column] = float("-inf")
    out = torch.softmax(logits, dim=-1) @ v.double()
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


@pytest.mark.parametrize("with_mask", [False, True])
def test_only_the_image_queries_text_logits_change(with_mask):
    """Against the softmax written out: the temperature scales the image queries' text logits, not their
    image logits (nor the text queries'), and an attention mask of the call still applies."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, HEADS, TEXT + IMAGE, D, generator=generator) for _ in range(3))
    bias = torch.randn(2, TEXT, generator=generator)
    mask = None
    if with_mask:                         # a padding column of the text, as Qwen-Image's mask gives it
        mask = torch.ones(2, 1, 1, TEXT + IMAGE, dtype=torch.bool)
        mask[..., 1] = False
    ours = SteeredKernel(attention.attention_pytorch, TEXT, bias, 1.3)(q, k, v, HEADS, skip_reshape=True,
                                                                       mask=mask).double()
    column = 1 if with_mask else None
    assert torch.allclose(ours, written_out(q, k, v, TEXT, bias, 1.3, column, (None, slice(None, TEXT))), atol=1e-5)
    assert not torch.allclose(ours, written_out(q, k, v, TEXT, bias, 1.3, column, (None, slice(TEXT, None))),
                              atol=1e-3)     # the temperature on the image-to-image logits instead


MODELS = ["flux", "sd3"] + [n for n in ("z-image", "qwen-image", "flux.2", "chroma")]


@functools.cache
def setup(name: str):
    """(model, run(model, sampler_name) -> latent): a joint family's tiny model and its stock KSampler run."""
    if name in ("flux", "sd3"):
        mmdit = test_mmdit.model_of(name)
        return mmdit.model, lambda model, sampler="euler": test_mmdit.run(
            types.SimpleNamespace(name=name, model=model, flux=mmdit.flux), sampler, stock=True)[0]
    return tiny_families.tiny_model(name), lambda model, sampler="euler": test_modern_families.run(
        name, sampler, stock=True, model=model, small=True)[0]


def boosted(model, **changes):
    inputs = {**support.default_inputs(AttendExciteAttentionBoost), **changes}
    return AttendExciteAttentionBoost.execute(model, **inputs).result[0]


def heated(model, temperature=1.2, start_percent=0.0, end_percent=1.0):
    return AttendExciteAttentionTemperature.execute(model, temperature, start_percent, end_percent).result[0]


@pytest.mark.parametrize("sampler_name", comfy.samplers.KSampler.SAMPLERS)
@pytest.mark.parametrize("name", ["flux", "z-image"])
def test_neutral_settings_are_the_stock_sampler_bit_for_bit(name, sampler_name):
    model, run = setup(name)
    stock = run(model, sampler_name)
    assert torch.equal(run(boosted(model, alpha=1.0, beta=1.0), sampler_name), stock)
    assert torch.equal(run(heated(model, temperature=1.0), sampler_name), stock)


@pytest.mark.parametrize("name", MODELS)
def test_each_mode_changes_the_picture_only_in_its_step_range_and_leaves_the_model(name):
    model, run = setup(name)
    before = repr(model.model_options)
    stock = run(model)
    assert not torch.equal(run(boosted(model)), stock) and not torch.equal(run(heated(model)), stock)
    assert torch.equal(run(heated(model, start_percent=1.0, end_percent=1.0)), stock)
    assert repr(model.model_options) == before


def test_the_temperature_composes_with_the_boost_and_the_attend_and_excite_sampler():
    model, run = setup("flux")
    both = heated(boosted(model))
    assert not torch.equal(run(both), run(boosted(model))) and not torch.equal(run(both), run(heated(model)))
    positive, negative = test_mmdit.conds(test_mmdit.model_of("flux"))
    guided, record = support.sample(both, "euler", support.forced(), positive, negative, torch.zeros(1, 16, 16, 12),
                                    cfg=1.0)
    assert torch.isfinite(guided).all() and [log.step for log in record.logs] == [0, 1, 2]


def test_a_temperature_on_a_unet_is_refused_with_what_to_use():
    with torch.inference_mode():
        unet = support.tiny_model(seed=3)
    with pytest.raises(ValueError, match="on SD1.x, SD2.x and SDXL use the Attention Boost"):
        heated(unet)
