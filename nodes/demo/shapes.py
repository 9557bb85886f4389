"""Procedural pictures of one or two light shapes on a dark background, and their captions
(kind words only: 'a circle', 'a circle and a square'): the demo model's training data and
the fidelity benchmark's vocabulary."""
from dataclasses import dataclass

import torch

KINDS = ("circle", "square", "triangle", "cross")    # every kind the pictures and the detector know
SHAPES = ("circle", "square", "triangle")             # the shipped demo model's vocabulary
CROSS_ARM = 1 / 3          # a cross's arms are this share of its box's side wide
INK = (0.94, 0.94, 0.94)
BACKGROUND = (0.06, 0.06, 0.06)
IMAGE_SIZE = 128
RADII = (18.0, 28.0)       # half the side of the shape's box, in pixels of IMAGE_SIZE: 4.5 to 7 cells of 8 px
GAP = 4.0                  # the least distance between two shapes' boxes


@dataclass(frozen=True)
class Shape:
    kind: str
    x: float       # centre, pixels
    y: float
    radius: float  # half the side of its box


def caption(shapes: list[Shape]) -> str:
    return " and ".join(f"a {s.kind}" for s in shapes)


def signed_distance(kind: str, dx: torch.Tensor, dy: torch.Tensor, radius: float) -> torch.Tensor:
    """Negative inside. Squares and triangles stand upright; the triangle's base is its box's bottom side."""
    if kind == "circle":
        return torch.sqrt(dx ** 2 + dy ** 2) - radius
    if kind == "square":
        return torch.maximum(dx.abs(), dy.abs()) - radius
    if kind == "triangle":     # apex (0, -r), base corners (+-r, r): sides 2|x| - y = r
        return torch.maximum(dy - radius, (2 * dx.abs() - dy - radius) / 5 ** 0.5)
    if kind == "cross":        # an upright plus: the union of a bar across and a bar down its box
        arm = CROSS_ARM * radius
        across = torch.maximum(dx.abs() - radius, dy.abs() - arm)
        down = torch.maximum(dx.abs() - arm, dy.abs() - radius)
        return torch.minimum(across, down)
    raise ValueError(f"unknown shape {kind!r}; known: {', '.join(KINDS)}")


def coverage(shape: Shape, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(size, size): how much of each pixel the shape covers, edges anti-aliased over one pixel."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (0.5 - signed_distance(shape.kind, xs - shape.x, ys - shape.y, shape.radius)).clamp(0, 1)


def draw(shapes: list[Shape], size: int = IMAGE_SIZE) -> torch.Tensor:
    """(3, size, size) in [0, 1]."""
    image = torch.tensor(BACKGROUND).view(3, 1, 1).expand(3, size, size).clone()
    ink = torch.tensor(INK).view(3, 1, 1)
    for s in shapes:
        cover = coverage(s, size)
        image = image * (1 - cover) + ink * cover
    return image


def cell_masks(shapes: list[Shape], cells: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(len(shapes), cells, cells): the share of each cell of a cells x cells grid that each
    shape covers (the grid of an attention map)."""
    covers = torch.stack([coverage(s, size) for s in shapes])
    return torch.nn.functional.adaptive_avg_pool2d(covers[:, None], cells)[:, 0]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _pick(generator: torch.Generator, options):
    return options[int(torch.randint(len(options), (), generator=generator))]


def random_scene(generator: torch.Generator, two_shapes: bool, size: int = IMAGE_SIZE,
                 kinds: tuple = SHAPES) -> list[Shape]:
    """One shape, or two of different kinds whose boxes keep GAP apart (drawn again, both, until
    they do: a large first shape in the middle would leave no room for a second)."""
    first = _pick(generator, kinds)
    kinds = [first, _pick(generator, [k for k in kinds if k != first])] if two_shapes else [first]
    while True:
        shapes = []
        for kind in kinds:
            radius = _uniform(generator, *RADII)
            x, y = (_uniform(generator, radius + 2, size - radius - 2) for _ in range(2))
            shapes.append(Shape(kind, x, y, radius))
        if all(max(abs(a.x - b.x), abs(a.y - b.y)) > a.radius + b.radius + GAP
               for i, a in enumerate(shapes) for b in shapes[i + 1:]):
            return shapes


def subject_pairs(kinds: tuple = SHAPES) -> list[tuple[str, str]]:
    """Every two-subject prompt of the vocabulary, in a fixed order: two different kinds, in
    either order (the causal text encoder reads 'a circle and a cross' and 'a cross and a
    circle' differently)."""
    return [(a, b) for a in kinds for b in kinds if a != b]


def kind_column(number: int) -> int:
    """The context column of the kind word of a caption's shape `number`: each word is one
    token of the CLIP vocabulary, after the start token, three per shape ('a circle and ...')."""
    return 2 + 3 * number
