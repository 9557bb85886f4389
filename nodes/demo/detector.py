"""Reads the demo model's pictures back: the shapes it drew (their kind from geometry alone,
whatever their colour; their colour as a palette colour or none), and how much of the
background is not the flat grey the training pictures have.

The kind is decided from the region's box: how much of it the region fills and which of
its corners it covers (a square covers all four, an upright triangle the bottom two, a
circle none). A square drawn with concave sides still covers its corners: it is a square.
A blob that fits none of the three is no shape (kind None), and counts as damage."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .shapes import BACKGROUND, COLOURS

FOREGROUND = 0.3              # RGB distance in [0, 1] units from the background: a drawn pixel
FLAT = 0.08                   # background pixels nearer than this to the background colour are flat
MAX_COLOUR_DISTANCE = 0.3     # a region's median colour this near a palette colour is drawn in it
SPLIT_DISTANCE = 0.4          # two colours of one region this far apart are two touching shapes
MIN_AREA = 80                 # pixels at 128 px; smaller blobs are noise (RADII give 500 and more)
CORNER = 0.15                 # a corner patch's side, as a share of the box's side
BACKGROUND_MARGIN = 3         # pixels around a region left out of the background (its soft edge)
DAMAGED_BACKGROUND = 0.1      # a picture with more of its background than this share unflat is damaged


@dataclass(frozen=True)
class Found:
    kind: str | None     # None: a region that is no shape
    colour: str | None   # None: drawn in no palette colour (an orange for red, say)
    area: int
    box: tuple           # x0, y0, x1, y1 (exclusive)

    @property
    def subject(self) -> str | None:
        return f"{self.colour} {self.kind}" if self.kind and self.colour else None


@dataclass(frozen=True)
class Reading:
    shapes: list          # [Found], largest first
    unflat_background: float   # share of the background's pixels off its flat grey


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
    """Circle, square, triangle or None, from how the region fills its box and its corners."""
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
    return None


def _palette(dtype) -> torch.Tensor:
    return torch.tensor(list(COLOURS.values()), dtype=dtype)


def _colour_name(pixels: torch.Tensor) -> str | None:
    """The palette colour a region's (N, 3) pixels are drawn in, by their median, or None."""
    distance, index = torch.cdist(pixels.median(dim=0).values[None], _palette(pixels.dtype))[0].min(dim=0)
    return list(COLOURS)[int(index)] if distance < MAX_COLOUR_DISTANCE else None


def _split_by_colour(pixels: torch.Tensor, region: torch.Tensor) -> list[torch.Tensor]:
    """A region as one, or as the touching shapes of far-apart colours it holds (each
    colour with MIN_AREA pixels and a sixth of the region or more; the soft edges between
    them go to the nearer)."""
    distance = torch.cdist(pixels, _palette(pixels.dtype))
    counts = torch.bincount(distance.argmin(dim=1), minlength=len(COLOURS))
    classes = (counts >= max(MIN_AREA, len(pixels) / 6)).nonzero()[:, 0]
    if len(classes) < 2:
        return [region]
    nearest = classes[distance[:, classes].argmin(dim=1)]
    means = torch.stack([pixels[nearest == c].mean(dim=0) for c in classes])
    if torch.cdist(means, means).max() < SPLIT_DISTANCE:
        return [region]
    parts = []
    for c in classes:
        mask = torch.zeros_like(region)
        mask[region] = nearest == c
        labels = components(mask)
        parts += [labels == label for label in labels.unique()[1:]]
    return parts


def read(image: torch.Tensor) -> Reading:
    """What a (3, H, W) picture in [0, 1] shows."""
    image = image.float().clamp(0, 1)
    off_background = (image - torch.tensor(BACKGROUND).view(3, 1, 1)).norm(dim=0)
    drawn = off_background > FOREGROUND
    labels = components(drawn)
    found, covered = [], torch.zeros_like(drawn)
    for label in labels.unique()[1:]:
        region = labels == label
        for part in _split_by_colour(image[:, region].T, region):
            area = int(part.sum())
            if area < MIN_AREA:
                continue
            covered |= part
            ys, xs = part.nonzero(as_tuple=True)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            found.append(Found(shape_kind(part), _colour_name(image[:, part].T), area, box))
    margin = 2 * BACKGROUND_MARGIN + 1
    near_drawn = F.max_pool2d(covered[None, None].float(), margin, stride=1, padding=BACKGROUND_MARGIN)[0, 0] > 0
    background = ~near_drawn      # small blobs stay in it: they are its unflat part
    unflat = ((off_background > FLAT) & background).sum() / background.sum().clamp_min(1)
    return Reading(sorted(found, key=lambda f: -f.area), float(unflat))


def detect(image: torch.Tensor) -> list[Found]:
    """The shapes in a (3, H, W) picture in [0, 1], largest first."""
    return read(image).shapes


def present(subjects: list[str], image: torch.Tensor) -> list[bool]:
    """For each subject ('red circle'), whether the picture shows it: its kind in its colour."""
    shown = {f.subject for f in detect(image)}
    return [s in shown for s in subjects]


@dataclass(frozen=True)
class Score:
    """A picture against the subjects its prompt asked for."""
    kinds: list           # per subject: a shape of its kind, whatever its colour (not neglected)
    bound: list           # per subject: a shape of its kind in its colour (its attribute bound)
    extra: int            # regions beyond one per subject: blobs, shapes not asked for, repeats
    unflat_background: float

    @property
    def damaged(self) -> bool:
        return self.extra > 0 or self.unflat_background > DAMAGED_BACKGROUND


def score(subjects: list[str], image: torch.Tensor) -> Score:
    """Each subject ('red circle') is given one shape: of its kind and colour if there is
    one, else of its kind; the shapes no subject was given are extra."""
    reading = read(image)
    free = list(reading.shapes)
    given = [None] * len(subjects)
    for exact in (True, False):
        for number, subject in enumerate(subjects):
            if given[number] is None:
                kind = subject.split()[-1]
                match = next((f for f in free if (f.subject == subject if exact else f.kind == kind)), None)
                if match is not None:
                    given[number] = match
                    free.remove(match)
    return Score([f is not None for f in given], [f is not None and f.subject == s for f, s in zip(given, subjects)],
                 len(free), reading.unflat_background)
