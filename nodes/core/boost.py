"""Attention excitation without gradients, the rule of the document this package was
created from: in cross-attention the subject tokens' probabilities are multiplied by
alpha and every other token's (the start token and padding included) by beta.

Left unnormalised (the document's rule) a row's output is
    beta * A V + (alpha - beta) * P_S V,
P_S the subject columns' probabilities; renormalised it is that divided by
beta + (alpha - beta) * sum(P_S), which equals softmax(logits + log w) V: an additive bias
an optimized attention kernel takes as its mask.
"""
import math

import torch


def validate(alpha: float, beta: float):
    if not (alpha > 0 and beta > 0 and math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError(f"alpha and beta must be positive and finite (got alpha={alpha}, beta={beta})")


def logit_bias(subject_mask: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """(B, T) bool -> (B, T) float: log(alpha) on subject columns, log(beta) elsewhere."""
    return torch.where(subject_mask, math.log(alpha), math.log(beta))


def excited(base: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
            subject_mask: torch.Tensor, alpha: float, beta: float, renormalise: bool) -> torch.Tensor:
    """The excited output of rows whose plain attention output is `base`.

    q (B, N, H*D), k and v (B, T, H*D), base (B, N, H*D), subject_mask (B, T) bool. The
    probabilities are formed in fp32 and kept on the subject columns; the rest comes from `base`.
    """
    b, n, inner = q.shape
    dim = inner // heads
    qh = q.view(b, n, heads, dim).transpose(1, 2).float()
    kh, vh = (t.view(b, -1, heads, dim).transpose(1, 2).float() for t in (k, v))
    probs = torch.softmax(qh @ kh.transpose(-1, -2) * dim ** -0.5, dim=-1) * subject_mask[:, None, None, :]
    base_h = base.view(b, n, heads, dim).transpose(1, 2).float()
    out = beta * base_h + (alpha - beta) * (probs @ vh)
    if renormalise:
        out = out / (beta + (alpha - beta) * probs.sum(dim=-1, keepdim=True))
    return out.transpose(1, 2).reshape(b, n, inner).to(base.dtype)
