r"""Batch normalisation, channels-last: x has shape (M, C), statistics per column.
Derivation: docs/derivations/batch_norm.md.

Forward, per channel c over the m rows of the batch (derivation eqs. 1-4):

    mu = mean(x)     var = mean((x - mu)^2)   (biased: it normalises)
    r = 1 / sqrt(var + eps)      xhat = (x - mu) * r      y = w * xhat + b

Backward with batch statistics (eqs. 5 and 7):

    dx = w * r * (dy - sum(dy) / m - xhat * sum(dy * xhat) / m)
    dw = sum(dy * xhat)          db = sum(dy)

The statistics are computed on x shifted by the batch's first row K (derivation, "Computing
the statistics"): d = x - K, mu = K + mean(d), x - mu = d - mean(d), exactly 0 on a constant
channel and without mu's rounding on a channel with a large mean; r is ``_xp.inv_rms``,
which scales a channel whose squares overflow. The backward rebuilds x - mu from the saved,
rounded mu the same way (e = mean(x - mu) is mu's rounding error, taken out again).

With fixed (running) statistics mu and var are constants and dx = w * r * dy (eq. 8).
Across processes the two sums and m are global; ``dx_from_sums`` takes them. The running
averages (eqs. 9, 10) store the unbiased variance.

The statistics are column sums over all rows, needed before any output row, so the op
sweeps the rows in blocks small enough to stay in the cache (``BLOCK_BYTES``):

    forward   1: per block sum(x - K) -> mu = K + mean(d)
              2: per block xc = (x - K) - mean(d) into y's array, sum(xc^2) from a
                 block-sized temporary
              3: per block y = xc (w r) + b in place
    backward  1: per block xc = x - mu into dx's array, sum(dy), sum(dy xc), sum(xc)
                 -> sum(dy xhat)
              2: per block dx = xc b' + c' + dy (w r) in place                     (eq. 11)

x and dy are each read twice, and each direction allocates one full-size array (y, dx),
which holds x - mu first; only a block-sized temporary comes on top. Where the op may not
write into its own arrays (torch recording a graph: ``_xp.may_overwrite``) every sweep is
one pass over all rows into fresh arrays.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from ._xp import (Array, addcmul, empty_like, inv_rms, isub, mul, namespace, overflow_ok,
                  row_blocks, sub, sum_rows)
from .layer_norm import affine

# Rows per block: about 2 MB of them. Measured as ours / torch.nn.BatchNorm1d, forward +
# backward at 4096 x 1024 float32 on the 2-core EPYC of benchmarks/RESULTS.md (three runs
# each, noisy): 1 MB blocks 1.91-1.99x, 2 MB 1.92-1.96x, 4 MB 1.97-2.08x, 8 MB 2.00-2.09x,
# whole-array passes 2.21-2.34x. Smaller than LayerNorm's (_xp.BLOCK_BYTES): a block of
# x, its x - mu and the temporary must stay in the cache together.
BLOCK_BYTES = 2 << 20


class Cache(NamedTuple):
    x: Array
    mean: Array  # (C,)
    rstd: Array  # (C,)
    weight: Array | None
    has_bias: bool
    batch_stats: bool  # were mu and var functions of this batch?


def moments(x: Array) -> tuple[Array, Array]:
    """Per-channel mean and M2 = sum((x - mean)^2) of x (M, C), two-pass."""
    shift, mean_d = _shifted_mean(x)
    _, m2, _, _ = _centred_sums(x, shift, mean_d, keep=False)
    return shift + mean_d, m2                                              # (1), (2) times m


def _shifted_mean(x: Array) -> tuple[Array, Array]:
    """(K, mean(x - K)) per channel, K the first row (zeros for an empty batch): mu = K +
    mean(d) without rounding, as ``layer_norm.centre``. One sweep in blocks into a
    block-sized temporary (one fresh array where the op may not write into its own)."""
    shift = sum_rows(x[:1])                       # K: the first row, (C,)
    blocks = row_blocks(x, BLOCK_BYTES)
    tmp = empty_like(x[blocks[0]]) if len(blocks) > 1 else None
    total = None
    for s in blocks:
        d = sub(x[s], shift, out=tmp[:s.stop - s.start] if tmp is not None else None)
        total = _add(total, sum_rows(d))                                   # sum(x - K)
    return shift, total / x.shape[0]


def _centred_sums(x: Array, shift: Array, mean_d: Array | None = None, dy: Array | None = None,
                  keep: bool = True) -> tuple[Array | None, Array, Array | None, Array | None]:
    """One sweep over the rows in blocks: xc = (x - shift) - mean_d (x - shift without
    ``mean_d``), and while a block is in the cache its column sums sum(xc^2) (without ``dy``)
    or sum(dy xc), sum(dy) and sum(xc).

    Returns (xc, sum(xc^2) or sum(dy xc), sum(dy) or None, sum(xc) or None); xc is a new
    array the caller owns, or None without ``keep`` (each block's xc then lives in a
    block-sized temporary)."""
    blocks = row_blocks(x, BLOCK_BYTES)
    many = len(blocks) > 1                      # only where the op may write into its buffers
    xc = empty_like(x) if keep and many else None
    tmp = empty_like(x[blocks[0]]) if many else None
    s_prod = s_dy = s_c = None
    for s in blocks:
        n = s.stop - s.start
        c = sub(x[s], shift, out=xc[s] if xc is not None else tmp[:n] if tmp is not None else None)
        if mean_d is not None:
            c = isub(c, mean_d)
        other = c if dy is None else dy[s]
        # the product goes into the temporary, or into c itself where c is not kept
        prod = mul(c, other, out=tmp[:n] if keep and many else None if keep else c)
        s_prod = _add(s_prod, sum_rows(prod))
        if dy is not None:
            s_dy = _add(s_dy, sum_rows(other))
            s_c = _add(s_c, sum_rows(c))
    return (xc if many else c) if keep else None, s_prod, s_dy, s_c


def _add(total: Array | None, part: Array) -> Array:
    return part if total is None else total + part


def _in_blocks(a: Array, f: Callable[[Array, slice], Array]) -> Array:
    """f(a[s], s) for each row block s of ``a``, each writing its result into a[s]; f(a, all
    rows), its result returned, where there is one block (or writing is not allowed)."""
    blocks = row_blocks(a, BLOCK_BYTES)
    if len(blocks) == 1:
        return f(a, blocks[0])
    for s in blocks:
        f(a[s], s)
    return a


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
    if mean is None:
        shift, mean_d = _shifted_mean(x)          # K and mean(x - K)
        mean = shift + mean_d                                                 # (1)
        with overflow_ok(x):                       # inv_rms scales a channel whose xc^2 overflows
            xc, m2, _, _ = _centred_sums(x, shift, mean_d)  # the one new array: x - mu, then y
        var = m2 / x.shape[0]                      # biased: the batch's own spread   (2)
        rstd = inv_rms(xc, eps, var, axis=0)       # never 0 where xc^2 overflows
    else:
        xc = x - mean
        rstd = 1.0 / xp.sqrt(var + eps)
    scale = rstd * weight if weight is not None else rstd
    y = _in_blocks(xc, lambda xc, _: affine(xc, scale, bias, out=xc))  # y = (x - mu)(w r) + b  (3, 4)
    return y, Cache(x, mean, rstd, weight, bias is not None, batch_stats), mean, var


def sums(dy: Array, cache: Cache) -> tuple[Array, Array]:
    """The backward's two column reductions: sum(dy) and sum(dy * xhat) (= db, dw, eq. 5)."""
    return _sums(dy, cache, keep=False)[:2]


