"""Subject maps as pictures: coloured heatmap tiles and overlays on the decoded
image, each tile labelled with its subject, and as masks. Images are (N, H, W, 3) floats
in [0, 1], masks (N, H, W)."""
import functools

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .record import AttentionRecord

# A perceptually ordered dark-to-bright ramp (black, indigo, crimson, orange, pale yellow):
# a weak map stays dark, so a neglected subject is seen at a glance.
RAMP = torch.tensor([[0.00, 0.00, 0.02], [0.26, 0.04, 0.41], [0.73, 0.21, 0.33],
                     [0.98, 0.55, 0.04], [0.99, 1.00, 0.64]])


def colorize(values: torch.Tensor) -> torch.Tensor:
    """(..., H, W) in [0, 1] -> (..., H, W, 3) along RAMP; NaN shows as 0."""
    position = values.nan_to_num(0.0).clamp(0, 1) * (len(RAMP) - 1)
    low = position.floor().long().clamp(max=len(RAMP) - 2)
    frac = (position - low)[..., None]
    ramp = RAMP.to(values)
    return ramp[low] * (1 - frac) + ramp[low + 1] * frac


def upsample(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, S, h, w) -> (B, S, H, W), bilinear."""
    return F.interpolate(maps.float(), size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)


@functools.lru_cache(maxsize=8)
def font(size: int):
    return ImageFont.load_default(size=size)


def label(tiles: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Writes each text on a dark band at the top of its tile."""
    out = []
    for tile, text in zip(tiles, texts):
        picture = Image.fromarray((tile.clamp(0, 1).numpy() * 255).round().astype(np.uint8))
        size = max(10, min(picture.width, picture.height) // 14)
        draw = ImageDraw.Draw(picture, "RGBA")
        left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font(size))
        margin = size // 3
        draw.rectangle((0, 0, right - left + 2 * margin, bottom - top + 2 * margin), fill=(0, 0, 0, 170))
        draw.multiline_text((margin - left, margin - top), text, font=font(size), fill=(255, 255, 255, 255))
        out.append(torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0))
    return torch.stack(out)


def tile_texts(labels: list[str], maps: torch.Tensor, caption: str) -> list[str]:
    """'cat  peak 0.82' over the caption, for every row and subject of (B, S, h, w) maps."""
    peaks = maps.amax(dim=(-1, -2))
    return [f"{name}  peak {peak:.2f}\n{caption}" for row in peaks.tolist() for name, peak in zip(labels, row)]


def heatmap_tiles(maps: torch.Tensor, labels: list[str], height: int, width: int, caption: str) -> torch.Tensor:
    """(B, S, h, w) maps on their absolute [0, 1] scale -> (B*S, H, W, 3) labelled tiles."""
    colored = colorize(upsample(maps, height, width)).flatten(0, 1)
    return label(colored, tile_texts(labels, maps, caption))


def heatmap_views(record: AttentionRecord, batch: int, height: int, width: int, step: int) -> torch.Tensor:
    """The tiles a sampler shows: per image, every subject's mean map over the guided
    steps, then (step > 0) its map at that step; one dark tile per image when no step
    was guided."""
    if not record.maps:
        return label(torch.zeros(batch, height, width, 3), ["no guided step: nothing recorded"] * batch)
    selections = [record.select(0)] + ([record.select(step)] if step > 0 else [])
    per_image = [heatmap_tiles(maps, record.labels, height, width, caption).unflatten(0, (-1, len(record.labels)))
                 for maps, caption in selections]
    return torch.cat(per_image, dim=1).flatten(0, 1)


def overlay(images: torch.Tensor, maps: torch.Tensor, labels: list[str], opacity: float,
            caption: str) -> torch.Tensor:
    """Each subject's map, scaled to its own peak so its place shows even when weak,
    blended over its image: (B, H, W, 3) and (B or 1, S, h, w) -> (B*S, H, W, 3)."""
    if maps.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"the attention maps are for {maps.shape[0]} images but {images.shape[0]} images came "
                         "in: connect the images decoded from the same sampler run")
    batch, height, width, _ = images.shape
    scaled = maps / maps.amax(dim=(-1, -2), keepdim=True).clamp(min=1e-8)
    colored = colorize(upsample(scaled, height, width)).expand(batch, -1, -1, -1, -1)
    blended = images[:, None, ..., :3].float() * (1 - opacity) + colored * opacity
    return label(blended.flatten(0, 1), tile_texts(labels, maps.expand(batch, -1, -1, -1), caption))


def subject_masks(maps: torch.Tensor, height: int, width: int, threshold: float) -> torch.Tensor:
    """(B, S, h, w) maps -> (B*S, H, W) masks, image by image, each image's subjects in order:
    each map scaled to its own peak (1 where the subject's attention is strongest) and resized
    to the image; threshold 0 keeps the soft values, above 0 gives 1 where the scaled map
    reaches it and 0 elsewhere."""
    scaled = maps / maps.amax(dim=(-1, -2), keepdim=True).clamp(min=1e-8)
    soft = upsample(scaled, height, width).flatten(0, 1)
    return soft if threshold <= 0 else (soft >= threshold).float()
