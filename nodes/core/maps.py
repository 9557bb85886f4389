"""From recorded cross-attention to one score per subject (Chefer et al., 2023, sec. 3).

The averaged attention of the guidance pass is sliced to the prompt's real tokens,
sharpened by a x100 softmax over tokens, smoothed by a small Gaussian, and each
subject is scored by its spatial peak (the strongest of its token pieces).
"""
import torch
import torch.nn.functional as F

SHARPENING = 100.0


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) -> (B, N, H*D)."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, H, N, T) softmax(q k^T / sqrt(d)) in fp32, from (B, N, H*D) queries and (B, T, H*D) keys."""
    qh, kh = split_heads(q, heads).float(), split_heads(k, heads).float()
    return torch.softmax(qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5, dim=-1)


def joint_text_probabilities(q: torch.Tensor, k: torch.Tensor, text_length: int) -> torch.Tensor:
    """(B, H, N - T, T) in fp32: each image query's attention to the T text keys, from (B, H, N, D)
    queries and keys of a joint [text, image] sequence (MMDiT), softmax over the whole sequence."""
    queries, keys = q[:, :, text_length:].float(), k.float()
    logits = queries @ keys.transpose(-1, -2) * queries.shape[-1] ** -0.5
    return torch.softmax(logits, dim=-1)[..., :text_length]


def gaussian_kernel(kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """The reference's 2-D kernel. It uses exp(-((x - mu) / (2 sigma))^2), not the
    textbook exp(-(x - mu)^2 / (2 sigma^2)); copied so the numbers match it exactly."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"smoothing kernel size must be odd and positive, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"smoothing sigma must be positive, got {sigma}")
    x = torch.arange(kernel_size, dtype=torch.float64)
    one_d = torch.exp(-(((x - (kernel_size - 1) / 2) / (2 * sigma)) ** 2))
    kernel = one_d[:, None] * one_d[None, :]
    return (kernel / kernel.sum()).float()


def kept_columns(token_count: int, chunk_length: int, end_columns: list[int], drop_from_end: bool,
                 has_start: bool = True) -> torch.Tensor:
    """Columns of the context that take part in the token softmax.

    Every chunk loses its start token (T5 has none). SD1.x (drop_from_end False) also loses
    only the chunk's last slot, as the reference's [1:-1]; models that pad with another
    token than the end token (SD2.x, SDXL, SD3's CLIP columns, Flux's T5) lose the end token
    and everything after it.
    """
    kept = []
    for chunk, start in enumerate(range(0, token_count, chunk_length)):
        stop = start + chunk_length - 1
        if drop_from_end and chunk < len(end_columns):
            stop = end_columns[chunk]
        kept.extend(range(start + int(has_start), min(stop, token_count)))
    return torch.tensor(kept, dtype=torch.long)


def token_softmax(attention: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(..., T) attention probabilities -> (..., len(kept)): the kept columns sharpened by the
    x100 softmax, the map of every prompt token as the loss reads it."""
    return torch.softmax(attention[..., kept] * SHARPENING, dim=-1)


class SubjectScorer:
    """Smoothed peak attention per subject; the column bookkeeping is done once here,
    not at every guidance pass."""

    def __init__(self, subjects: list[list[int]], kept: torch.Tensor, kernel: torch.Tensor):
        """subjects: context columns of each subject (several for a multi-piece word);
        kept: the columns that take part in the token softmax."""
        position = {int(c): i for i, c in enumerate(kept)}
        columns = [c for s in subjects for c in s]
        if any(c not in position for c in columns):
            raise ValueError("a subject column is not among the scored prompt tokens")
        self.kept = kept
        self.picked = torch.tensor([position[c] for c in columns], dtype=torch.long)
        self.owner = torch.tensor([i for i, s in enumerate(subjects) for _ in s], dtype=torch.long)
        self.count = len(subjects)
        self.one_piece_each = len(columns) == self.count
        self.kernel = kernel[None, None]

    def to(self, device) -> "SubjectScorer":
        """Its index and kernel tensors on `device`, once, rather than copied at every pass."""
        for name in ("kept", "picked", "owner", "kernel"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def maps(self, attention: torch.Tensor) -> torch.Tensor:
        """attention: (B, h, w, T) averaged over layers and heads -> (B, S, h, w): each
        subject's smoothed map, the strongest of its pieces at every position."""
        batch, height, width, _ = attention.shape
        device = attention.device
        picked = token_softmax(attention, self.kept.to(device))[..., self.picked.to(device)]   # (B, h, w, C)
        pieces = picked.permute(0, 3, 1, 2).reshape(-1, 1, height, width)
        pad = self.kernel.shape[-1] // 2
        # The reference reflects; a map no larger than the padding (a tiny image, a large
        # kernel) cannot be reflected, so its edge is repeated instead.
        mode = "reflect" if pad < min(height, width) else "replicate"
        smoothed = F.conv2d(F.pad(pieces, (pad,) * 4, mode=mode), self.kernel.to(pieces))
        smoothed = smoothed.reshape(batch, -1, height * width)                  # (B, C, hw)
        if self.one_piece_each:
            return smoothed.view(batch, self.count, height, width)
        owner = self.owner.to(device).view(1, -1, 1).expand_as(smoothed)
        merged = smoothed.new_zeros(batch, self.count, height * width).scatter_reduce(
            1, owner, smoothed, "amax", include_self=False)
        return merged.view(batch, self.count, height, width)

    def __call__(self, attention: torch.Tensor) -> torch.Tensor:
        """(B, h, w, T) -> (B, S): each subject's spatial peak (the maximum of maxima
        over its pieces, as the reference scores a multi-piece word)."""
        return self.maps(attention).amax(dim=(-1, -2))
