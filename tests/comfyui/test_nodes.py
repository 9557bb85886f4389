"""The V3 nodes called as ComfyUI calls them, on real ComfyUI objects."""
import json
import pathlib

import pytest
import torch

import comfy.sample
import comfy.samplers
import folder_paths
import nodes
import support
from attend_and_excite.nodes.extension import AttendExciteExtension
from attend_and_excite.nodes.heatmaps import AttendExciteHeatmapOverlay, AttendExciteHeatmaps
from attend_and_excite.nodes.ksampler import AttendExciteKSampler
from attend_and_excite.nodes.parameters import CATEGORY, settings_from
from support import default_inputs
from attend_and_excite.nodes.sampler import AttendExciteSampler
from attend_and_excite.nodes.text_encode import AttendExciteTextEncode

DOCS = pathlib.Path(support.REPO) / "js" / "docs"
GUIDANCE = dict(default_inputs(), thresholds="0:1.0, 20:1.0", max_refinement=2)


def named(node, output) -> dict:
    """A node's results by output name."""
    names = [o.display_name or o.io_type for o in node.define_schema().outputs]
    return dict(zip(names, output.result))


@pytest.fixture(scope="module")
def clip():
    return support.tiny_clip(seed=2)


@pytest.fixture(scope="module")
def cat_and_frog(clip):
    """(positive, negative): 'a cat and a frog' with subjects cat and frog, and an empty prompt."""
    with torch.inference_mode():
        positive = AttendExciteTextEncode.execute(clip, "a cat and a frog", "cat, frog").result[0]
        return positive, nodes.CLIPTextEncode().encode(clip, "")[0]


def test_schemas_describe_every_node_and_input():
    import asyncio
    node_list = asyncio.run(AttendExciteExtension().get_node_list())
    assert {n.define_schema().node_id for n in node_list} == {
        "AttendExciteTextEncode", "AttendExciteKSampler", "AttendExciteSampler", "AttendExciteHeatmaps",
        "AttendExciteHeatmapOverlay", "AttendExciteAttentionBoost", "AttendExciteAttentionTemperature",
        "AttendExciteDemoModelLoader"}
    for node in node_list:
        schema = node.define_schema()
        assert schema.category == CATEGORY and schema.description
        help_page = DOCS / f"{schema.node_id}.md"
        assert help_page.is_file(), f"{schema.node_id} has no help page"
        for item in schema.inputs:
            assert f"`{item.id}`" in help_page.read_text(), f"{help_page.name} does not explain {item.id}"
        for item in schema.inputs:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"


def test_text_encode_equals_the_stock_encoder_and_carries_subjects(clip):
    with torch.inference_mode():
        ours = AttendExciteTextEncode.execute(clip, "a cat and a frog", "cat, frog").result[0]
        stock = nodes.CLIPTextEncode().encode(clip, "a cat and a frog")[0]
    assert len(ours) == len(stock) == 1
    assert torch.equal(ours[0][0], stock[0][0])
    assert torch.equal(ours[0][1]["pooled_output"], stock[0][1]["pooled_output"])
    assert ours[0][1]["attend_excite"] == {"subjects": [[2], [5]], "labels": ["cat", "frog"], "modifiers": [[], []],
                                           "modifier_labels": [[], []], "prompt_columns": [1, 2, 3, 4, 5],
                                           "end_columns": [6]}


def test_text_encode_error_lists_the_tokens(clip):
    with pytest.raises(ValueError) as error:
        AttendExciteTextEncode.execute(clip, "a cat and a frog", "dog")
    assert "'dog' is not a word of the prompt" in str(error.value) and "5:frog" in str(error.value)


def test_a_new_nodes_inputs_are_the_core_defaults():
    """The schemas take their defaults from core.settings, so a new node runs the paper's settings."""
    import dataclasses
    from attend_and_excite.nodes.core.settings import DEFAULTS
    new = settings_from(**default_inputs())
    # thresholds on auto: the loss's own, for the default loss the paper's
    assert new == dataclasses.replace(DEFAULTS, thresholds=None)
    assert new.refinement_thresholds() == DEFAULTS.thresholds == DEFAULTS.refinement_thresholds()
    for node in (AttendExciteKSampler, AttendExciteSampler):
        inputs = {i.id: getattr(i, "default", None) for i in node.define_schema().inputs}
        assert {k: inputs[k] for k in default_inputs()} == default_inputs()


