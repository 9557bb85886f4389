"""The demo model's parts: its pictures, the detector that reads them, the training
script's resumption and the model's family."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import nodes

from attend_and_excite.nodes.core.detector import detect, present
from attend_and_excite.nodes.core.shapes import COLOURS, SHAPES, Shape, caption, draw, random_scene, subject_pairs
from attend_and_excite.nodes.demo_loader import AttendExciteDemoModelLoader
from attend_and_excite.nodes.glue import demo_model
from attend_and_excite.nodes.glue.family import DEMO, detect_family
from attend_and_excite.nodes.ksampler import AttendExciteKSampler
from attend_and_excite.nodes.text_encode import AttendExciteTextEncode

QUICK_PAIRS = 3
FIDELITY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "js", "docs", "fidelity.json")


def blurred_and_noisy(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A picture as a decoder might give it: soft edges, grain."""
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 16
    soft = F.conv2d(F.pad(image[:, None], (1, 1, 1, 1), mode="replicate"), kernel[None, None])[:, 0]
    return (soft + 0.04 * torch.randn(soft.shape, generator=generator)).clamp(0, 1)


def detector_counts(scenes: int, degrade: bool, seed: int = 11) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) over subject instances."""
    generator = torch.Generator().manual_seed(seed)
    hits = extra = missed = 0
    for number in range(scenes):
        shapes = random_scene(generator, two_shapes=bool(number % 2))
        image = draw(shapes)
        if degrade:
            image = blurred_and_noisy(image, generator)
        truth = {s.subject for s in shapes}
        seen = [f.subject for f in detect(image) if f.subject]
        hits += len(truth & set(seen))
        extra += sum(s not in truth for s in seen)
        missed += len(truth - set(seen))
    return hits, extra, missed


def test_pictures_show_their_caption_and_repeat_from_a_seed():
    scene = [Shape("red", "circle", 40, 40, 15), Shape("blue", "triangle", 90, 90, 20)]
    image = draw(scene)
    assert caption(scene) == "a red circle and a blue triangle"
    assert torch.allclose(image[:, 40, 40], torch.tensor(COLOURS["red"]))
    assert torch.allclose(image[:, 95, 90], torch.tensor(COLOURS["blue"]))       # inside, near the base
    assert not torch.allclose(image[:, 72, 75], torch.tensor(COLOURS["blue"]))   # left of the apex: outside
    first = random_scene(torch.Generator().manual_seed(3), two_shapes=True)
    assert first == random_scene(torch.Generator().manual_seed(3), two_shapes=True)
    assert first[0].colour != first[1].colour and first[0].kind != first[1].kind
    assert max(abs(first[0].x - first[1].x), abs(first[0].y - first[1].y)) > first[0].radius + first[1].radius
    pairs = subject_pairs()
    assert len(pairs) == len(set(pairs)) == 36    # 12 subjects; pairs of other colour and other kind, unordered


def test_detector_precision_and_recall_on_pictures_of_known_content():
    """The figures the README reports: 100 clean and 100 degraded pictures, 150 shapes each."""
    for degrade in (False, True):
        hits, extra, missed = detector_counts(100, degrade)
        assert (hits, extra, missed) == (150, 0, 0), degrade


def test_detector_tells_shapes_apart_and_ignores_blobs():
    for kind in SHAPES:
        assert [f.subject for f in detect(draw([Shape("green", kind, 64, 64, 18)]))] == [f"green {kind}"]
    assert present(["yellow square", "red circle"], draw([Shape("yellow", "square", 64, 64, 20)])) == [True, False]
    stripe = torch.tensor((0.95, 0.95, 0.95)).view(3, 1, 1).repeat(1, 128, 128)
    stripe[:, 60:66, :] = torch.tensor(COLOURS["red"]).view(3, 1, 1)
    assert [f.kind for f in detect(stripe)] == [None]                  # a red blob, no shape
    assert detect(torch.full((3, 128, 128), 0.95)) == []


def test_training_resumes_where_it_stopped(tmp_path):
    """A run stopped after a checkpoint and resumed ends with the weights of one that never stopped."""
    from harness.train_demo import Stage

    def train(path, stop=None):
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 2)
        stage = Stage(str(path), list(layer.parameters()), 1e-2, 6, 0.9)
        while stage.step < (stop or stage.steps):
            x = torch.randn(4, 3, generator=torch.Generator().manual_seed(stage.step))
            stage.update(layer(x).pow(2).mean())
        return stage, layer

    whole, _ = train(tmp_path / "whole.pt")
    first, _ = train(tmp_path / "parts.pt", stop=4)
    first.save()
    resumed, _ = train(tmp_path / "parts.pt")
    assert resumed.step == 6
    for a, b in zip(whole.parameters + whole.ema, resumed.parameters + resumed.ema):
        assert torch.equal(a, b)


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
    from harness.fidelity import GUIDANCE
    model, clip, vae = demo
    with torch.inference_mode():
        positive = AttendExciteTextEncode.execute(clip, "a red circle and a blue square", "circle, square").result[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(128, 128, 2)[0]
        result = AttendExciteKSampler.execute(model, 0, 10, 5.0, "euler", "normal", positive, negative, latent, 1.0,
                                              **dict(GUIDANCE, max_refinement=1)).result
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
