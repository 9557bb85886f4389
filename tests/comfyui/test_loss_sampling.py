"""The successor losses (syngen, divide_and_bind, a_star) through real ComfyUI sampling, on a
small random-weight SD1.x model: both routes, every sampler at zero scale, per-row batches, the
log, refusals, and the modifiers from ComfyUI's own tokenizer."""
import functools
import json

import pytest
import torch

import comfy.sample
import comfy.samplers
import support
from attend_and_excite.nodes.core.losses import LOSSES
from attend_and_excite.nodes.core.record import AttentionRecord
from attend_and_excite.nodes.glue.sampler import attend_excite_sampler
from attend_and_excite.nodes.glue.text import subject_info

# Every loss of the table after the paper's own (whose sampling the other files test).
SUCCESSORS = tuple(name for name in LOSSES if name != "attend_and_excite")


@pytest.fixture(scope="module")
def model():
    return support.tiny_model(seed=1)


def paired_conditionings():
    return support.random_conditioning(1, **support.PAIRED_SUBJECTS), support.random_conditioning(2)


def run(model, sampler_name, settings, latent=None, positive=None, stock=False):
    pos, neg = paired_conditionings()
    latent = torch.zeros(1, 4, 8, 8) if latent is None else latent
    return support.sample(model, sampler_name, settings, positive or pos, neg, latent, stock=stock)


@functools.cache
def stock(sampler_name):
    return run(support.tiny_model(seed=1), sampler_name, None, stock=True)[0]


@pytest.mark.parametrize("loss", SUCCESSORS)
@pytest.mark.parametrize("sampler_name", comfy.samplers.KSampler.SAMPLERS)
def test_zero_scale_equals_the_stock_ksampler_with_every_loss(model, sampler_name, loss):
    out, record = run(model, sampler_name, support.forced(loss=loss, scale_factor=0.0, thresholds=None,
                                                          max_refinement=1))
    assert record.logs and record.loss == loss, "the guidance pass did not run"
    assert torch.equal(out, stock(sampler_name))


@pytest.mark.parametrize("loss", SUCCESSORS)
@pytest.mark.parametrize("sampler_name", comfy.samplers.KSampler.SAMPLERS)
def test_the_ksampler_node_at_zero_scale_equals_the_stock_ksampler_with_every_loss(model, sampler_name, loss):
    from attend_and_excite.nodes.ksampler import AttendExciteKSampler
    from support import default_inputs
    pos, neg = paired_conditionings()
    inputs = dict(default_inputs(), loss=loss, schedule_steps=6, steps_to_alter=3, scale_factor=0.0, max_refinement=1)
    with torch.inference_mode():
        result = AttendExciteKSampler.execute(model, 7, 6, 5.0, sampler_name, "normal", pos, neg,
                                              {"samples": torch.zeros(1, 4, 8, 8)}, 1.0, **inputs).result
    assert json.loads(result[4])["loss"] == loss and json.loads(result[4])["steps"]
    assert torch.equal(result[0]["samples"], stock(sampler_name))


