"""Reads the demo model's pictures back: the shapes it drew (their kind from geometry alone),
and how much of the background is not the flat dark the training pictures have.

The kind is decided from the region's box: how much of it the region fills and which of
its corners it covers (a square covers all four, an upright triangle the bottom two, a
circle and a cross none; a circle fills about 79% of its box, a cross 56% and covers its
centre and the middles of the box's sides). A square drawn with concave sides still covers
its corners: it is a square.
A blob that fits none of the three (two shapes drawn fused, say) is no shape (kind None),
and counts as damage."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .shapes import BACKGROUND, INK

CONTRAST = sum((i - b) ** 2 for i, b in zip(INK, BACKGROUND)) ** 0.5
FOREGROUND = 0.5 * CONTRAST   # RGB distance in [0, 1] units from the background: a drawn pixel
FLAT = 0.08                   # background pixels nearer than this to the background colour are flat
MIN_AREA = 80                 # pixels at 128 px; smaller blobs are noise (RADII give 700 and more)
CORNER = 0.15                 # a corner patch's side, as a share of the box's side
BACKGROUND_MARGIN = 3         # pixels around a region left out of the background (its soft edge)
DAMAGED_BACKGROUND = 0.1      # a picture with more of its background than this share unflat is damaged


@dataclass(frozen=True)
class Found:
    kind: str | None     # None: a region that is no shape
    area: int
    box: tuple           # x0, y0, x1, y1 (exclusive)


@dataclass(frozen=True)
class Reading:
    shapes: list          # [Found], largest first
    unflat_background: float   # share of the background's pixels off its flat colour


def components(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) labels of 8-connected regions of a boolean mask (0 outside it), by
    propagating the largest label over each region."""
    height, width = mask.shape
    labels = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width) * mask
    while True:
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * mask
        if torch.equal(grown, labels):
            return labels[0, 0].long()
        labels = grown


def shape_kind(region: torch.Tensor) -> str | None:
    """Circle, square, triangle, cross or None, from how the region fills its box, its corners
    and the middles of its sides."""
    rows, cols = region.any(dim=1).nonzero(), region.any(dim=0).nonzero()
    box = region[rows.min():rows.max() + 1, cols.min():cols.max() + 1].float()
    height, width = box.shape
    if not 0.7 < height / width < 1.4:
        return None
    fill = box.mean().item()
    ch, cw = max(2, round(CORNER * height)), max(2, round(CORNER * width))
    top_left, top_right = box[:ch, :cw].mean().item(), box[:ch, -cw:].mean().item()
    bottom_left, bottom_right = box[-ch:, :cw].mean().item(), box[-ch:, -cw:].mean().item()
    top, bottom = max(top_left, top_right), min(bottom_left, bottom_right)
    if min(top_left, top_right) > 0.5 and bottom > 0.5 and fill > 0.6:
        return "square"
    if top < 0.2 and bottom > 0.4 and 0.35 < fill < 0.7:
        return "triangle"
    if top < 0.25 and max(bottom_left, bottom_right) < 0.25 and 0.65 < fill < 0.9:
        return "circle"
    if top < 0.15 and max(bottom_left, bottom_right) < 0.15 and 0.4 < fill < 0.65:
        middles = (box[:ch, cw:-cw], box[-ch:, cw:-cw], box[ch:-ch, :cw], box[ch:-ch, -cw:])
        centre = box[height // 3:-(height // 3), width // 3:-(width // 3)]
        if centre.mean() > 0.9 and all(m.mean() > 0.3 for m in middles):
            return "cross"
    return None


def read(image: torch.Tensor) -> Reading:
    """What a (3, H, W) picture in [0, 1] shows."""
    image = image.float().clamp(0, 1)
    off_background = (image - torch.tensor(BACKGROUND).view(3, 1, 1)).norm(dim=0)
    drawn = off_background > FOREGROUND
    labels = components(drawn)
    found, covered = [], torch.zeros_like(drawn)
    for label in labels.unique()[1:]:
        region = labels == label
        area = int(region.sum())
        if area < MIN_AREA:
            continue
        covered |= region
        ys, xs = region.nonzero(as_tuple=True)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        found.append(Found(shape_kind(region), area, box))
    margin = 2 * BACKGROUND_MARGIN + 1
    near_drawn = F.max_pool2d(covered[None, None].float(), margin, stride=1, padding=BACKGROUND_MARGIN)[0, 0] > 0
    background = ~near_drawn      # small blobs stay in it: they are its unflat part
    unflat = ((off_background > FLAT) & background).sum() / background.sum().clamp_min(1)
    return Reading(sorted(found, key=lambda f: -f.area), float(unflat))


def detect(image: torch.Tensor) -> list[Found]:
    """The shapes in a (3, H, W) picture in [0, 1], largest first."""
    return read(image).shapes


def present(subjects: list[str], image: torch.Tensor) -> list[bool]:
    """For each subject (a kind: 'circle'), whether the picture shows a shape of it."""
    shown = [f.kind for f in detect(image)]
    return [s in shown for s in subjects]


@dataclass(frozen=True)
class Score:
    """A picture against the subjects its prompt asked for."""
    kinds: list           # per subject: a shape of its kind (not neglected)
    extra: int            # regions beyond one per subject: blobs, fused shapes, shapes not asked for, repeats
    unflat_background: float

    @property
    def damaged(self) -> bool:
        return self.extra > 0 or self.unflat_background > DAMAGED_BACKGROUND

    @property
    def exact(self) -> bool:
        """Exactly the shapes asked for, nothing else (the background aside)."""
        return all(self.kinds) and self.extra == 0


def score(subjects: list[str], image: torch.Tensor) -> Score:
    """Each subject (a kind) is given one shape of its kind; the shapes no subject was given are extra."""
    reading = read(image)
    free = list(reading.shapes)
    given = []
    for kind in subjects:
        match = next((f for f in free if f.kind == kind), None)
        given.append(match is not None)
        if match is not None:
            free.remove(match)
    return Score(given, len(free), reading.unflat_background)
