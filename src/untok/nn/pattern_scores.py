"""Scores of many sparse patterns against a multi-label head's activations, in one product.

A T-Free word is a set of ids (its pattern) among the head's v outputs; its score is the
weighted mean activation inside the pattern minus the mean outside, times a temperature.
For D words and N positions that is a sparse product and a rank-one correction::

    S = scale * (W @ p.T - u total.T)        Float[D, N]

with ``W`` (Float[D, v], sparse) the patterns' weights, ``u`` (Float[D]) each word's
``1 / (v - |w|)`` and ``total`` (Float[N]) the sum of each position's activations. Both
terms are one sparse product: ``W`` with ``-u`` as an extra column (:func:`with_outside`)
times the activations with ``total`` as an extra one, the scale applied to those (N x
(v + 1) numbers rather than D x N).

:class:`SparseProduct` has a backward pass of its own: autograd's would transpose ``W`` on
every step (a sort of all its entries) and copy the [D, N] gradient between layouts,
which cost more than the product. The scores stay in the [D, N] layout the sparse product
writes; reductions over the words run along dim 0.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch


class SparseProduct(torch.autograd.Function):
    """``W @ x`` for a sparse CSR ``W`` (Float[D, K]) given with its transpose (so that
    the backward pass needs none) and a dense ``x`` (Float[K, N]); gradient to ``x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weights: torch.Tensor,
                weights_t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weights_t)
        return torch.sparse.mm(weights, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (weights_t,) = ctx.saved_tensors
        return torch.sparse.mm(weights_t, grad.contiguous()), None, None


def with_outside(index: torch.Tensor, values: torch.Tensor, per_outside: torch.Tensor,
                 hash_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The patterns (entries ``index`` Long[2, nnz] with ``values``) and ``-per_outside``
    as column ``hash_size``, as CSR matrices Float[D, v + 1] and its transpose."""
    words = len(per_outside)
    rows = torch.arange(words)
    index = torch.cat([index, torch.stack([rows, torch.full_like(rows, hash_size)])], 1)
    values = torch.cat([values, -per_outside])
    matrix = torch.sparse_coo_tensor(index, values, (words, hash_size + 1),
                                     check_invariants=True)
    with warnings.catch_warnings():  # CSR is "beta", and 60x faster than COO here
        warnings.simplefilter("ignore", UserWarning)
        return matrix.coalesce().to_sparse_csr(), matrix.t().coalesce().to_sparse_csr()


def pattern_scores(p: torch.Tensor, scale: torch.Tensor, weights: torch.Tensor,
                   weights_t: torch.Tensor) -> torch.Tensor:
    """Float[D, N] scores (see the module's docstring) of the activations ``p`` Float[N, v]
    against the patterns of :func:`with_outside`."""
    augmented = torch.cat([p, p.sum(-1, keepdim=True)], -1) * scale  # (N, v + 1)
    return SparseProduct.apply(augmented.T, weights, weights_t)