@pytest.mark.parametrize("loss", SUCCESSORS)
def test_the_ksampler_node_runs_each_loss_and_its_log_names_the_loss_and_its_terms(model, loss):
    from attend_and_excite.nodes.ksampler import AttendExciteKSampler
    from support import default_inputs
    import nodes
    pos, neg = paired_conditionings()
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    inputs = dict(default_inputs(), loss=loss, schedule_steps=6, steps_to_alter=3)
    with torch.inference_mode():
        ours = AttendExciteKSampler.execute(model, 7, 6, 5.0, "euler", "normal", pos, neg, latent, 1.0, **inputs)
        zero = AttendExciteKSampler.execute(model, 7, 6, 5.0, "euler", "normal", pos, neg, latent, 1.0,
                                            **dict(inputs, scale_factor=0.0))
        plain = nodes.common_ksampler(model, 7, 6, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"]
    log = json.loads(ours.result[4])
    terms = {"syngen": {"positive", "negative"}, "divide_and_bind": {"variation", "binding"},
             "a_star": {"segregation", "retention"}}[loss]
    assert log["loss"] == loss and [s["step"] for s in log["steps"]] == [0, 1, 2]
    assert all(set(s["terms"]) == terms and len(s["terms"][name]) == len(s["losses"]) for s in log["steps"]
               for name in terms)
    assert torch.equal(zero.result[0]["samples"], plain)
    assert not torch.allclose(ours.result[0]["samples"], plain)


@pytest.mark.parametrize("loss", SUCCESSORS)
def test_batch_rows_are_guided_independently_with_every_loss(model, loss):
    settings = support.forced(loss=loss, thresholds=None)
    both, record = run(model, "euler", settings, latent=torch.zeros(2, 4, 8, 8))
    noise = comfy.sample.prepare_noise(torch.zeros(2, 4, 8, 8), 7)
    assert len(record.logs[0].losses[0]) == 2
    for row in range(2):
        pos, neg = paired_conditionings()
        with torch.inference_mode():
            sigmas = comfy.samplers.KSampler(model, steps=6, device="cpu", sampler="euler", scheduler="normal").sigmas
            alone = comfy.sample.sample_custom(model, noise[row:row + 1], 5.0,
                                               attend_excite_sampler("euler", settings, AttentionRecord()), sigmas,
                                               pos, neg, torch.zeros(1, 4, 8, 8), seed=7, disable_pbar=True)
        assert torch.allclose(both[row:row + 1], alone, atol=1e-4, rtol=1e-4)


def test_divide_and_bind_refines_to_its_own_thresholds_on_auto_and_the_others_never_refine(model):
    _, record = run(model, "euler", support.forced(loss="divide_and_bind", thresholds=None, max_refinement=2,
                                                   schedule_steps=50, steps_to_alter=25))
    # auto: steps 0, 10 and 20 of 50 on 6 sampled steps -> 0, (1.2 ->) 1 and (2.4 ->) 2; random maps reach no 0.2
    assert record.thresholds == {0: 0.05, 1: 0.2, 2: 0.3}
    assert [log.refinement_iterations for log in record.logs][1:] == [[2], [2]]
    for loss in ("syngen", "a_star"):
        _, record = run(model, "euler", support.forced(loss=loss))     # thresholds {0: 1.0, 2: 1.0} are not used
        assert record.thresholds == {} and all(log.refinement_iterations == [0] for log in record.logs)


def test_a_star_retention_starts_at_the_second_guided_step(model):
    _, record = run(model, "euler", support.forced(loss="a_star", thresholds=None))
    retention = [log.terms["retention"][0][0] for log in record.logs]
    assert retention[0] == 0.0 and all(0.5 <= r <= 1.0 for r in retention[1:])


def test_syngen_refuses_subjects_without_modifiers_and_says_how_to_give_them(model):
    pos, neg = support.conditionings()        # "a cat and a frog": nothing describes the nouns
    with pytest.raises(ValueError, match="'red circle, blue square'"):
        support.sample(model, "euler", support.forced(loss="syngen"), pos, neg, torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="unknown loss 'sdg'"):
        support.sample(model, "euler", support.forced(loss="sdg"), pos, neg, torch.zeros(1, 4, 8, 8))


def test_the_text_encoder_pairs_modifiers_with_their_nouns_on_comfyuis_tokenizer():
    clip = support.tiny_clip()
    tokenized = clip.tokenize("a red circle and a blue square, best quality, 35mm")
    automatic = subject_info(clip.tokenizer, tokenized, "")
    assert automatic["labels"] == ["circle", "square"] and automatic["modifier_labels"] == [["red"], ["blue"]]
    assert automatic["subjects"] == [[3], [7]] and automatic["modifiers"] == [[[2]], [[6]]]
    written = subject_info(clip.tokenizer, tokenized, "red circle, square")
    assert written["labels"] == ["circle", "square"] and written["modifiers"] == [[[2]], []]
    assert written["prompt_columns"][:8] == [1, 2, 3, 4, 5, 6, 7, 8]
