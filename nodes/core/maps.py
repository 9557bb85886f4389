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


# The largest block of logits (bytes) the text probabilities hold at once: a few hundred MB, not the
# (B, H, I, N) matrix of a megapixel image (gigabytes per block).
LOGITS_BLOCK_BYTES = 2 ** 28


class _TextProbabilities(torch.autograd.Function):
    """softmax(q k^T + bias) kept on the first T key columns, a block of queries at a time. It saves q, k
    and each query's log-sum-exp, and recomputes the logits in the backward: the full probability matrix
    over the joint sequence is never kept. With P the softmax over every key and p = P[:T], the gradient
    of p_t in logit j is p_t (delta_tj - P_j): dL/dlogits = [g * p, 0] - P * sum_t(g_t p_t)."""

    @staticmethod
    def forward(ctx, q, k, bias, text_length: int):
        ctx.rows = _block_rows(q, k)
        ctx.text_length = text_length
        lse = q.new_empty(q.shape[:-1])
        out = q.new_empty(*q.shape[:-1], text_length)
        for rows, logits in _logit_blocks(q, k, bias, ctx.rows):
            lse[..., rows] = torch.logsumexp(logits, dim=-1)
            out[..., rows, :] = torch.exp(logits[..., :text_length] - lse[..., rows, None])
        ctx.save_for_backward(q, k, lse, bias)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, lse, bias = ctx.saved_tensors
        t = ctx.text_length
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)
        for rows, logits in _logit_blocks(q, k, bias, ctx.rows):
            probabilities = torch.exp(logits - lse[..., rows, None])
            weighted = grad[..., rows, :] * probabilities[..., :t]
            dlogits = probabilities.mul_(-weighted.sum(dim=-1, keepdim=True))
            dlogits[..., :t] += weighted
            dq[..., rows, :] = dlogits @ k
            dk += dlogits.transpose(-1, -2) @ q[..., rows, :]
        return dq, dk, None, None


def _block_rows(q: torch.Tensor, k: torch.Tensor) -> int:
    b, h, _, _ = q.shape
    return max(1, LOGITS_BLOCK_BYTES // (b * h * k.shape[-2] * q.element_size()))


def _logit_blocks(q, k, bias, rows: int):
    """(query rows, their logits (B, H, rows, N)) for each block of `rows` queries."""
    for start in range(0, q.shape[-2], rows):
        block = slice(start, min(start + rows, q.shape[-2]))
        logits = q[..., block, :] @ k.transpose(-1, -2)
        if bias is not None:
            logits = logits + (bias[..., block, :] if bias.shape[-2] > 1 else bias)
        yield block, logits


def joint_text_probabilities(q: torch.Tensor, k: torch.Tensor, text_length: int, image_length: int | None = None,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, I, T) in fp32: the attention of the first I image queries (all by default) to the T text
    keys, from (B, H, N, D) queries and keys of a joint [text, image] sequence, softmax over the whole
    sequence. mask: the attention call's (bool: True attends; float: added to the logits), as ComfyUI's
    attention takes it: (queries or 1, keys), with a batch and then a heads dimension where it has them."""
    stop = None if image_length is None else text_length + image_length
    queries = q[:, :, text_length:stop].float() * q.shape[-1] ** -0.5
    bias = None
    if mask is not None:
        mask = mask[None] if mask.ndim == 2 else mask
        mask = mask[:, None] if mask.ndim == 3 else mask
        mask = mask[..., text_length:stop, :] if mask.shape[-2] > 1 else mask
        bias = torch.zeros(mask.shape, device=q.device).masked_fill(~mask, float("-inf")) \
            if mask.dtype == torch.bool else mask.float()
    return _TextProbabilities.apply(queries, k.float(), bias, text_length)


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
