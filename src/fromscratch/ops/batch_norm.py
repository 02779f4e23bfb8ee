r"""Batch normalisation, channels-last: x has shape (M, C), statistics per column.
docs/derivations/batch_norm.md, whose equation numbers the lines carry. Per channel, over
the m rows of the batch, with weight w and bias b:

    mu = mean(x)                                   (1)
    var = mean((x - mu)^2)                         (2)  biased: the batch's own spread
    r = 1 / sqrt(var + eps),   xhat = (x - mu) r   (3)
    y = w xhat + b                                 (4)

    dw = sum(dy xhat),         db = sum(dy)        (5)
    dx = w r (dy - db / m - xhat dw / m)           (7)  with batch statistics
       = a dy + b' xhat + c'                       (11) a = w r, b' = -a dw / m, c' = -a db / m
    dx = w r dy                                    (8)  with fixed (running) ones

x - mu is computed on the batch shifted by its first row K (layer_norm.md, "Computing the
statistics"): d = x - K, mu = K + mean(d), x - mu = d - mean(d), exactly 0 on a constant
channel and without mu's rounding on a channel with a large mean; r is ``_xp.inv_rms``,
which scales a channel whose squares overflow. With batch statistics the backward computes
x - mu from x again as the forward did, so its xhat is the forward's.

Across processes (SyncBatchNorm) the two sums and m of (7) are global: ``moments`` and
``combine_moments`` give the statistics, ``sums`` and ``dx_from_sums`` the backward. The
running averages (eqs. 9, 10) store the unbiased variance.

A step whose input is an array the op made itself writes over it (``out=reuse(a)``), so
each direction allocates one full-size array (x - mu, then xhat, then y or dx) and one
temporary for a column sum of products ((x - mu)^2, dy xhat).
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, addcmul, inv_rms, mean_square, namespace, reuse, sum_rows
from .layer_norm import affine


class Cache(NamedTuple):
    x: Array
    mean: Array  # (C,)
    rstd: Array  # (C,)
    weight: Array | None
    has_bias: bool
    batch_stats: bool  # were mu and var functions of this batch?


def forward(x: Array, weight: Array | None = None, bias: Array | None = None,
            eps: float = 1e-5, mean: Array | None = None, var: Array | None = None,
            batch_stats: bool = True) -> tuple[Array, Cache, Array, Array]:
    """Normalise x (M, C). Without ``mean``/``var`` they are the batch's own (biased).

    Returns (y, cache, mean, var): the statistics used, for the running-average update.
    The cache keeps x, mu and r, not xhat.
    """
    xp = namespace(x)
    if mean is None:
        xc, mean = centre(x)                    # x - mu: the new array, y at the end  (1)
        var = mean_square(xc, axis=0)                                      # (2)
        r = inv_rms(xc, eps, var, axis=0)                                  # (3)
    else:
        xc = x - mean
        r = 1.0 / xp.sqrt(var + eps)                                       # (3)
    xhat = xp.multiply(xc, r, out=reuse(xc))                               # (3)
    y = affine(xhat, weight, bias, out=reuse(xhat))                        # (4)
    return y, Cache(x, mean, r, weight, bias is not None, batch_stats), mean, var


def centre(x: Array) -> tuple[Array, Array]:
    """(x - mu, mu) per channel, mu = K + mean(x - K) (1) with K the first row (zeros in an
    empty batch): mu is never rounded before it is subtracted. x - mu is a new array."""
    K = x[:1].sum(0)
    d = x - K
    mean_d = sum_rows(d) / x.shape[0]
    return namespace(x).subtract(d, mean_d, out=reuse(d)), K + mean_d


def moments(x: Array) -> tuple[Array, Array]:
    """Per-channel mean and M2 = sum((x - mean)^2) of x (M, C), two-pass."""
    xc, mu = centre(x)
    return mu, sum_rows(xc * xc)                                           # (1), (2) times m


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


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None, Array | None]:
    """Returns (dx, dweight, dbias) for one process. With batch statistics mu is x's own
    mean, and x - mu is computed from x again as the forward did."""
    x, mu, r, w, has_bias, batch_stats = cache
    xc = centre(x)[0] if batch_stats else x - mu     # x - mu: the new array, dx at the end
    xhat = namespace(x).multiply(xc, r, out=reuse(xc))                     # (3)
    dw = sum_rows(dy * xhat)                                               # (5)
    db = sum_rows(dy)                                                      # (5)
    dx = _dx(dy, xhat, cache, db, dw, dy.shape[0])
    return dx, dw if w is not None else None, db if has_bias else None


def sums(dy: Array, cache: Cache) -> tuple[Array, Array]:
    """The backward's two column sums, sum(dy) and sum(dy xhat) (= db, dw, eq. 5), with
    xhat from the cache's mu as it is (SyncBatchNorm's: the mean of all processes)."""
    xhat = (cache.x - cache.mean) * cache.rstd                             # (3)
    return sum_rows(dy), sum_rows(dy * xhat)                               # (5)


def dx_from_sums(dy: Array, cache: Cache, sum_dy: Array, sum_dy_xhat: Array,
                 count: float) -> Array:
    """dx (eq. 7) from the two column sums and the row count m, all possibly global."""
    xhat = (cache.x - cache.mean) * cache.rstd if cache.batch_stats else None  # (3)
    return _dx(dy, xhat, cache, sum_dy, sum_dy_xhat, count)


def _dx(dy: Array, xhat: Array | None, cache: Cache, sum_dy: Array, sum_dy_xhat: Array,
        m: float) -> Array:
    """(7) as dx = a dy + b' xhat + c' per channel (11), or (8) with fixed statistics,
    written over xhat's array."""
    a = cache.rstd if cache.weight is None else cache.weight * cache.rstd  # a = w r  (11)
    if not cache.batch_stats:                   # mu and var are constants
        return namespace(dy).multiply(dy, a, out=reuse(xhat))                 # (8)
    b = -a * sum_dy_xhat / m                    # b' = -(a / m) dL/dw               (11)
    c = -a * sum_dy / m                         # c' = -(a / m) dL/db               (11)
    dx = addcmul(c, xhat, b, out=reuse(xhat))   # b' xhat + c'
    return addcmul(dx, dy, a, out=reuse(dx))    # dx = a dy + b' xhat + c'          (11)


def update_running(running_mean: Array, running_var: Array, mean: Array, var: Array,
                   count: int, momentum: float) -> tuple[Array, Array]:
    """running <- (1 - momentum) running + momentum batch (eq. 9); the stored variance is
    the unbiased one, var m / (m - 1). ``momentum`` = 1/t is the cumulative average (eq. 10)."""
    unbiased = var * (count / (count - 1))
    return ((1.0 - momentum) * running_mean + momentum * mean,
            (1.0 - momentum) * running_var + momentum * unbiased)


def update_running_(running_mean: Array, running_var: Array, mean: Array, var: Array,
                    count: int, momentum: float) -> None:
    """``update_running`` written into the two buffers (torch: under ``no_grad``)."""
    new_mean, new_var = update_running(running_mean, running_var, mean, var, count, momentum)
    running_mean[...] = new_mean
    running_var[...] = new_var
