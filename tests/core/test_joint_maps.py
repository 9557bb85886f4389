"""The joint attention's text probabilities (maps.joint_text_probabilities): a block of image queries at
a time with the logits recomputed in the backward, against the softmax over the whole joint sequence
written out."""
import pytest
import torch

from attend_and_excite.nodes.core import maps


def written_out(q, k, text_length, image_length, mask):
    """softmax over every key of the image queries' logits, kept on the text columns."""
    queries = q[:, :, text_length:text_length + image_length].double()
    logits = queries @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
    return torch.softmax(logits, dim=-1)[..., :text_length]


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
@pytest.mark.parametrize("block_bytes", [2 ** 28, 3 * 2 * 30 * 4])     # one block; blocks of 3 query rows
def test_values_and_gradients_equal_the_softmax_over_the_whole_sequence(monkeypatch, mask_kind, block_bytes):
    monkeypatch.setattr(maps, "LOGITS_BLOCK_BYTES", block_bytes)
    generator = torch.Generator().manual_seed(0)
    b, h, text, image, extra, d = 1, 2, 6, 20, 4, 8     # 4 later image tokens: no query of the maps
    q = torch.randn(b, h, text + image + extra, d, generator=generator, dtype=torch.float64).requires_grad_(True)
    k = torch.randn(b, h, text + image + extra, d, generator=generator, dtype=torch.float64).requires_grad_(True)
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(b, 1, 1, text + image + extra, dtype=torch.bool)
        mask[..., 2] = False                            # a masked text column (padding)
    elif mask_kind == "float":
        mask = torch.randn(b, 1, 1, text + image + extra, generator=generator)
    ours = maps.joint_text_probabilities(q, k, text, image, mask)
    reference = written_out(q, k, text, image, mask)
    assert ours.dtype == torch.float32 and ours.shape == (b, h, image, text)
    assert torch.allclose(ours.double(), reference, rtol=1e-5, atol=1e-7)
    weights = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((ours.double() * weights).sum(), (q, k))
    expected = torch.autograd.grad((reference * weights).sum(), (q, k))
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    if mask_kind == "bool":
        assert (ours[..., 2] == 0).all()


def test_the_backward_keeps_no_matrix_over_the_joint_sequence():
    """What autograd saves: q, k (fp32 copies) and one log-sum-exp per query, not (B, H, I, N)."""
    saved = []
    q = torch.randn(1, 2, 70, 8, requires_grad=True)
    k = torch.randn(1, 2, 70, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        maps.joint_text_probabilities(q, k, 6)
    assert max(torch.Size(s).numel() for s in saved) <= 2 * 70 * 8 and (1, 2, 64, 70) not in saved
