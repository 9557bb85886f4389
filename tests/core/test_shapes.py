"""The demo model's pure parts: its pictures, the detector that reads them, and the
training script's resumption."""
import torch
import torch.nn.functional as F

from attend_and_excite.nodes.demo.detector import DAMAGED_BACKGROUND, detect, present, read, score
from attend_and_excite.nodes.demo.shapes import (BACKGROUND, INK, KINDS, SHAPES, Shape, caption, coverage, draw,
                                                 kind_column, random_scene, subject_pairs)

# Inks a decoder might draw instead of the training pictures' near-white: the kind must not depend on it.
OTHER_INKS = {"grey": (0.7, 0.7, 0.7), "warm": (0.95, 0.85, 0.6), "cold": (0.6, 0.8, 0.95), "white": (1.0, 1.0, 1.0)}


def painted(cover: torch.Tensor, colour: tuple = INK, image: torch.Tensor | None = None) -> torch.Tensor:
    """A picture (the plain background by default) with `cover` painted in an RGB colour."""
    if image is None:
        image = torch.tensor(BACKGROUND).view(3, 1, 1).repeat(1, 128, 128)
    return image * (1 - cover) + torch.tensor(colour).view(3, 1, 1) * cover


def concave_square(x: float, y: float, radius: float, bite: float) -> torch.Tensor:
    """A square whose four sides are bowed inwards by `bite` pixels at their middles (a
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
    """(true positives, false positives, false negatives) over shapes."""
    generator = torch.Generator().manual_seed(seed)
    hits = extra = missed = 0
    for number in range(scenes):
        shapes = random_scene(generator, two_shapes=bool(number % 2), kinds=KINDS)
        image = draw(shapes)
        if degrade:
            image = blurred_and_noisy(image, generator)
        truth = {s.kind for s in shapes}
        seen = [f.kind for f in detect(image)]
        hits += len(truth & set(seen))
        extra += sum(k not in truth for k in seen) + len(seen) - len(set(seen))
        missed += len(truth - set(seen))
    return hits, extra, missed


def test_pictures_show_their_caption_and_repeat_from_a_seed():
    scene = [Shape("circle", 40, 40, 15), Shape("triangle", 90, 90, 20)]
    image = draw(scene)
    assert caption(scene) == "a circle and a triangle"
    assert torch.allclose(image[:, 40, 40], torch.tensor(INK))
    assert torch.allclose(image[:, 95, 90], torch.tensor(INK))             # inside, near the base
    assert torch.allclose(image[:, 72, 75], torch.tensor(BACKGROUND))      # left of the apex: outside
    first = random_scene(torch.Generator().manual_seed(3), two_shapes=True)
    assert first == random_scene(torch.Generator().manual_seed(3), two_shapes=True)
    assert first[0].kind != first[1].kind and {s.kind for s in first} <= set(SHAPES)
    assert max(abs(first[0].x - first[1].x), abs(first[0].y - first[1].y)) > first[0].radius + first[1].radius
    assert set(SHAPES) <= set(KINDS)
    assert subject_pairs(("circle", "square", "triangle")) == [
        ("circle", "square"), ("circle", "triangle"), ("square", "circle"), ("square", "triangle"),
        ("triangle", "circle"), ("triangle", "square")]
    assert len(subject_pairs()) == len(SHAPES) * (len(SHAPES) - 1)
    assert [kind_column(n) for n in range(2)] == [2, 5]      # <start> a circle and a square


def test_two_shape_scenes_are_placed_whatever_the_first_shape():
    """A large first shape in the middle leaves no room for a second: the scene is drawn again
    (a loop that only redrew the second shape never ended)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        a, b = random_scene(generator, two_shapes=True, kinds=KINDS)
        assert max(abs(a.x - b.x), abs(a.y - b.y)) > a.radius + b.radius
        assert all(s.radius + 2 <= c <= 128 - s.radius - 2 for s in (a, b) for c in (s.x, s.y))


def test_detector_precision_and_recall_on_pictures_of_known_content():
    """The figures the contributors' page reports: 100 clean and 100 degraded pictures, 150 shapes each."""
    for degrade in (False, True):
        hits, extra, missed = detector_counts(100, degrade)
        assert (hits, extra, missed) == (150, 0, 0), degrade


