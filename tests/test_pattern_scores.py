"""The sparse pattern scores of T-Free's word softmax against their dense definition."""

import pytest
import torch

from untok.nn.pattern_scores import pattern_scores, with_outside

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")


def case(seed: int = 0, words: int = 7, v: int = 16, n: int = 5):
    """Random patterns (dense Float64[words, v] and their CSR form with the outside
    column), outside weights, activations and a scale."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(words, v, generator=g, dtype=torch.float64) * \
        (torch.rand(words, v, generator=g) < 0.3)
    per_outside = torch.rand(words, generator=g, dtype=torch.float64)
    index = dense.nonzero().T
    sparse = with_outside(index, dense[index[0], index[1]], per_outside, v)
    p = torch.rand(n, v, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    return dense, per_outside, sparse, p, scale


def test_pattern_scores_equal_the_dense_formula_with_their_gradients():
    dense, per_outside, sparse, p, scale = case()
    got = pattern_scores(p, scale, *sparse)
    expected = scale * (dense @ p.T - torch.outer(per_outside, p.sum(-1)))
    torch.testing.assert_close(got, expected)
    upstream = torch.randn_like(got)
    grads = torch.autograd.grad((got * upstream).sum(), [p, scale])
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [p, scale])
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_pattern_scores_pass_gradcheck():
    _, _, sparse, p, scale = case(seed=1, words=4, v=6, n=3)
    assert torch.autograd.gradcheck(lambda a, s: pattern_scores(a, s, *sparse), (p, scale))
