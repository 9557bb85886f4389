"""The demo model's pure parts: its pictures, the detector that reads them, and the
training script's resumption."""
import torch
import torch.nn.functional as F

from attend_and_excite.nodes.demo.detector import detect, present
from attend_and_excite.nodes.demo.shapes import COLOURS, SHAPES, Shape, caption, draw, random_scene, subject_pairs


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
