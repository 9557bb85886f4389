"""Whether a word's cross-attention lies on the shape it names, and the term that teaches
the demo model to put it there.

The metrics are DAAM's and TokenCompose's: the pointing game (the map's strongest cell
lies on the shape, its mask dilated by one cell) and the share of the map's mass inside
the shape. The training term is TokenCompose's per-cell binary cross-entropy to the
shape's mask (Wang et al., CVPR 2024), taken on the map as Attend-and-Excite reads it
(after its x100 softmax over the prompt's tokens), so that the kind word wins its shape's
cells there and the peak the loss reads tells a drawn shape from a missing one.
Pure torch: maps and masks are (..., cells) over the same grid."""
import torch
import torch.nn.functional as F


def mass_inside(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass on its shape, the mask being each cell's covered share."""
    return (attention * mask).sum(-1) / attention.sum(-1).clamp_min(1e-12)


def pointing_hits(attention: torch.Tensor, mask: torch.Tensor, side: int) -> torch.Tensor:
    """Whether each map's strongest cell lies on its shape (cells it covers by half or more,
    and its most covered cell, then dilated by one cell) on a side x side grid."""
    on = (mask >= 0.5) | (mask == mask.amax(-1, keepdim=True))
    grid = on.float().reshape(-1, 1, side, side)
    dilated = F.max_pool2d(grid, 3, stride=1, padding=1).reshape(on.shape) > 0
    return dilated.gather(-1, attention.argmax(-1, keepdim=True))[..., 0]


def grounding_loss(readout: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over maps of the per-cell binary cross-entropy of a word's sharpened map (each
    cell's share of the x100 token softmax) to its shape's mask (each cell's covered share)."""
    return F.binary_cross_entropy(readout.clamp(1e-6, 1 - 1e-6), mask, reduction="none").mean(-1).mean()