def test_validation_names_the_bad_field():
    assert AttendExciteKSampler.validate_inputs("0:0.05, 10:0.5") is True
    assert "cannot read" in AttendExciteKSampler.validate_inputs("0=0.05")
    assert "token_indices" in AttendExciteKSampler.validate_inputs("", "2,x")


def test_ksampler_node_zero_scale_equals_stock_and_logs(cat_and_frog):
    model = support.tiny_model(seed=1, config=dict(support.TINY_UNET))
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    positive, negative = cat_and_frog
    with torch.inference_mode():
        off = named(AttendExciteKSampler, AttendExciteKSampler.execute(
            model, 3, 10, 6.0, "dpmpp_2m", "karras", positive, negative, latent, 1.0,
            **dict(GUIDANCE, scale_factor=0.0)))
        stock = nodes.common_ksampler(model, 3, 10, 6.0, "dpmpp_2m", "karras", positive, negative, latent)[0]
        on = named(AttendExciteKSampler, AttendExciteKSampler.execute(
            model, 3, 10, 6.0, "dpmpp_2m", "karras", positive, negative, latent, 1.0, **GUIDANCE))
    assert torch.equal(off["LATENT"]["samples"], stock["samples"])
    assert not torch.equal(on["LATENT"]["samples"], stock["samples"])
    log = json.loads(on["log"])
    assert log["subjects"] == ["cat", "frog"]
    assert [s["step"] for s in log["steps"]] == [0, 1, 2, 3, 4]          # 25 of 50 rescaled to 10 steps
    assert [s["refinement_iterations"] for s in log["steps"]] == [[2], [0], [0], [0], [2]]
    assert log["guidance_pass"] == "eager: the model runs on cpu, not on a CUDA GPU"   # and says why


def test_denoise_zero_returns_the_latent_and_says_nothing_was_guided(cat_and_frog):
    model = support.tiny_model(seed=1)
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    with torch.inference_mode():
        result = named(AttendExciteKSampler, AttendExciteKSampler.execute(
            model, 3, 10, 6.0, "euler", "normal", *cat_and_frog, latent, 0.0, **GUIDANCE))
    assert torch.equal(result["LATENT"]["samples"], latent["samples"])
    assert json.loads(result["log"])["steps"] == []
    assert result["heatmaps"].shape == (1, 64, 64, 3)            # one tile that says nothing was recorded


def test_a_latent_with_nan_is_refused_by_name(cat_and_frog):
    model = support.tiny_model(seed=1)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    latent["samples"][0, 0, 0, 0] = float("nan")
    with torch.inference_mode(), pytest.raises(ValueError, match="latent to sample contains NaN or infinite"):
        AttendExciteKSampler.execute(model, 3, 10, 6.0, "euler", "normal", *cat_and_frog, latent, 1.0, **GUIDANCE)


def test_progress_bar_advances_per_step_as_the_stock_ksampler(clip):
    import comfy.utils
    model = support.tiny_model(seed=1)
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
    model = support.tiny_model(seed=1)
    with torch.inference_mode():
        plain = nodes.CLIPTextEncode().encode(clip, "a cat")[0]
        with pytest.raises(ValueError, match="carries no Attend-and-Excite subjects"):
            AttendExciteKSampler.execute(model, 0, 4, 5.0, "euler", "normal", plain, plain,
                                         {"samples": torch.zeros(1, 4, 8, 8)}, 1.0, **GUIDANCE)


