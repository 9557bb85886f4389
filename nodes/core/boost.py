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

from .maps import attention_probabilities, merge_heads, split_heads


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
    probs = attention_probabilities(q, k, heads) * subject_mask[:, None, None, :]
    out = beta * split_heads(base, heads).float() + (alpha - beta) * (probs @ split_heads(v, heads).float())
    if renormalise:
        out = out / (beta + (alpha - beta) * probs.sum(dim=-1, keepdim=True))
    return merge_heads(out).to(base.dtype)