def test_detector_tells_shapes_apart_and_ignores_blobs():
    for kind in KINDS:
        for radius in (18, 23, 28):
            assert [f.kind for f in detect(draw([Shape(kind, 64, 64, radius)]))] == [kind], (kind, radius)
    assert present(["square", "circle"], draw([Shape("square", 64, 64, 20)])) == [True, False]
    stripe = torch.zeros(128, 128)
    stripe[60:66, :] = 1.0
    assert [f.kind for f in detect(painted(stripe))] == [None]           # a bar, no shape
    assert detect(painted(torch.zeros(128, 128))) == []


def test_detector_finds_each_kind_whatever_its_ink():
    for name, ink in OTHER_INKS.items():
        for kind in KINDS:
            assert [f.kind for f in detect(painted(coverage(Shape(kind, 60, 70, 20)), ink))] == [kind], (name, kind)


def test_a_concave_square_is_a_square_and_one_without_a_corner_is_no_shape():
    for bite in (2.0, 4.0, 6.0):
        assert [f.kind for f in detect(painted(concave_square(64, 64, 22, bite)))] == ["square"], bite
    cornerless = concave_square(64, 64, 22, 3.0)
    cornerless[42:52, 42:52] = 0                       # its top-left corner bitten off
    assert [f.kind for f in detect(painted(cornerless))] == [None]


def test_a_cross_is_told_from_a_circle_and_a_square():
    """A cross fills about 56% of its box, a circle 79%, a square all of it; a plus with thin arms
    (a blob that is none of them) is no shape."""
    pair = draw([Shape("cross", 40, 40, 20), Shape("circle", 96, 96, 20)])
    assert sorted(f.kind for f in detect(pair)) == ["circle", "cross"]
    ys, xs = torch.meshgrid(torch.arange(128) + 0.5, torch.arange(128) + 0.5, indexing="ij")
    dx, dy = (xs - 64).abs(), (ys - 64).abs()
    thin = (((dx <= 22) & (dy <= 3)) | ((dx <= 3) & (dy <= 22))).float()
    assert [f.kind for f in detect(painted(thin))] == [None]


def test_two_fused_shapes_are_no_shape():
    fused = draw([Shape("square", 44, 64, 20), Shape("circle", 82, 64, 20)])
    assert [f.kind for f in detect(fused)] == [None]
    s = score(["square", "circle"], fused)
    assert (s.kinds, s.extra, s.damaged, s.exact) == ([False, False], 1, True, False)


def test_score_tells_neglect_extras_and_damage_apart():
    pair = ["circle", "square"]
    both = draw([Shape("circle", 30, 30, 18), Shape("square", 90, 90, 18)])
    s = score(pair, both)
    assert (s.kinds, s.extra, s.damaged, s.exact) == ([True, True], 0, False, True)
    neglected = draw([Shape("square", 90, 90, 18)])
    s = score(pair, neglected)
    assert (s.kinds, s.extra, s.damaged, s.exact) == ([False, True], 0, False, False)
    other = draw([Shape("triangle", 30, 30, 18), Shape("square", 90, 90, 18)])
    s = score(pair, other)
    assert (s.kinds, s.extra, s.damaged) == ([False, True], 1, True)     # a shape not asked for
    blotch = torch.zeros(128, 128)
    blotch[5:20, 100:122] = 1.0
    s = score(pair, painted(blotch, image=both))
    assert (s.kinds, s.extra, s.damaged, s.exact) == ([True, True], 1, True, False)
    repeated = draw([Shape("circle", 30, 30, 18), Shape("circle", 90, 30, 18), Shape("square", 90, 90, 18)])
    assert score(pair, repeated).extra == 1


def test_unflat_background_is_the_share_of_mottled_background():
    generator = torch.Generator().manual_seed(0)
    clean = draw([Shape("triangle", 64, 64, 20)])
    assert read(clean).unflat_background == 0.0
    mottle = F.interpolate(torch.randn(1, 3, 8, 8, generator=generator), size=128, mode="bilinear")[0]
    mottled = (clean + 0.12 * mottle).clamp(0, 1)
    assert read(mottled).unflat_background > 0.5 and score(["triangle"], mottled).damaged
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
