"""The demo model in ComfyUI: its family, its shipped weights, the loader and the stock
nodes on it, and the fidelity benchmark's published figures."""
import json
import os

import pytest
import torch

import nodes
from support import REPO

from attend_and_excite.nodes.demo import model as demo_model
from attend_and_excite.nodes.demo.detector import present
from attend_and_excite.nodes.demo.shapes import subject_pairs
from attend_and_excite.nodes.demo_loader import AttendExciteDemoModelLoader
from attend_and_excite.nodes.glue.family import DEMO, detect_family
from attend_and_excite.nodes.ksampler import AttendExciteKSampler
from attend_and_excite.nodes.text_encode import AttendExciteTextEncode

QUICK_PAIRS = 3
FIDELITY = os.path.join(REPO, "js", "docs", "fidelity.json")


def test_the_demo_config_records_8x8_maps_at_latent_2():
    """The demo model's UNet (ComfyUI's SD15 config class, subclassed) is found as the demo family,
    whose maps are read at latent/2: 8 x 8 for its 128 px pictures."""
    from attend_and_excite.nodes.glue.recorder import blocks_at_level
    model = demo_model.build_unet()
    family = detect_family(model)
    assert family is DEMO and family.map_level == 1
    blocks = blocks_at_level(model.diffusion_model, family.map_level)
    assert [(b.name, b.number) for b in blocks] == [("input", 3), ("output", 2), ("output", 3)]


@pytest.fixture(scope="module")
def demo():
    with torch.inference_mode():      # as ComfyUI runs a loader node
        return AttendExciteDemoModelLoader.execute().result


def test_shipped_weights_come_from_the_training_script_defaults():
    from safetensors import safe_open
    from harness.train_demo import arguments, training_settings
    assert os.path.getsize(demo_model.WEIGHTS) <= 25 * 2 ** 20
    with safe_open(demo_model.WEIGHTS, "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["settings"]) == training_settings(arguments().parse_args([]))


def test_stock_nodes_draw_the_prompt_with_the_demo_model(demo):
    model, clip, vae = demo
    assert detect_family(model.model) is DEMO
    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(clip, "a green triangle")[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(128, 128, 4)[0]
        samples = nodes.common_ksampler(model, 1, 20, 5.0, "euler", "normal", positive, negative, latent)[0]
        images = nodes.VAEDecode().decode(vae, samples)[0]
    assert images.shape == (4, 128, 128, 3)
    assert sum(present(["green triangle"], image.movedim(-1, 0))[0] for image in images) >= 3


def test_attend_and_excite_reads_8x8_maps_of_the_demo_model(demo):
    from attend_and_excite.nodes.parameters import default_inputs
    model, clip, vae = demo
    with torch.inference_mode():
        positive = AttendExciteTextEncode.execute(clip, "a red circle and a blue square", "circle, square").result[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(128, 128, 2)[0]
        result = AttendExciteKSampler.execute(model, 0, 10, 5.0, "euler", "normal", positive, negative, latent, 1.0,
                                              **dict(default_inputs(), max_refinement=1)).result
    record = result[3]
    assert record.maps[0].shape == (2, 2, 8, 8) and json.loads(result[4])["model"] == DEMO.name


def test_the_shipped_weights_give_the_published_benchmark_rates(demo):
    """The first prompts of the fidelity benchmark (README, js/docs/fidelity.json), sampled
    again: each prompt's both-present rate per sampler, within one image of the published one
    (another CPU may round a few pixels differently)."""
    from harness.fidelity import measure
    with open(FIDELITY) as f:
        published = json.load(f)
    settings = published["settings"]
    results, _ = measure(*demo, subject_pairs()[:QUICK_PAIRS], settings["seeds"], settings["images_per_seed"],
                         log=lambda _: None)
    images = len(settings["seeds"]) * settings["images_per_seed"]
    for measured, expected in zip(results["per_prompt"], published["per_prompt"]):
        assert measured["prompt"] == expected["prompt"]
        for sampler in ("plain", "attend_and_excite"):
            assert abs(measured[sampler] - expected[sampler]) * images <= 1, (measured, expected)