@pytest.mark.parametrize("family, config, family_name", [("sd15", "SD15", "SD1.x"), ("sdxl", "SDXL", "SDXL")])
def test_checkpoint_loaded_by_checkpoint_loader_under_inference_mode(mini_checkpoints, family, config, family_name):
    base, names = mini_checkpoints
    folder_paths.add_model_folder_path("checkpoints", str(base / "models" / "checkpoints"))
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    with torch.inference_mode():
        model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint(names[family])
        assert type(model.model.model_config).__name__ == config
        assert all(p.is_inference() for p in model.model.diffusion_model.parameters())
        positive = AttendExciteTextEncode.execute(clip, "a cat and a frog", "").result[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        result = named(AttendExciteKSampler, AttendExciteKSampler.execute(
            model, 1, 4, 7.5, "euler", "normal", positive, negative, latent, 1.0,
            **dict(GUIDANCE, schedule_steps=4, steps_to_alter=2, thresholds="0:1.0")))
    log = json.loads(result["log"])
    steps = log["steps"]
    assert log["model"] == family_name and log["subjects"] == ["cat", "frog"]
    assert [s["step"] for s in steps] == [0, 1] and steps[0]["refinement_iterations"] == [2]
    assert steps[0]["losses"][0] != steps[0]["losses"][-1]
    assert torch.isfinite(result["LATENT"]["samples"]).all()


def ksampler_run(model, positive, negative, latent, **changes):
    with torch.inference_mode():
        return AttendExciteKSampler.execute(model, 3, 10, 6.0, "euler", "normal", positive, negative, latent, 1.0,
                                            **dict(GUIDANCE, **changes))


def test_ksampler_heatmaps_are_the_maps_the_loss_used_and_preview_on_the_node(cat_and_frog):
    model = support.tiny_model(seed=1, config=dict(support.TINY_UNET))
    positive, negative = cat_and_frog
    output = ksampler_run(model, positive, negative, {"samples": torch.zeros(2, 4, 8, 8)}, heatmap_step=3)
    result = named(AttendExciteKSampler, output)
    record = result["attention"]
    assert [log.step for log in record.logs] == [0, 1, 2, 3, 4]
    for log, maps in zip(record.logs, record.maps):
        assert maps.shape == (2, 2, 2, 2)             # batch, subjects, the latent/4 level of an 8x8 latent
        assert torch.allclose(maps.amax(dim=(-1, -2)), torch.tensor(log.peaks[-1]), atol=1e-6)
    assert result["heatmaps"].shape == (2 * 2 * 2, 64, 64, 3)    # images x (mean, step 3) x subjects
    assert result["peak_plot"].shape[0] == 2 and result["peak_plot"].shape[-1] == 3
    assert len(output.ui.as_dict()["images"]) == 8
    assert json.loads(result["log"])["subjects"] == ["cat", "frog"]


def test_sampler_node_fills_its_record_for_the_heatmaps_node_as_the_ksampler_does(cat_and_frog):
    model = support.tiny_model(seed=1, config=dict(support.TINY_UNET))
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    positive, negative = cat_and_frog
    with torch.inference_mode():
        sampler, record = AttendExciteSampler.execute("euler", **GUIDANCE).result
        with pytest.raises(ValueError, match="no guided step was recorded"):
            AttendExciteHeatmaps.execute(record, latent, 0)
        sigmas = comfy.samplers.KSampler(model, steps=10, device="cpu", sampler="euler", scheduler="normal").sigmas
        noise = comfy.sample.prepare_noise(latent["samples"], 3)
        samples = comfy.sample.sample_custom(model, noise, 6.0, sampler, sigmas, positive, negative,
                                             latent["samples"], seed=3, disable_pbar=True)
    shown = named(AttendExciteHeatmaps, AttendExciteHeatmaps.execute(record, {"samples": samples}, 0))
    direct = named(AttendExciteKSampler, ksampler_run(model, positive, negative, latent))
    assert torch.equal(shown["heatmaps"], direct["heatmaps"])
    assert torch.equal(shown["peak_plot"], direct["peak_plot"])
    assert shown["log"] == direct["log"]
    other_latent = {"samples": torch.zeros(3, 4, 8, 8)}
    other_batch = named(AttendExciteHeatmaps, AttendExciteHeatmaps.execute(record, other_latent, 0))
    assert other_batch["heatmaps"].shape[0] == 2 and other_batch["peak_plot"].shape[0] == 1   # the record's batch


def test_masks_output_is_each_subjects_map_at_the_heatmap_step_at_image_size(cat_and_frog):
    """Both nodes' masks: one per image and subject (image 1's first), the map at heatmap_step scaled
    to its peak and resized to the image (latent x 8); mask_threshold makes them hard."""
    import torch.nn.functional as F
    model = support.tiny_model(seed=1, config=dict(support.TINY_UNET))
    positive, negative = cat_and_frog
    latent = {"samples": torch.zeros(2, 4, 8, 16)}
    result = named(AttendExciteKSampler, ksampler_run(model, positive, negative, latent, heatmap_step=3))
    maps = result["attention"].select(3)[0]                             # (2 images, 2 subjects, 2, 4)
    masks = result["masks"]
    assert masks.shape == (4, 64, 128)
    scaled = maps / maps.amax(dim=(-1, -2), keepdim=True)
    expected = F.interpolate(scaled, size=(64, 128), mode="bilinear", align_corners=False).clamp(0, 1)
    assert torch.allclose(masks, expected.flatten(0, 1), atol=1e-6)
    assert torch.allclose(masks[1], expected[0, 1], atol=1e-6)        # image 1's second subject
    assert masks.amax(dim=(-1, -2)).gt(0.9).all()
    mean_masks = named(AttendExciteKSampler, ksampler_run(model, positive, negative, latent))["masks"]
    assert not torch.allclose(mean_masks, masks)                         # heatmap_step 0: the mean map
    hard = named(AttendExciteKSampler, ksampler_run(model, positive, negative, latent, heatmap_step=3,
                                                   mask_threshold=0.9))["masks"]
    assert torch.equal(hard, (masks >= 0.9).float()) and 0 < hard.mean() < 1
    shown = named(AttendExciteHeatmaps, AttendExciteHeatmaps.execute(result["attention"], latent, 3, 0.9))
    assert torch.equal(shown["masks"], hard)


def test_overlay_node_blends_the_record_over_the_images(cat_and_frog):
    model = support.tiny_model(seed=1, config=dict(support.TINY_UNET))
    positive, negative = cat_and_frog
    record = named(AttendExciteKSampler, ksampler_run(model, positive, negative,
                                                      {"samples": torch.zeros(1, 4, 16, 16)}))["attention"]
    image = torch.rand(1, 128, 128, 3)
    output = AttendExciteHeatmapOverlay.execute(image, record, 0.0, 0)
    blended = output.result[0]
    assert blended.shape == (2, 128, 128, 3) and len(output.ui.as_dict()["images"]) == 2
    assert torch.allclose(blended[:, 48:], image[:, 48:].expand(2, -1, -1, -1), atol=1 / 255)
    at_step = AttendExciteHeatmapOverlay.execute(image, record, 1.0, 2).result[0]
    assert not torch.allclose(at_step, AttendExciteHeatmapOverlay.execute(image, record, 1.0, 0).result[0])
    with pytest.raises(ValueError, match="same sampler run"):
        AttendExciteHeatmapOverlay.execute(torch.rand(3, 64, 64, 3), named(AttendExciteKSampler, ksampler_run(
            model, positive, negative, {"samples": torch.zeros(2, 4, 8, 8)}))["attention"], 0.5, 0)


# Widget values are saved by position: this order is what every saved workflow and template holds.
KSAMPLER_INPUTS = ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                   "latent_image", "denoise", "steps_to_alter", "thresholds", "max_refinement", "scale_factor",
                   "scale_start", "scale_end", "smoothing_kernel", "smoothing_sigma", "schedule_steps",
                   "token_indices", "map_level", "heatmap_step", "loss", "mask_threshold", "guidance_memory"]
