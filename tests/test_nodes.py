"""The V3 nodes called as ComfyUI calls them, on real ComfyUI objects."""
import json

import pytest
import torch

import comfy.samplers
import folder_paths
import nodes
import support
from attend_and_excite.nodes import AttendExciteExtension
from attend_and_excite.nodes.ksampler import AttendExciteKSampler
from attend_and_excite.nodes.parameters import CATEGORY
from attend_and_excite.nodes.text_encode import AttendExciteTextEncode

GUIDANCE = dict(steps_to_alter=25, thresholds="0:1.0, 20:1.0", max_refinement=2, scale_factor=20.0, scale_start=1.0,
                scale_end=0.5, smoothing_kernel=3, smoothing_sigma=0.5, schedule_steps=50, token_indices="")


@pytest.fixture(scope="module")
def clip():
    return support.tiny_clip(seed=2)


def test_schemas_describe_every_node_and_input():
    import asyncio
    node_list = asyncio.run(AttendExciteExtension().get_node_list())
    assert {n.define_schema().node_id for n in node_list} == {"AttendExciteTextEncode", "AttendExciteKSampler",
                                                              "AttendExciteSampler"}
    for node in node_list:
        schema = node.define_schema()
        assert schema.category == CATEGORY and schema.description
        for item in schema.inputs:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"


def test_text_encode_equals_the_stock_encoder_and_carries_subjects(clip):
    with torch.inference_mode():
        ours = AttendExciteTextEncode.execute(clip, "a cat and a frog", "cat, frog").result[0]
        stock = nodes.CLIPTextEncode().encode(clip, "a cat and a frog")[0]
    assert len(ours) == len(stock) == 1
    assert torch.equal(ours[0][0], stock[0][0])
    assert torch.equal(ours[0][1]["pooled_output"], stock[0][1]["pooled_output"])
    assert ours[0][1]["attend_excite"] == {"subjects": [[2], [5]], "labels": ["cat", "frog"], "end_columns": [6]}


def test_text_encode_error_lists_the_tokens(clip):
    with pytest.raises(ValueError) as error:
        AttendExciteTextEncode.execute(clip, "a cat and a frog", "dog")
    assert "'dog' is not a word of the prompt" in str(error.value) and "5:frog" in str(error.value)


def test_validation_names_the_bad_field():
    assert AttendExciteKSampler.validate_inputs("0:0.05, 10:0.5") is True
    assert "cannot read" in AttendExciteKSampler.validate_inputs("0=0.05")
    assert "token_indices" in AttendExciteKSampler.validate_inputs("", "2,x")


def test_ksampler_node_zero_scale_equals_stock_and_logs(clip):
    model = support.tiny_sd15(seed=1, config=dict(support.TINY_UNET))
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with torch.inference_mode():
        positive = AttendExciteTextEncode.execute(clip, "a cat and a frog", "cat, frog").result[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        off = AttendExciteKSampler.execute(model, 3, 10, 6.0, "dpmpp_2m", "karras", positive, negative, latent, 1.0,
                                           **dict(GUIDANCE, scale_factor=0.0)).result
        stock = nodes.common_ksampler(model, 3, 10, 6.0, "dpmpp_2m", "karras", positive, negative, latent)[0]
        on = AttendExciteKSampler.execute(model, 3, 10, 6.0, "dpmpp_2m", "karras", positive, negative, latent, 1.0,
                                          **GUIDANCE).result
    assert torch.equal(off[0]["samples"], stock["samples"])
    assert not torch.equal(on[0]["samples"], stock["samples"])
    log = json.loads(on[1])
    assert log["subjects"] == ["cat", "frog"]
    assert [s["step"] for s in log["steps"]] == [0, 1, 2, 3, 4]          # 25 of 50 rescaled to 10 steps
    assert [s["refinement_iterations"] for s in log["steps"]] == [[2], [0], [0], [0], [2]]


def test_progress_bar_advances_per_step_as_the_stock_ksampler(clip):
    import comfy.utils
    model = support.tiny_sd15(seed=1)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        with torch.inference_mode():
            positive = AttendExciteTextEncode.execute(clip, "a cat and a frog", "cat, frog").result[0]
            AttendExciteKSampler.execute(model, 3, 5, 6.0, "euler", "normal", positive, positive, latent, 1.0,
                                         **GUIDANCE)
            ours, seen[:] = list(seen), []
            nodes.common_ksampler(model, 3, 5, 6.0, "euler", "normal", positive, positive, latent)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    for updates in (ours, seen):       # newer ComfyUI throttles the updates between first and last by time
        values = [value for value, total in updates]
        assert updates[0] == (1, 5) and updates[-1] == (5, 5) and values == sorted(set(values))


def test_conditioning_without_subjects_is_refused(clip):
    model = support.tiny_sd15(seed=1)
    with torch.inference_mode():
        plain = nodes.CLIPTextEncode().encode(clip, "a cat")[0]
        with pytest.raises(ValueError, match="carries no Attend-and-Excite subjects"):
            AttendExciteKSampler.execute(model, 0, 4, 5.0, "euler", "normal", plain, plain,
                                         {"samples": torch.zeros(1, 4, 8, 8)}, 1.0, **GUIDANCE)


def test_checkpoint_loaded_by_checkpoint_loader_under_inference_mode(mini_checkpoint):
    base, name = mini_checkpoint
    folder_paths.add_model_folder_path("checkpoints", str(base / "models" / "checkpoints"))
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    with torch.inference_mode():
        model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint(name)
        assert type(model.model.model_config).__name__ == "SD15"
        assert all(p.is_inference() for p in model.model.diffusion_model.parameters())
        positive = AttendExciteTextEncode.execute(clip, "a cat and a frog", "").result[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        result = AttendExciteKSampler.execute(model, 1, 4, 7.5, "euler", "normal", positive, negative, latent, 1.0,
                                              **dict(GUIDANCE, schedule_steps=4, steps_to_alter=2,
                                                     thresholds="0:1.0")).result
    steps = json.loads(result[1])["steps"]
    assert [s["step"] for s in steps] == [0, 1] and steps[0]["refinement_iterations"] == [2]
    assert steps[0]["losses"][0] != steps[0]["losses"][-1]
    assert torch.isfinite(result[0]["samples"]).all()
