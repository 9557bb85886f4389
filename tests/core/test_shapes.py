"""The demo model's pure parts: its pictures, the detector that reads them, and the
training script's resumption."""
import torch
import torch.nn.functional as F

from attend_and_excite.nodes.demo.detector import DAMAGED_BACKGROUND, detect, present, read, score
from attend_and_excite.nodes.demo.shapes import (BACKGROUND, COLOURS, SHAPES, Shape, caption, coverage, draw,
                                                 random_scene, subject_pairs)

OFF_PALETTE = {"orange": (0.95, 0.45, 0.1), "purple": (0.55, 0.2, 0.65), "teal": (0.1, 0.55, 0.55),
               "brown": (0.5, 0.35, 0.2)}


def painted(cover: torch.Tensor, colour: tuple, image: torch.Tensor | None = None) -> torch.Tensor:
    """A picture (the plain background by default) with `cover` painted in an RGB colour."""
    if image is None:
        image = torch.tensor(BACKGROUND).view(3, 1, 1).repeat(1, 128, 128)
    return image * (1 - cover) + torch.tensor(colour).view(3, 1, 1) * cover


def concave_square(x: float, y: float, radius: float, bite: float) -> torch.Tensor:
    """A square whose four sides are bowed inwards by `bite` pixels at their middles (the
    model's typical defect), its corners kept."""
    ys, xs = torch.meshgrid(torch.arange(128) + 0.5, torch.arange(128) + 0.5, indexing="ij")
    dx, dy = (xs - x).abs(), (ys - y).abs()
    # each side is an arc through the two corners whose middle lies `bite` inside
    depth = lambda along: bite * (1 - (along / radius) ** 2)
    inside = (dx <= radius - depth(dy.clamp(max=radius))) & (dy <= radius - depth(dx.clamp(max=radius)))
    return inside.float()


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


def test_detector_finds_each_kind_whatever_its_colour():
    """Off the palette a shape keeps its kind and has no colour: neglect is told apart from binding."""
    for name, colour in OFF_PALETTE.items():
        for kind in SHAPES:
            found = detect(painted(coverage(Shape("red", kind, 60, 70, 20)), colour))
            assert [(f.kind, f.colour) for f in found] == [(kind, None)], (name, kind)
    near_red = tuple(c + d for c, d in zip(COLOURS["red"], (0.08, 0.12, -0.1)))
    assert [f.subject for f in detect(painted(coverage(Shape("red", "circle", 64, 64, 22)), near_red))] == ["red circle"]


def test_a_concave_square_is_a_square_and_one_without_a_corner_is_no_shape():
    for bite in (2.0, 4.0, 6.0):
        square = painted(concave_square(64, 64, 22, bite), COLOURS["blue"])
        assert [f.subject for f in detect(square)] == ["blue square"], bite
    cornerless = concave_square(64, 64, 22, 3.0)
    cornerless[42:52, 42:52] = 0                       # its top-left corner bitten off
    assert [f.kind for f in detect(painted(cornerless, COLOURS["blue"]))] == [None]


def test_touching_shapes_of_two_colours_are_two_shapes():
    image = draw([Shape("red", "square", 44, 64, 20), Shape("blue", "circle", 84, 64, 20)])
    assert sorted(f.subject for f in detect(image)) == ["blue circle", "red square"]


def test_score_tells_neglect_binding_and_damage_apart():
    pair = ["red circle", "blue square"]
    both = draw([Shape("red", "circle", 30, 30, 18), Shape("blue", "square", 90, 90, 18)])
    assert score(pair, both) == score(pair, both) and score(pair, both).kinds == [True, True]
    assert score(pair, both).bound == [True, True] and not score(pair, both).damaged
    wrong_colour = draw([Shape("yellow", "circle", 30, 30, 18), Shape("blue", "square", 90, 90, 18)])
    s = score(pair, wrong_colour)
    assert (s.kinds, s.bound, s.extra) == ([True, True], [False, True], 0)
    neglected = draw([Shape("blue", "square", 90, 90, 18)])
    s = score(pair, neglected)
    assert (s.kinds, s.bound, s.extra) == ([False, True], [False, True], 0)
    blotch = torch.zeros(128, 128)
    blotch[5:20, 100:122] = 1.0
    s = score(pair, painted(blotch, OFF_PALETTE["orange"], both))
    assert (s.kinds, s.extra, s.damaged) == ([True, True], 1, True)
    repeated = draw([Shape("red", "circle", 30, 30, 18), Shape("red", "circle", 90, 30, 18),
                     Shape("blue", "square", 90, 90, 18)])
    assert score(pair, repeated).extra == 1


def test_unflat_background_is_the_share_of_mottled_background():
    generator = torch.Generator().manual_seed(0)
    clean = draw([Shape("green", "triangle", 64, 64, 20)])
    assert read(clean).unflat_background == 0.0
    mottle = F.interpolate(torch.randn(1, 3, 8, 8, generator=generator), size=128, mode="bilinear")[0]
    mottled = (clean + 0.12 * mottle).clamp(0, 1)
    assert read(mottled).unflat_background > 0.5 and score(["green triangle"], mottled).damaged
    faint = (clean + 0.01 * mottle).clamp(0, 1)
    assert read(faint).unflat_background < DAMAGED_BACKGROUND


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
