"""Finds the coloured shapes of a picture (colour classes, connected components, the
geometry of each component's box), to say which subjects of a prompt it shows."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .shapes import BACKGROUND, COLOURS

MAX_COLOUR_DISTANCE = 0.3     # RGB distance in [0, 1] units to the nearest palette colour
MIN_AREA = 80                 # pixels at 128 px; smaller blobs are noise (RADII give 500 and more)


@dataclass(frozen=True)
class Found:
    colour: str
    kind: str | None     # None: a blob of the colour that is no shape
    area: int
    box: tuple           # x0, y0, x1, y1 (exclusive)

    @property
    def subject(self) -> str | None:
        return f"{self.colour} {self.kind}" if self.kind else None


def colour_classes(image: torch.Tensor) -> torch.Tensor:
    """(H, W) index into COLOURS of each pixel, -1 for the background and for pixels
    near no colour of the palette."""
    palette = torch.tensor([BACKGROUND, *COLOURS.values()], dtype=image.dtype)
    distance = torch.cdist(image.flatten(1).T, palette)            # (H*W, 1 + colours)
    nearest, index = distance.min(dim=1)
    index = torch.where(nearest < MAX_COLOUR_DISTANCE, index - 1, -1)
    return index.view(image.shape[1:])


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
    """Circle, square or triangle from a region's box: how much of the box it fills,
    how square the box is, and how much of it sits in the box's top half."""
    rows, cols = region.any(dim=1).nonzero(), region.any(dim=0).nonzero()
    box = region[rows.min():rows.max() + 1, cols.min():cols.max() + 1].float()
    height, width = box.shape
    if not 0.7 < height / width < 1.4:
        return None
    fill = box.mean().item()
    top = box[:height // 2].sum().item() / box.sum().item()
    if top < 0.38 and 0.35 < fill < 0.65:
        return "triangle"
    if fill >= 0.88:
        return "square"
    if 0.65 <= fill < 0.88 and top >= 0.42:
        return "circle"
    return None


def detect(image: torch.Tensor) -> list[Found]:
    """The shapes in a (3, H, W) picture in [0, 1], largest first."""
    classes = colour_classes(image.float().clamp(0, 1))
    found = []
    for index, colour in enumerate(COLOURS):
        labels = components(classes == index)
        for label in labels.unique()[1:]:
            region = labels == label
            area = int(region.sum())
            if area < MIN_AREA:
                continue
            ys, xs = region.nonzero(as_tuple=True)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            found.append(Found(colour, shape_kind(region), area, box))
    return sorted(found, key=lambda f: -f.area)


def present(subjects: list[str], image: torch.Tensor) -> list[bool]:
    """For each subject ('red circle'), whether the picture shows it."""
    shown = {f.subject for f in detect(image)}
    return [s in shown for s in subjects]
