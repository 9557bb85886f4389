"""The guidance pass captured as a CUDA graph gives what the eager pass gives, falls back
where it must (the lean pass among them), and leaves nothing behind. Needs a CUDA GPU; elsewhere
these tests skip."""
import gc

import comfy.model_management
import comfy.sample
import comfy.samplers
import pytest
import torch

import comfy.ldm.modules.attention as attention
import support
from attend_and_excite.nodes.core.record import AttentionRecord
from attend_and_excite.nodes.glue.capture import EAGER_VARIABLE
from support import GRAPHS
from attend_and_excite.nodes.glue.sampler import attend_excite_sampler

pytestmark = pytest.mark.skipif(comfy.model_management.get_torch_device().type != "cuda",
                                reason="needs a CUDA GPU (the device check runs it)")
SIZE = 32     # latent 32 x 32: maps of 8 x 8 at latent/4


def model_of(dtype):
    with torch.inference_mode():
        return support.tiny_model(seed=5, config=dict(support.SD15_TOPOLOGY, dtype=dtype))


def sample(model, settings, batch=2, eager=False, monkeypatch=None, callback=None):
    """(samples, record) of euler with Attend-and-Excite, 6 steps, seed 7."""
    if eager:
        monkeypatch.setenv(EAGER_VARIABLE, "1")
    record = AttentionRecord()
    positive, negative = support.conditionings()
    latent = torch.zeros(batch, 4, SIZE, SIZE)
    try:
        with torch.inference_mode():
            sigmas = comfy.samplers.KSampler(model, steps=6, device="cpu", sampler="euler", scheduler="normal").sigmas
            out = comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, 7), 5.0,
                                             attend_excite_sampler("euler", settings, record), sigmas, positive,
                                             negative, latent, seed=7, callback=callback, disable_pbar=True)
    finally:
        if eager:
            monkeypatch.delenv(EAGER_VARIABLE)
    return out, record


def flat(values) -> torch.Tensor:
    """A latent, or a log's nested lists of uneven length, as one float64 vector."""
    if torch.is_tensor(values):
        return values.double().flatten()
    if isinstance(values, list):
        return torch.cat([flat(v) for v in values]) if values else torch.zeros(0, dtype=torch.float64)
    return torch.tensor([float(values)], dtype=torch.float64)


def relative_error(a, b) -> float:
    a, b = flat(a), flat(b)
    assert a.shape == b.shape
    return float((a - b).norm() / b.norm())


def errors_of(ours, record, theirs, their_record) -> dict:
    return {"latent": relative_error(ours, theirs),
            "losses": relative_error([log.losses for log in record.logs], [log.losses for log in their_record.logs]),
            "peaks": relative_error([log.peaks for log in record.logs], [log.peaks for log in their_record.logs])}


def split_thresholds(model, monkeypatch):
    """Settings whose step-0 threshold lies between the two rows' losses: one row refines, the other not."""
    _, probe = sample(model, support.forced(max_refinement=3), eager=True, monkeypatch=monkeypatch)
    low, high = sorted(probe.logs[0].losses[0])
    assert high - low > 1e-4, "the rows' losses are too close to split"
    return support.forced(thresholds={0: 1.0 - (low + high) / 2, 2: 1.0}, max_refinement=3)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float16, 1e-3)])
def test_the_captured_pass_equals_the_eager_pass(dtype, tolerance, monkeypatch):
    model = model_of(dtype)
    settings = split_thresholds(model, monkeypatch)
    captured, record = sample(model, settings)
    eager, eager_record = sample(model, settings, eager=True, monkeypatch=monkeypatch)
    assert record.guidance_pass == "CUDA graph"
    assert eager_record.guidance_pass == f"eager: {EAGER_VARIABLE} is set"
    iterations = [log.refinement_iterations for log in record.logs]
    assert iterations == [log.refinement_iterations for log in eager_record.logs]
    assert iterations[0][0] != iterations[0][1]          # the rows refined a different number of times
    errors = errors_of(captured, record, eager, eager_record)
    again, again_record = sample(model, settings, eager=True, monkeypatch=monkeypatch)
    floor = errors_of(again, again_record, eager, eager_record)     # GPU kernels are not bit-reproducible
    print(f"{dtype}: captured against eager, relative errors {errors}; eager against eager {floor}; "
          f"refinement iterations {iterations}")
    assert max(errors.values()) <= tolerance
    assert not torch.equal(captured, sample(model, support.forced(scale_factor=0.0))[0])   # guidance acted


