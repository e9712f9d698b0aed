"""Linear CKA between layer representations, accumulated over minibatches.

Centred kernel alignment (Kornblith et al. 2019) compares two representations of the same
``n`` examples through their Gram matrices ``K = X X^T`` and ``L = Y Y^T``:
``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``. Layer outputs are too large to hold for
a whole test set, so, as in Nguyen et al. ("Do wide and deep networks learn the same
things?", ICLR 2021), the *unbiased* HSIC estimator (Song et al. 2012) is computed on each
minibatch and the three HSIC terms are averaged over the minibatches before the ratio is
taken. Averaging per-batch CKA values instead would be biased, and the biased HSIC estimator
would make the result depend on the batch size.

The unbiased estimator needs at least 4 examples per batch (it divides by ``n - 3``); batches
are formed by :func:`batch_bounds`, which never leaves a smaller remainder. Known cases,
checked in the tests against a direct full-batch computation: a representation against
itself, or against an orthogonal rotation or isotropic scaling of itself, gives 1; against
independent noise, about 0.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MIN_BATCH", "batch_bounds", "cka_from_hsic", "gram", "hsic_matrix", "linear_cka"]

MIN_BATCH = 4  # the unbiased HSIC estimator divides by n - 3


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches covering ``n`` items, none below 4 items.

    A remainder smaller than :data:`MIN_BATCH` joins the batch before it.

    Raises:
        ValueError: fewer than 4 items, or a batch size below 4.
    """
    if batch_size < MIN_BATCH:
        raise ValueError(f"CKA needs batches of at least {MIN_BATCH} images, got {batch_size}")
    if n < MIN_BATCH:
        raise ValueError(f"CKA needs at least {MIN_BATCH} images, got {n}")
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_BATCH:
        (a, _), (_, b) = bounds[-2], bounds[-1]
        bounds[-2:] = [(a, b)]
    return bounds


def gram(x: torch.Tensor) -> torch.Tensor:
    """The linear Gram matrix ``X X^T`` of ``(n, ...)`` features, flattened, in float64."""
    flat = x.reshape(x.shape[0], -1).double()  # (n, d)
    return flat @ flat.T  # (n, n)


def hsic_matrix(grams_a: torch.Tensor, grams_b: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC between every Gram of ``grams_a`` and every Gram of ``grams_b``.

    Args:
        grams_a: ``(A, n, n)`` Gram matrices of one minibatch (one per layer).
        grams_b: ``(B, n, n)`` Gram matrices of the same examples.

    Returns:
        ``(A, B)`` float64: ``HSIC_1(K_a, L_b)`` (Song et al. 2012, eq. 5)::

            1/(n(n-3)) [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1]

        with ``K~``, ``L~`` the Grams with their diagonals set to zero.
    """
    n = grams_a.shape[-1]
    if n < MIN_BATCH:
        raise ValueError(f"The unbiased HSIC needs at least {MIN_BATCH} examples, got {n}")
    eye = torch.eye(n, dtype=torch.bool, device=grams_a.device)
    k = grams_a.masked_fill(eye, 0.0)
    m = grams_b.masked_fill(eye, 0.0)
    trace = torch.einsum("aij,bij->ab", k, m)  # tr(K L) for symmetric K, L
    rows_k, rows_m = k.sum(2), m.sum(2)  # (A, n), (B, n): K 1 and L 1
    total = rows_k.sum(1)[:, None] * rows_m.sum(1)[None, :]  # 1'K1 1'L1
    cross = rows_k @ rows_m.T  # 1'K L 1 = (K 1) . (L 1)
    return (trace + total / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def cka_from_hsic(xy: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """CKA from HSIC sums accumulated over the same minibatches.

    ``xy`` is ``(A, B)``; ``xx`` and ``yy`` are the ``(A,)`` and ``(B,)`` self terms. Where a
    representation is constant (self-HSIC 0) CKA is undefined and given as NaN.
    """
    denom = np.sqrt(np.clip(np.outer(xx, yy), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, xy / denom, np.nan)


def linear_cka(x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> float:
    """Minibatch linear CKA of two ``(n, ...)`` representations of the same examples.

    ``batch_size=None`` uses one batch of all ``n`` examples.
    """
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"CKA compares the same examples: {n} vs {y.shape[0]} rows")
    xy = xx = yy = 0.0
    for a, b in batch_bounds(n, batch_size or n):
        kx, ky = gram(x[a:b])[None], gram(y[a:b])[None]
        xy += float(hsic_matrix(kx, ky))
        xx += float(hsic_matrix(kx, kx))
        yy += float(hsic_matrix(ky, ky))
    return float(cka_from_hsic(np.array([[xy]]), np.array([xx]), np.array([yy]))[0, 0])
