"""The captured guidance pass kept from one sampling call to the next: replayed only while
nothing it reads has changed, freed when ComfyUI unloads or re-patches the model.

Capturing needs a CUDA GPU (tests/gpu replays real graphs). Here, inside real sampling calls
on ComfyUI's real model patcher and model management, a stand-in takes the captured pass's
place: kept like it, and, when a later call reuses it, it runs the first call's pass (that
call's conditioning copies, recorder and options) as a replay would. A stale reuse would show
as a result that differs from a fresh run's."""
import pytest
import torch

import comfy.model_management
import support
from attend_and_excite.nodes.core.excite import Evaluation
from attend_and_excite.nodes.glue import guidance
from attend_and_excite.nodes.glue.capture import replay_key, same_conditioning
from support import GRAPHS
from test_robustness import GUIDED, with_lora

FRESH, KEPT = "CUDA graph", "CUDA graph, kept from the previous run"


class KeptEagerly:
    """In place of CapturedPass: ready after its first call; `fail` makes its next call run out of memory."""
    made = []

    def __init__(self, forward):
        self.forward, self.ready, self.fail = forward, False, False
        KeptEagerly.made.append(self)

    def __call__(self, x, sigma):
        if self.fail:
            raise torch.OutOfMemoryError("planted")
        leaf = x.detach().clone().requires_grad_(True)
        value, peaks, maps = self.forward(leaf, sigma)
        self.ready = True
        return Evaluation.of(leaf, value.loss, peaks, value.indicator, value.terms), maps.detach()


@pytest.fixture
def passes(monkeypatch):
    """The pass is 'captured' on the CPU; the passes made, in order."""
    monkeypatch.setattr(guidance, "capture_blockers", lambda *args: [])
    monkeypatch.setattr(guidance, "CapturedPass", KeptEagerly)
    KeptEagerly.made.clear()
    GRAPHS.clear()
    yield KeptEagerly.made
    GRAPHS.clear()


@pytest.fixture
def model():
    with torch.inference_mode():
        return support.tiny_model(seed=5)


def run(model, positive=None, latent=None, settings=GUIDED):
    positive = positive if positive is not None else support.conditionings()[0]
    latent = latent if latent is not None else torch.zeros(1, 4, 8, 8)
    return support.sample(model, "euler", settings, positive, support.conditionings()[1], latent)


def test_the_same_inputs_reuse_the_kept_pass_with_the_same_result(model, passes):
    first, first_record = run(model)
    assert first_record.guidance_pass == FRESH and len(GRAPHS) == 1
    again, record = run(model)           # a new conditioning of the same values, as a re-queued prompt
    assert record.guidance_pass == KEPT and len(passes) == 1
    assert torch.equal(again, first)
    assert [log.losses for log in record.logs] == [log.losses for log in first_record.logs]


def test_a_lora_misses_and_loading_it_frees_the_kept_pass(model, passes):
    plain, _ = run(model)
    lora = with_lora(model)
    comfy.model_management.load_models_gpu([lora])   # ComfyUI swaps the patched clone in
    assert len(GRAPHS) == 0
    patched, record = run(lora)
    assert record.guidance_pass == FRESH and len(passes) == 2
    GRAPHS.clear()
    fresh, _ = run(lora)
    assert torch.equal(patched, fresh) and not torch.equal(patched, plain)


def test_unloading_the_model_frees_the_kept_pass(model, passes):
    run(model)
    assert len(GRAPHS) == 1
    comfy.model_management.unload_all_models()
    assert len(GRAPHS) == 0
    _, record = run(model)
    assert record.guidance_pass == FRESH and len(passes) == 2


def other_prompt():
    return support.random_conditioning(3, **support.SUBJECTS)


def other_subjects():
    positive, _ = support.conditionings()
    positive[0][1]["attend_excite"] = dict(positive[0][1]["attend_excite"], subjects=[[2], [4]])
    return positive


def other_area():
    positive, _ = support.conditionings()
    positive[0][1]["strength"] = 0.5
    return positive


@pytest.mark.parametrize("change", ["prompt", "subjects", "strength", "latent size", "batch", "map level"])
def test_each_other_input_misses(model, passes, change):
    run(model)
    positive = {"prompt": other_prompt, "subjects": other_subjects, "strength": other_area}.get(change, lambda: None)()
    latent = {"latent size": torch.zeros(1, 4, 16, 16), "batch": torch.zeros(2, 4, 8, 8)}.get(change)
    settings = support.forced(thresholds={0: 1.0}, map_level=1) if change == "map level" else GUIDED
    changed, record = run(model, positive, latent, settings)
    assert record.guidance_pass == FRESH and len(passes) == 2
    GRAPHS.clear()
    fresh, _ = run(model, positive, latent, settings)
    assert torch.equal(changed, fresh)


def test_a_run_that_cannot_be_captured_frees_the_kept_pass(model, passes, monkeypatch):
    run(model)
    monkeypatch.setattr(guidance, "capture_blockers", lambda *args: ["the model is not fully loaded on the GPU"])
    _, record = run(model)
    assert record.guidance_pass == "eager: the model is not fully loaded on the GPU" and len(GRAPHS) == 0


def test_out_of_memory_frees_the_kept_pass(model, passes):
    run(model)
    passes[0].fail = True
    with pytest.raises(torch.OutOfMemoryError, match="ran out of memory in its guidance pass"):
        run(model)
    assert len(GRAPHS) == 0


def test_a_weight_changed_in_place_changes_the_key(model):
    """Outside ComfyUI's inference mode weights track versions: an in-place change is seen."""
    unet = model.model.diffusion_model
    with torch.no_grad():
        normal = torch.nn.Linear(4, 4)
    x = torch.zeros(1, 4, 8, 8)
    before = replay_key(x, model.model, [unet, normal], ())
    with torch.no_grad():
        normal.weight.mul_(2.0)
    assert replay_key(x, model.model, [unet, normal], ()) != before
    assert replay_key(x, model.model, [unet], ()) == replay_key(x, model.model, [unet], ())


def test_conditionings_compare_by_value():
    a, b = support.conditionings()[0][0], support.conditionings()[0][0]
    entry = lambda cond: {"model_conds": {"c_crossattn": cond[0]}, "uuid": object(), **cond[1]}  # noqa: E731
    assert same_conditioning(entry(a), entry(b))
    b[0][0, 0, 0] += 1.0
    assert not same_conditioning(entry(a), entry(b))
    assert not same_conditioning(entry(a), {**entry(a), "strength": 0.5})
