"""Procedural pictures of one or two coloured shapes on a plain background, and their
captions: the demo model's training data and the fidelity benchmark's vocabulary."""
from dataclasses import dataclass

import torch

COLOURS = {"red": (0.86, 0.16, 0.16), "green": (0.16, 0.66, 0.24), "blue": (0.16, 0.31, 0.86),
           "yellow": (0.92, 0.80, 0.12)}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (0.95, 0.95, 0.95)
IMAGE_SIZE = 128
RADII = (16.0, 26.0)       # half the side of the shape's box, in pixels of IMAGE_SIZE
GAP = 4.0                  # the least distance between two shapes' boxes


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    x: float       # centre, pixels
    y: float
    radius: float  # half the side of its box

    @property
    def subject(self) -> str:
        return f"{self.colour} {self.kind}"


def caption(shapes: list[Shape]) -> str:
    return " and ".join(f"a {s.subject}" for s in shapes)


def signed_distance(kind: str, dx: torch.Tensor, dy: torch.Tensor, radius: float) -> torch.Tensor:
    """Negative inside. Squares and triangles stand upright; the triangle's base is its box's bottom side."""
    if kind == "circle":
        return torch.sqrt(dx ** 2 + dy ** 2) - radius
    if kind == "square":
        return torch.maximum(dx.abs(), dy.abs()) - radius
    if kind == "triangle":     # apex (0, -r), base corners (+-r, r): sides 2|x| - y = r
        return torch.maximum(dy - radius, (2 * dx.abs() - dy - radius) / 5 ** 0.5)
    raise ValueError(f"unknown shape {kind!r}; known: {', '.join(SHAPES)}")


def coverage(shape: Shape, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(size, size): how much of each pixel the shape covers, edges anti-aliased over one pixel."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (0.5 - signed_distance(shape.kind, xs - shape.x, ys - shape.y, shape.radius)).clamp(0, 1)


def draw(shapes: list[Shape], size: int = IMAGE_SIZE) -> torch.Tensor:
    """(3, size, size) in [0, 1]."""
    image = torch.tensor(BACKGROUND).view(3, 1, 1).expand(3, size, size).clone()
    for s in shapes:
        cover = coverage(s, size)
        image = image * (1 - cover) + torch.tensor(COLOURS[s.colour]).view(3, 1, 1) * cover
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


def random_scene(generator: torch.Generator, two_shapes: bool, size: int = IMAGE_SIZE) -> list[Shape]:
    """One shape, or two of different colours and kinds whose boxes keep GAP apart."""
    colours, kinds = list(COLOURS), list(SHAPES)
    shapes = []
    for _ in range(2 if two_shapes else 1):
        colour = _pick(generator, [c for c in colours if all(c != s.colour for s in shapes)])
        kind = _pick(generator, [k for k in kinds if all(k != s.kind for s in shapes)])
        while True:
            radius = _uniform(generator, *RADII)
            x, y = (_uniform(generator, radius + 2, size - radius - 2) for _ in range(2))
            if all(max(abs(x - s.x), abs(y - s.y)) > radius + s.radius + GAP for s in shapes):
                break
        shapes.append(Shape(colour, kind, x, y, radius))
    return shapes


def subject_pairs() -> list[tuple[str, str]]:
    """Every two-subject prompt of the vocabulary, in a fixed order: different colours
    and different kinds, each unordered pair once."""
    subjects = [(c, k) for c in COLOURS for k in SHAPES]
    return [(f"{a[0]} {a[1]}", f"{b[0]} {b[1]}") for i, a in enumerate(subjects) for b in subjects[i + 1:]
            if a[0] != b[0] and a[1] != b[1]]


def word_columns(number: int) -> tuple[int, int]:
    """The context columns of the colour and the kind word of a caption's shape `number`:
    each word is one token of the CLIP vocabulary, after the start token, four per shape
    ('a red circle and ...')."""
    return 2 + 4 * number, 3 + 4 * number
