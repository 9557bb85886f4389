"""The attention boost (nodes/boost.py over core/boost.py): the document's alpha/beta rule
as a model patch, on ComfyUI's own samplers."""
import pytest
import torch

import comfy.samplers

import support
from support import SUBJECTS, conditionings, default_inputs, tiny_model

from attend_and_excite.nodes.boost import AttendExciteAttentionBoost
from attend_and_excite.nodes.core.boost import excited
from attend_and_excite.nodes.core.settings import BoostSettings
from attend_and_excite.nodes.glue.boost import AttentionBoost


def boost(model, **changes):
    inputs = {**default_inputs(AttendExciteAttentionBoost), **changes}
    return AttendExciteAttentionBoost.execute(model, **inputs).result[0]


def hand_attention(q, k, v, heads, weights, renormalise):
    """softmax(q k^T / sqrt(d)) with each column's probability times its weight, rows
    renormalised or not, times v: written out directly."""
    b, n, inner = q.shape
    d = inner // heads
    out = torch.zeros(b, n, inner, dtype=torch.float64)
    for row in range(b):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            logits = q[row, :, cols].double() @ k[row, :, cols].double().T / d ** 0.5
            probs = torch.softmax(logits, dim=-1) * weights[row].double()
            if renormalise:
                probs = probs / probs.sum(dim=-1, keepdim=True)
            out[row, :, cols] = probs @ v[row, :, cols].double()
    return out


@pytest.mark.parametrize("backend", ["attention_basic", "attention_split", "attention_sub_quad",
                                     "attention_pytorch"])
@pytest.mark.parametrize("renormalise", [False, True])
def test_both_variants_match_a_hand_computed_attention(renormalise, backend, monkeypatch):
    """core.boost's formula, and the patch on each of ComfyUI's attention backends (the
    renormalised rule goes to the backend as a mask)."""
    import comfy.ldm.modules.attention as attention
    monkeypatch.setattr(attention, "optimized_attention", getattr(attention, backend))
    monkeypatch.setattr(attention, "optimized_attention_masked", getattr(attention, backend))
    generator = torch.Generator().manual_seed(0)
    heads, d = 2, 8
    q = torch.randn(3, 5, heads * d, generator=generator)
    k, v = (torch.randn(3, 77, heads * d, generator=generator) for _ in range(2))
    mask = torch.zeros(3, 77, dtype=torch.bool)
    mask[0, [2, 5]] = True
    mask[1, [3]] = True
    mask[2, [2, 5]] = True
    weights = torch.where(mask, 1.5, 0.5)
    plain = hand_attention(q, k, v, heads, torch.ones(3, 77), False).float()
    out = excited(plain, q, k, v, heads, mask, 1.5, 0.5, renormalise)
    assert torch.allclose(out.double(), hand_attention(q, k, v, heads, weights, renormalise), atol=1e-5)
    # the patch's own renormalised path (a log-bias mask to ComfyUI's attention) says the same
    table = {"columns": {"p": [2, 5]}}
    boost_patch = AttentionBoost(BoostSettings(renormalise=renormalise))
    patched = boost_patch.attn2(None)(q[:2], k[:2], v[:2], {"n_heads": heads, boost_patch.key: table,
                                                           "uuids": ["p", "n"]})
    weights = torch.ones(2, 77)
    weights[0] = torch.where(mask[0], 1.5, 0.5)
    assert torch.allclose(patched.double(), hand_attention(q[:2], k[:2], v[:2], heads, weights, renormalise),
                          atol=1e-5)
    assert torch.allclose(patched[1], plain[1], atol=1e-6)      # the negative chunk's row: as without it


def run(model, positive, negative, sampler_name="euler", steps=4, cfg=5.0, shape=(2, 4, 16, 16)):
    latent = torch.zeros(shape)
    return support.sample(model, sampler_name, None, positive, negative, latent, steps=steps, cfg=cfg,
                          stock=True)[0]


@pytest.fixture(scope="module")
def model():
    return tiny_model(3)


@pytest.mark.parametrize("sampler_name", comfy.samplers.KSampler.SAMPLERS)
def test_alpha_and_beta_of_one_give_the_stock_sampler_bit_for_bit(model, sampler_name):
    positive, negative = conditionings()
    small = (1, 4, 8, 8)
    stock = run(model, positive, negative, sampler_name, 3, shape=small)
    for renormalise in (False, True):
        neutral = run(boost(model, alpha=1.0, beta=1.0, renormalise=renormalise), positive, negative,
                      sampler_name, 3, shape=small)
        assert torch.equal(neutral, stock), (sampler_name, renormalise)


