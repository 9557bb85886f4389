"""Whether the guidance pass may be a CUDA graph, and why not, from the model options that
ComfyUI really builds (the capture itself runs on a GPU only: tests/gpu)."""
import dataclasses

import pytest
import torch

import comfy.model_management
import support
from attend_and_excite.nodes.boost import AttendExciteAttentionBoost
from attend_and_excite.nodes.glue.capture import EAGER_VARIABLE, capture_blockers
from attend_and_excite.nodes.glue.recorder import blocks_at_level, modules_through
from test_robustness import GUIDED, with_attn2_replace, with_lora, with_pag, with_wrapper

ON_CPU = "the model runs on cpu, not on a CUDA GPU"


@pytest.fixture(scope="module")
def model():
    with torch.inference_mode():
        return support.tiny_model(seed=5)


def reasons_of(record) -> list[str]:
    assert record.guidance_pass.startswith("eager: ")
    return record.guidance_pass.removeprefix("eager: ").split("; ")


@pytest.mark.parametrize("patch, reason", [
    ("none", None),
    ("lora", None),                       # weights patched before sampling: the same at every step
    ("perturbed_attention", None),        # a post-CFG function: not part of the guidance pass
    ("model_function_wrapper", "a model function wrapper is set (another node patches the model call)"),
    ("attn2_replace", "the model carries attention replacements (attn2)"),
    ("boost", "the model carries attention replacements (attn2); the model carries calc_cond_batch wrappers"),
])
def test_a_run_says_why_its_guidance_pass_is_eager(model, patch, reason):
    patched = {"none": lambda: model, "lora": lambda: with_lora(model), "perturbed_attention": lambda: with_pag(model),
               "model_function_wrapper": lambda: with_wrapper(model, []),
               "attn2_replace": lambda: with_attn2_replace(model, []),
               "boost": lambda: AttendExciteAttentionBoost.execute(
                   model, **support.default_inputs(AttendExciteAttentionBoost)).result[0]}[patch]()
    positive, negative = support.conditionings()
    _, record = support.sample(patched, "euler", GUIDED, positive, negative, torch.zeros(1, 4, 8, 8))
    assert reasons_of(record) == [ON_CPU] + ([] if reason is None else reason.split("; "))


def test_the_eager_variable_is_a_reason(model, monkeypatch):
    monkeypatch.setenv(EAGER_VARIABLE, "1")
    positive, negative = support.conditionings()
    _, record = support.sample(model, "euler", GUIDED, positive, negative, torch.zeros(1, 4, 8, 8))
    assert reasons_of(record) == [ON_CPU, f"{EAGER_VARIABLE} is set"]


def test_the_lean_pass_is_a_reason(model):
    positive, negative = support.conditionings()
    _, record = support.sample(model, "euler", dataclasses.replace(GUIDED, guidance_memory="lean"), positive, negative,
                               torch.zeros(1, 4, 8, 8))
    assert reasons_of(record) == [ON_CPU, "guidance_memory is lean (a captured graph would hold the pass's memory "
                                          "between runs, which lean spares)"]


@pytest.mark.parametrize("key, reason", [("control", "a ControlNet or T2I adapter"), ("hooks", "conditioning hooks"),
                                         ("gligen", "GLIGEN boxes"), ("timestep_start", "a timestep range")])
def test_conditioning_that_acts_per_step_is_a_reason(model, key, reason):
    modules = modules_through(model.model.diffusion_model, blocks_at_level(model.model.diffusion_model, 2)[-1])
    found = capture_blockers(torch.zeros(1), model.model, modules, {key: None, "timestep_end": 0.0},
                             model.model_options)
    assert found == [ON_CPU, f"the positive conditioning carries {reason}"] + \
        ([] if key == "timestep_start" else ["the positive conditioning carries a timestep range"])


def test_a_partially_loaded_model_is_a_reason():
    with torch.inference_mode():
        partial = support.tiny_model(seed=5)
    partial.load(comfy.model_management.get_torch_device(), lowvram_model_memory=1)   # ComfyUI's low-VRAM load
    try:
        unet = partial.model.diffusion_model
        modules = modules_through(unet, blocks_at_level(unet, 2)[-1])
        assert "the model is not fully loaded on the GPU (low-VRAM or partial loading moves weights at every call)" \
            in capture_blockers(torch.zeros(1), partial.model, modules, {}, partial.model_options)
    finally:
        partial.detach()