def test_a_patch_in_the_pass_forces_the_eager_pass_with_the_same_result(monkeypatch):
    model = model_of(torch.float32).clone()
    model.set_model_attn2_replace(lambda q, k, v, extra: attention.optimized_attention(q, k * 1.5, v, extra["n_heads"]),
                                  "input", 1)
    settings = support.forced(max_refinement=2)
    out, record = sample(model, settings)
    eager, eager_record = sample(model, settings, eager=True, monkeypatch=monkeypatch)
    assert record.guidance_pass == "eager: the model carries attention replacements (attn2)"
    errors = errors_of(out, record, eager, eager_record)
    print(f"patched model, eager (patch) against eager (variable): relative errors {errors}")
    assert max(errors.values()) <= 1e-5


def test_the_next_call_replays_the_kept_graph_and_a_lora_captures_anew(monkeypatch):
    model = model_of(torch.float32)
    settings = support.forced(max_refinement=2)
    _, record = sample(model, settings)
    again, again_record = sample(model, settings)
    eager, eager_record = sample(model, settings, eager=True, monkeypatch=monkeypatch)
    assert record.guidance_pass == "CUDA graph"
    assert again_record.guidance_pass == "CUDA graph, kept from the previous run"
    replayed = errors_of(again, again_record, eager, eager_record)
    lora = model.clone()
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    weight = model.model.state_dict()[key]
    lora.add_patches({key: (torch.randn(weight.shape, generator=torch.Generator().manual_seed(9)).to(weight),)}, 0.5)
    patched, patched_record = sample(lora, settings)
    patched_eager, patched_eager_record = sample(lora, settings, eager=True, monkeypatch=monkeypatch)
    recaptured = errors_of(patched, patched_record, patched_eager, patched_eager_record)
    print(f"kept graph against eager: {replayed}; LoRA, captured anew, against eager: {recaptured}")
    assert patched_record.guidance_pass == "CUDA graph"
    assert max(replayed.values()) <= 1e-5 and max(recaptured.values()) <= 1e-5
    comfy.model_management.unload_all_models()
    assert len(GRAPHS) == 0


def test_an_interrupt_between_replays_leaves_nothing_behind():
    model = model_of(torch.float32)
    settings = support.forced(thresholds={0: 1.0, 3: 1.0}, steps_to_alter=3, max_refinement=3)
    clean, _ = sample(model, settings)
    allocated = settled_memory()

    def interrupt_after_step_1(step, *_):
        if step == 1:
            comfy.model_management.interrupt_current_processing(True)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(model, settings, callback=interrupt_after_step_1)     # step 3's refinement sees it
    comfy.model_management.interrupt_current_processing(False)
    assert all(p.is_inference() for p in model.model.diffusion_model.parameters())   # the weights put back
    assert not model.model_options["transformer_options"]
    assert settled_memory() == allocated      # nothing more than the kept graph and its pool
    again, _ = sample(model, settings)
    assert relative_error(again, clean) <= 1e-5
    assert settled_memory() == allocated
    GRAPHS.clear()
    assert settled_memory() < allocated       # freeing the kept graph frees its pool


def settled_memory() -> int:
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def test_the_lean_pass_runs_eagerly_gives_the_fast_result_and_holds_less(monkeypatch):
    model = model_of(torch.float32)
    peaks, found = {}, {}
    for memory in ("fast", "lean"):
        chosen = support.forced(max_refinement=2, guidance_memory=memory)
        sample(model, chosen, eager=True, monkeypatch=monkeypatch)     # loads the model, builds the kernels
        start = settled_memory()
        torch.cuda.reset_peak_memory_stats()
        found[memory] = sample(model, chosen, eager=True, monkeypatch=monkeypatch)
        peaks[memory] = torch.cuda.max_memory_allocated() - start
    _, lean_record = sample(model, support.forced(max_refinement=2, guidance_memory="lean"))
    errors = errors_of(*found["lean"], *found["fast"])
    print(f"lean against fast (both eager): relative errors {errors}; peak over the loaded model: {peaks}")
    assert lean_record.guidance_pass == "eager: guidance_memory is lean (a captured graph would hold the pass's " \
                                       "memory between runs, which lean spares)"
    assert found["lean"][1].guidance_memory == "lean"
    assert max(errors.values()) <= 1e-5
    assert peaks["lean"] < peaks["fast"]
    assert not torch.equal(found["lean"][0], sample(model, support.forced(scale_factor=0.0))[0])
