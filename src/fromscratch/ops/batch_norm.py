r"""Batch normalisation, channels-last: x has shape (M, C), statistics per column.
Derivation: docs/derivations/batch_norm.md.

Forward, per channel c over the m rows of the batch:

    mu = mean(x)     var = mean((x - mu)^2)   (biased: it normalises)
    r = 1 / sqrt(var + eps)      xhat = (x - mu) * r      y = w * xhat + b

Backward with batch statistics (derivation eq. 6):

    dx = w * r * (dy - sum(dy) / m - xhat * sum(dy * xhat) / m)
    dw = sum(dy * xhat)          db = sum(dy)

With fixed (running) statistics mu and var are constants and dx = w * r * dy.
Across processes the two sums and m are global; ``dx_from_sums`` takes them.
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, namespace, vecdot


class Cache(NamedTuple):
    xhat: Array
    rstd: Array  # (C,)
    weight: Array | None
    has_bias: bool
    batch_stats: bool  # were mu and var functions of this batch?


def moments(x: Array) -> tuple[Array, Array]:
    """Per-channel mean and M2 = sum((x - mean)^2) of x (M, C), two-pass."""
    xp = namespace(x)
    mean = xp.mean(x, axis=0)
    xc = x - mean
    return mean, vecdot(xc, xc, axis=0)


def combine_moments(counts: Array, means: Array, m2s: Array) -> tuple[Array, Array, Array]:
    r"""Chan et al.'s parallel combination of per-part (count, mean, M2), stacked on axis 0.

        n = sum n_i     mu = sum n_i mu_i / n     M2 = sum M2_i + sum n_i (mu_i - mu)^2

    Parts with n_i = 0 contribute nothing. Returns (n, mu, M2).
    """
    xp = namespace(means)
    n = xp.sum(counts, axis=0)
    w = counts[:, None]
    mu = xp.sum(w * means, axis=0) / n
    d = means - mu
    return n, mu, xp.sum(m2s, axis=0) + xp.sum(w * d * d, axis=0)


def forward(x: Array, weight: Array | None = None, bias: Array | None = None,
            eps: float = 1e-5, mean: Array | None = None, var: Array | None = None,
            batch_stats: bool = True) -> tuple[Array, Cache, Array, Array]:
    """Normalise x (M, C). Without ``mean``/``var`` they are the batch's own (biased).

    Returns (y, cache, mean, var): the statistics used, for the running-average update.
    """
    xp = namespace(x)
    if mean is None:
        mean, m2 = moments(x)
        var = m2 / x.shape[0]
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = (x - mean) * rstd
    y = xhat * weight if weight is not None else xhat
    if bias is not None:
        y = y + bias
    return y, Cache(xhat, rstd, weight, bias is not None, batch_stats), mean, var


def sums(dy: Array, cache: Cache) -> tuple[Array, Array]:
    """The backward's two column reductions: sum(dy) and sum(dy * xhat) (= db, dw)."""
    xp = namespace(dy)
    return xp.sum(dy, axis=0), vecdot(dy, cache.xhat, axis=0)


def dx_from_sums(dy: Array, cache: Cache, sum_dy: Array, sum_dy_xhat: Array,
                 count: float) -> Array:
    """dx = w r (dy - sum(dy)/m - xhat sum(dy xhat)/m), sums and m possibly global."""
    scale = cache.rstd * cache.weight if cache.weight is not None else cache.rstd
    if not cache.batch_stats:
        return dy * scale                              # d(mu)/dx = d(var)/dx = 0
    dx = cache.xhat * (sum_dy_xhat / count)
    dx += sum_dy / count
    dx -= dy
    dx *= -scale
    return dx


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None, Array | None]:
    """Returns (dx, dweight, dbias) for one process."""
    sum_dy, sum_dy_xhat = sums(dy, cache)
    dx = dx_from_sums(dy, cache, sum_dy, sum_dy_xhat, dy.shape[0])
    return (dx, sum_dy_xhat if cache.weight is not None else None,
            sum_dy if cache.has_bias else None)


def update_running(running_mean: Array, running_var: Array, mean: Array, var: Array,
                   count: int, momentum: float) -> tuple[Array, Array]:
    """running <- (1 - momentum) running + momentum batch; the stored variance is unbiased."""
    unbiased = var * (count / (count - 1))
    return ((1.0 - momentum) * running_mean + momentum * mean,
            (1.0 - momentum) * running_var + momentum * unbiased)
