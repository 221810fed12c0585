"""Blockwise sliding-window attention equals the dense masked version, values and
gradients, for every shape class it handles differently."""

import pytest
import torch
import torch.nn.functional as F

from untok.nn.attention import LocalWindow, local_causal_mask


def segments_of(B: int, T: int, seed: int) -> torch.Tensor:
    """Non-decreasing segment ids: a new segment at about one position in 20."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, generator=g) < 0.05).long().cumsum(1)


@pytest.mark.parametrize("T,size", [(7, 8), (30, 8), (64, 64), (100, 64), (200, 64),
                                    (129, 128), (300, 96), (257, 200)])
@pytest.mark.parametrize("with_segments", [False, True])
def test_blockwise_equals_dense(T, size, with_segments):
    torch.manual_seed(T + size)
    B, H, d, e = 2, 3, 8, 16  # values wider than keys, as differential attention has
    q, k = torch.randn(2, B, H, T, d, dtype=torch.float64).unbind(0)
    v = torch.randn(B, H, T, e, dtype=torch.float64)
    segments = segments_of(B, T, T) if with_segments else None
    window = LocalWindow(size, segments)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    ours = window.attend(*inputs)
    reference_inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    mask = local_causal_mask(T, size, q.device, segments)
    reference = F.scaled_dot_product_attention(*reference_inputs, attn_mask=mask)
    assert ours.shape == (B, H, T, e)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(reference)
    ours.backward(grad)
    reference.backward(grad)
    for mine, theirs in zip(inputs, reference_inputs, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-10)


def test_a_unit_never_sees_past_its_window_or_the_future():
    """Changing key/value t moves only the outputs of t .. t + size - 1."""
    torch.manual_seed(0)
    T, size = 300, 70
    q, k, v = torch.randn(3, 1, 2, T, 8).unbind(0)
    base = LocalWindow(size).attend(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 150] += 5
    v2[:, :, 150] += 5
    moved = (LocalWindow(size).attend(q, k2, v2) - base).abs().amax(dim=(0, 1, 3)) > 0
    assert moved.nonzero().flatten().tolist() == list(range(150, 150 + size))