def _sums(dy: Array, cache: Cache, keep: bool = True, refine: bool = False
          ) -> tuple[Array, Array, Array | None, Array | float]:
    """(sum(dy), sum(dy xhat), xc, e): sum(dy xhat) = r sum(dy (x - mu)), and (with ``keep``)
    the new array x - mu, free for the caller to turn into dx.

    With ``refine`` (mu the mean of these very rows) xhat = (x - mu - e) r, where
    e = mean(x - mu) is the rounding error of the saved mu (0 in exact arithmetic): then
    sum(dy xhat) = r (sum(dy (x - mu)) - e sum(dy)). Otherwise e = 0 (SyncBatchNorm's mu is
    the global one: the local mean(x - mu) is not its error)."""
    xc, sum_dy_xc, sum_dy, sum_xc = _centred_sums(cache.x, cache.mean, dy=dy, keep=keep)
    m = dy.shape[0]
    if not m:                        # an empty sum is 0, also where r is NaN (no rows)
        return sum_dy, sum_dy_xc, xc, 0.0
    err = sum_xc / m if refine else 0.0
    return sum_dy, (sum_dy_xc - err * sum_dy) * cache.rstd, xc, err


def dx_from_sums(dy: Array, cache: Cache, sum_dy: Array, sum_dy_xhat: Array,
                 count: float, out: Array | None = None) -> Array:
    """dx = w r (dy - sum(dy)/m - xhat sum(dy xhat)/m) (eq. 7), sums and m possibly global,
    written into ``out`` (a buffer of the caller's own) where given and allowed."""
    scale = cache.rstd * cache.weight if cache.weight is not None else cache.rstd
    if not cache.batch_stats:
        return mul(dy, scale, out=out)                 # d(mu)/dx = d(var)/dx = 0   (8)
    return _dx(dy, sub(cache.x, cache.mean, out=out), cache, sum_dy, sum_dy_xhat, count)


def _dx(dy: Array, xc: Array, cache: Cache, sum_dy: Array, sum_dy_xhat: Array,
        count: float, err: Array | float = 0.0) -> Array:
    """Eq. 7 as eq. 11, dx = a dy + b' xhat + c' per channel with xhat = (xc - err) r,
    turning xc = x - mu (an array of the op's own) into dx block by block."""
    a = cache.rstd * cache.weight if cache.weight is not None else cache.rstd
    b = -a * cache.rstd * (sum_dy_xhat / count)                            # b' r     (11)
    c = -a * (sum_dy / count) - b * err                                    # c'       (11)

    def block(xc: Array, s: slice) -> Array:
        dx = addcmul(c, xc, b, out=xc)
        return addcmul(dx, dy[s], a, out=dx)
    return _in_blocks(xc, block)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None, Array | None]:
    """Returns (dx, dweight, dbias) for one process."""
    sum_dy, sum_dy_xhat, xc, err = _sums(dy, cache, refine=cache.batch_stats)
    if cache.batch_stats:
        dx = _dx(dy, xc, cache, sum_dy, sum_dy_xhat, dy.shape[0], err)
    else:
        dx = dx_from_sums(dy, cache, sum_dy, sum_dy_xhat, dy.shape[0], out=xc)
    return (dx, sum_dy_xhat if cache.weight is not None else None,
            sum_dy if cache.has_bias else None)


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
