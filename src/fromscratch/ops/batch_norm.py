r"""Batch normalisation, channels-last: x has shape (M, C), statistics per column.
Derivation: docs/derivations/batch_norm.md.

Forward, per channel c over the m rows of the batch (derivation eqs. 1-4):

    mu = mean(x)     var = mean((x - mu)^2)   (biased: it normalises)
    r = 1 / sqrt(var + eps)      xhat = (x - mu) * r      y = w * xhat + b

Backward with batch statistics (eqs. 5 and 7):

    dx = w * r * (dy - sum(dy) / m - xhat * sum(dy * xhat) / m)
    dw = sum(dy * xhat)          db = sum(dy)

With fixed (running) statistics mu and var are constants and dx = w * r * dy (eq. 8).
Across processes the two sums and m are global; ``dx_from_sums`` takes them. The running
averages (eqs. 9, 10) store the unbiased variance.
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, addcmul, imul, mul, namespace, sub, sum_rows
from .layer_norm import affine


class Cache(NamedTuple):
    x: Array
    mean: Array  # (C,)
    rstd: Array  # (C,)
    weight: Array | None
    has_bias: bool
    batch_stats: bool  # were mu and var functions of this batch?


def moments(x: Array) -> tuple[Array, Array]:
    """Per-channel mean and M2 = sum((x - mean)^2) of x (M, C), two-pass."""
    mean, m2, _ = _moments(x)
    return mean, m2


def _moments(x: Array) -> tuple[Array, Array, Array]:
    """(mean, M2, spare): the two passes, and the new array that held (x - mean)^2, free
    for the caller to reuse."""
    mean = sum_rows(x) / x.shape[0]                                        # (1)
    xc = x - mean
    sq = imul(xc, xc)
    return mean, sum_rows(sq), sq                                          # (2) times m


def combine_moments(counts: Array, means: Array, m2s: Array) -> tuple[Array, Array, Array]:
    r"""Chan et al.'s parallel combination of per-part (count, mean, M2), stacked on axis 0.

        n = sum n_i     mu = sum n_i mu_i / n     M2 = sum M2_i + sum n_i (mu_i - mu)^2

    Parts with n_i = 0 contribute nothing, even though ``moments`` of an empty part gives
    mean NaN (0/0): their mean and M2 are replaced by 0 first. Returns (n, mu, M2).
    """
    xp = namespace(means)
    n = xp.sum(counts, axis=0)
    w = counts[:, None]
    means = xp.where(w > 0, means, xp.zeros_like(means))
    m2s = xp.where(w > 0, m2s, xp.zeros_like(m2s))
    mu = xp.sum(w * means, axis=0) / n
    d = means - mu
    return n, mu, xp.sum(m2s, axis=0) + xp.sum(w * d * d, axis=0)


def forward(x: Array, weight: Array | None = None, bias: Array | None = None,
            eps: float = 1e-5, mean: Array | None = None, var: Array | None = None,
            batch_stats: bool = True) -> tuple[Array, Cache, Array, Array]:
    """Normalise x (M, C). Without ``mean``/``var`` they are the batch's own (biased).

    Returns (y, cache, mean, var): the statistics used, for the running-average update.
    The cache keeps x, mu and r (not xhat): y is the one new full-size array.
    """
    xp = namespace(x)
    spare = None
    if mean is None:
        mean, m2, spare = _moments(x)
        var = m2 / x.shape[0]                      # biased: the batch's own spread   (2)
    rstd = 1.0 / xp.sqrt(var + eps)
    scale = rstd * weight if weight is not None else rstd
    xc = sub(x, mean, out=spare)                   # the one new array: x - mu, then y
    y = affine(xc, scale, bias, out=xc)            # y = (x - mu) (w r) + b          (3, 4)
    return y, Cache(x, mean, rstd, weight, bias is not None, batch_stats), mean, var


def sums(dy: Array, cache: Cache) -> tuple[Array, Array]:
    """The backward's two column reductions: sum(dy) and sum(dy * xhat) (= db, dw, eq. 5)."""
    return _sums(dy, cache)[:2]


def _sums(dy: Array, cache: Cache) -> tuple[Array, Array, Array]:
    """(sum(dy), sum(dy xhat), spare): sum(dy xhat) = r sum(dy (x - mu)), and the new array
    that held dy (x - mu), free for the caller to reuse."""
    t = imul(cache.x - cache.mean, dy)
    sum_dy_xc = sum_rows(t)            # an empty sum is 0, also where r is NaN (no rows)
    return sum_rows(dy), (sum_dy_xc * cache.rstd if dy.shape[0] else sum_dy_xc), t


def dx_from_sums(dy: Array, cache: Cache, sum_dy: Array, sum_dy_xhat: Array,
                 count: float, out: Array | None = None) -> Array:
    """dx = w r (dy - sum(dy)/m - xhat sum(dy xhat)/m) (eq. 7), sums and m possibly global,
    written into ``out`` (a buffer of the caller's own) where given and allowed.

    Per channel that is a dy + b xhat + c (eq. 11) with xhat = (x - mu) r: three passes
    over the rows."""
    scale = cache.rstd * cache.weight if cache.weight is not None else cache.rstd
    if not cache.batch_stats:
        return mul(dy, scale, out=out)                 # d(mu)/dx = d(var)/dx = 0   (8)
    xc = sub(cache.x, cache.mean, out=out)
    dx = addcmul(-scale * (sum_dy / count), xc, -scale * cache.rstd * (sum_dy_xhat / count),
                 out=xc)
    return addcmul(dx, dy, scale, out=dx)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None, Array | None]:
    """Returns (dx, dweight, dbias) for one process."""
    sum_dy, sum_dy_xhat, spare = _sums(dy, cache)
    dx = dx_from_sums(dy, cache, sum_dy, sum_dy_xhat, dy.shape[0], out=spare)
    return (dx, sum_dy_xhat if cache.weight is not None else None,
            sum_dy if cache.has_bias else None)


def update_running(running_mean: Array, running_var: Array, mean: Array, var: Array,
                   count: int, momentum: float) -> tuple[Array, Array]:
    """running <- (1 - momentum) running + momentum batch (eq. 9); the stored variance is
    the unbiased one, var m / (m - 1). ``momentum`` = 1/t is the cumulative average (eq. 10)."""
    unbiased = var * (count / (count - 1))
    return ((1.0 - momentum) * running_mean + momentum * mean,
            (1.0 - momentum) * running_var + momentum * unbiased)