def test_only_rows_of_the_conditioning_with_subjects_change(model):
    """The boost's patch sees which batch chunk comes from which conditioning: with subjects
    on the negative prompt only, nothing changes (it acts on the positive prompt's)."""
    positive, negative = conditionings()
    stock = run(model, positive, negative)
    boosted = boost(model)
    assert not torch.equal(run(boosted, positive, negative), stock)
    plain_positive = support.random_conditioning(1)
    negative_with_subjects = support.random_conditioning(2, **SUBJECTS)
    assert torch.equal(run(boosted, plain_positive, negative_with_subjects), run(model, plain_positive,
                                                                                 negative_with_subjects))
    # cfg 1 evaluates the positive prompt alone: the boost still reaches it
    assert not torch.equal(run(boosted, positive, negative, cfg=1.0), run(model, positive, negative, cfg=1.0))


def test_the_users_model_is_untouched_and_existing_patches_are_wrapped(model):
    calls = []

    def existing(q, k, v, extra_options):
        calls.append(extra_options["block"])
        import comfy.ldm.modules.attention as attention
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])
    patched = model.clone()
    patched.set_model_attn2_replace(existing, "input", 1, 0)
    before = dict(patched.model_options["transformer_options"]["patches_replace"]["attn2"])
    positive, negative = conditionings()
    boosted = boost(patched)
    run(boosted, positive, negative)
    assert calls, "the attn2 patch already on the model was dropped"
    assert patched.model_options["transformer_options"]["patches_replace"]["attn2"] == before
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    assert not model.wrappers and not patched.wrappers


def test_an_interrupted_run_leaves_the_model_as_it_was(model):
    import comfy.model_management
    import comfy.sample
    positive, negative = conditionings()
    boosted = boost(model)
    options_before = repr(boosted.model_options)
    latent = torch.zeros(1, 4, 16, 16)

    def stop(step, *_):
        if step == 1:
            raise comfy.model_management.InterruptProcessingException()
    with pytest.raises(comfy.model_management.InterruptProcessingException), torch.inference_mode():
        comfy.sample.sample(boosted, comfy.sample.prepare_noise(latent, 0), 4, 5.0, "euler", "normal", positive,
                            negative, latent, callback=stop, disable_pbar=True)
    assert repr(boosted.model_options) == options_before
    assert "patches_replace" not in model.model_options.get("transformer_options", {}) and not model.wrappers
    stock = run(model, positive, negative)
    assert torch.equal(run(model, positive, negative), stock)


def test_start_and_end_percent_limit_the_steps(model):
    positive, negative = conditionings()
    stock = run(model, positive, negative)
    assert torch.equal(run(boost(model, start_percent=1.0, end_percent=1.0), positive, negative), stock)
    early = run(boost(model, end_percent=0.3), positive, negative)
    assert not torch.equal(early, stock) and not torch.equal(early, run(boost(model), positive, negative))


def test_bad_inputs_are_refused_with_what_to_change(model):
    assert "token_indices" in AttendExciteAttentionBoost.validate_inputs(1.5, 0.5, 0.0, 1.0, "two")
    assert "swap" in AttendExciteAttentionBoost.validate_inputs(1.5, 0.5, 0.8, 0.2, "")
    assert AttendExciteAttentionBoost.validate_inputs(1.5, 0.5, 0.0, 1.0, "2,5") is True
    positive, negative = conditionings()
    with pytest.raises(ValueError, match="outside the conditioning"):
        run(boost(model, token_indices="80"), positive, negative)
    # nothing of the failed run stays on the model
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


def test_composes_with_the_attend_and_excite_sampler_on_the_same_model(model):
    positive, negative = conditionings()
    latent = torch.zeros(2, 4, 16, 16)
    settings = support.forced()
    guided, record = support.sample(model, "euler", settings, positive, negative, latent)
    both, both_record = support.sample(boost(model), "euler", settings, positive, negative, latent)
    boosted_only = run(boost(model), positive, negative, steps=6)
    assert torch.isfinite(both).all()
    assert not torch.equal(both, guided) and not torch.equal(both, boosted_only)
    assert len(both_record.maps) == len(record.maps)          # the guided steps all ran, on the boosted model
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
