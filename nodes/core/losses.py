"""The Attend-and-Excite loss."""
import torch


def attend_excite_loss(peaks: torch.Tensor) -> torch.Tensor:
    """(B, S) subject peaks -> (B,) loss: the most neglected subject's 1 - peak."""
    return (1.0 - peaks).clamp(min=0.0).amax(dim=-1)