IN_VIEW = {"model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image",
           "denoise", "steps_to_alter", "thresholds", "scale_factor"}


def test_the_samplers_keep_their_input_order_and_fold_all_but_the_three_to_touch_where_comfyui_can():
    """On a ComfyUI whose V3 inputs take `advanced` (0.33.0 here), everything but the stock sampling inputs
    and scale_factor, thresholds and steps_to_alter is folded; an older one (0.3.75) gets no flag at all;
    either way the order of the inputs is the saved workflows'."""
    import inspect
    from comfy_api.latest import io
    folds = "advanced" in inspect.signature(io.Input.__init__).parameters
    ksampler = AttendExciteKSampler.define_schema().inputs
    sampler = AttendExciteSampler.define_schema().inputs
    assert [i.id for i in ksampler] == KSAMPLER_INPUTS
    assert [i.id for i in sampler] == ["sampler_name"] + [n for n in KSAMPLER_INPUTS[10:]
                                                          if n not in ("heatmap_step", "mask_threshold")]
    for inputs in (ksampler, sampler):
        folded = {i.id for i in inputs if getattr(i, "advanced", None)}
        assert folded == ({i.id for i in inputs} - IN_VIEW if folds else set())
    heatmap_step = next(i for i in AttendExciteHeatmaps.define_schema().inputs if i.id == "heatmap_step")
    assert not getattr(heatmap_step, "advanced", None)      # the heatmap node's own input stays in view
