r"""Layer normalisation over the last axis. Derivation: docs/derivations/layer_norm.md.

Forward, per row x of length n (derivation eqs. 1-4):

    mu = mean(x)            xc = x - mu          var = mean(xc^2)      (biased, never E[x^2]-mu^2)
    r = 1 / sqrt(var + eps) xhat = xc * r        y = w * xhat + b

computed on the row shifted by its first element K (derivation, "Computing the
statistics"): d = x - K, mu = K + mean(d), xc = d - mean(d). A constant row has d = 0, so
xc = 0 exactly and y = b; on a row with a large mean, xc keeps the digits that x - mu, with
mu rounded to the working precision, would lose. r is ``_xp.inv_rms``: where xc^2
overflows it scales the row first, never r = 0.

Backward, with g = dy * w (eqs. 5, 6 and 8):

    dx = r * (g - mean(g) - xhat * mean(g * xhat))
    dw = sum_rows(dy * xhat)       db = sum_rows(dy)

Arrays may be NumPy or torch; the caller flattens ``normalized_shape`` into the last axis.
The backward rebuilds xc from the saved (rounded) mu the same way, d = x - mu and
xc = d - mean(d), so its xhat is the forward's to the last digits. Like torch's own kernel,
the cache keeps x, mu and r, not xhat: the forward allocates one full-size array (y) and the backward
one (dx), recomputing xhat = (x - mu) r where it needs it. They update those arrays in
place, never an array they were given (see ``_xp.may_overwrite``), so torch can still
differentiate this backward (double backward).
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import (Array, addcmul, concat, empty_like, iadd, imul, inv_rms, isub, matvec, mul,
                  namespace, row_blocks, sub, sum_rows)


class Cache(NamedTuple):
    x: Array
    mean: Array  # (..., 1)
    rstd: Array  # (..., 1)
    weight: Array | None
    has_bias: bool


def forward(x: Array, weight: Array | None = None, bias: Array | None = None,
            eps: float = 1e-5) -> tuple[Array, Cache]:
    blocks = row_blocks(x)
    if len(blocks) == 1:
        y, mean, rstd = _forward_rows(x, weight, bias, eps)
    else:                          # block by block into one y (see _xp.row_blocks)
        y = empty_like(x)
        stats = [_forward_rows(x[s], weight, bias, eps, out=y[s])[1:] for s in blocks]
        mean, rstd = concat([m for m, _ in stats]), concat([r for _, r in stats])
    return y, Cache(x, mean, rstd, weight, bias is not None)


def _forward_rows(x: Array, weight: Array | None, bias: Array | None, eps: float,
                  out: Array | None = None) -> tuple[Array, Array, Array]:
    """(y, mu, r) of the rows x, y written into ``out`` where given and allowed."""
    shift = x[..., :1]                                  # K, the row's first element
    xhat, mean_d = centre(x, shift, out=out)            # the one new array: xc, xhat, y
    rstd = inv_rms(xhat, eps)                           # two-pass var, r             (2, 3)
    xhat = imul(xhat, rstd)                             # xhat = xc r                 (3)
    return affine(xhat, weight, bias, out=xhat), shift + mean_d, rstd    # mu = K + mean(d) (1)


def centre(x: Array, shift: Array, out: Array | None = None) -> tuple[Array, Array]:
    """(xc, mean(d)) with d = x - shift, xc = d - mean(d): x - mu computed without rounding mu
    (mu = shift + mean(d)); xc is written into ``out`` where given and allowed. For a shift
    within a factor of 2 of x, d is exact (Sterbenz), so xc = 0 exactly on a constant row."""
    d = sub(x, shift, out=out)                          # d = x - K
    mean_d = namespace(x).mean(d, axis=-1, keepdims=True)
    return isub(d, mean_d), mean_d                      # xc = d - mean(d)


def affine(xhat: Array, weight: Array | None, bias: Array | None,
           out: Array | None = None) -> Array:
    """y = w * xhat + b (eq. 4) in one pass, into ``out`` (a buffer of the op's, possibly
    xhat itself) where given and allowed; xhat itself when there is neither weight nor bias."""
    if weight is None:
        return xhat if bias is None else iadd(xhat, bias) if out is xhat else xhat + bias
    return mul(xhat, weight, out=out) if bias is None else addcmul(bias, xhat, weight, out=out)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None, Array | None]:
    """Returns (dx, dweight, dbias); dweight/dbias are None where there is no parameter."""
    x, mean, rstd, weight, has_bias = cache
    blocks = row_blocks(dy)
    if len(blocks) == 1:
        return _backward_rows(dy, x, mean, rstd, weight, has_bias)
    dx = empty_like(dy)            # block by block into one dx (see _xp.row_blocks)
    parts = [_backward_rows(dy[s], x[s], mean[s], rstd[s], weight, has_bias, out=dx[s])
             for s in blocks]
    dweight = sum(p[1] for p in parts) if weight is not None else None
    dbias = sum(p[2] for p in parts) if has_bias else None
    return dx, dweight, dbias


def _backward_rows(dy: Array, x: Array, mean: Array, rstd: Array, weight: Array | None,
                   has_bias: bool, out: Array | None = None
                   ) -> tuple[Array, Array | None, Array | None]:
    """(dx, dw, db) of the rows dy, dx written into ``out`` where given and allowed."""
    xp = namespace(dy)
    n = x.shape[-1]
    dbias = sum_rows(dy) if has_bias else None                             # (5)
    # xhat = xc r, xc = d - mean(d) with d = x - mu (mu rounded: mean(d) is its rounding error)
    xc, err = centre(x, mean, out=out)
    t = imul(imul(xc, rstd), dy)                      # dy * xhat: the one new array, becomes dx
    dweight = sum_rows(t) if weight is not None else None                  # (5)
    # the two row means of eq. 8 (eq. 9): mean(g) = dy.w / n, mean(g xhat) = (dy xhat).w / n
    if weight is not None:
        mean_g, mean_gx = matvec(dy, weight)[..., None] / n, matvec(t, weight)[..., None] / n
    else:
        mean_g, mean_gx = xp.mean(dy, axis=-1, keepdims=True), xp.mean(t, axis=-1, keepdims=True)
    # dx = r (g - mean(g) - xhat mean(g xhat)) with xhat = (x - mu) r rebuilt into t      (8)
    # (two passes: torch's addcmul with two row vectors is several times slower)
    # -xhat mean(g xhat) - mean(g), with xhat = (x - mu - err) r
    dx = isub(imul(sub(x, mean, out=t), -rstd * mean_gx), mean_g - err * rstd * mean_gx)
    dx = addcmul(dx, dy, weight, out=dx) if weight is not None else iadd(dx, dy)  # + g
    return imul(dx, rstd), dweight, dbias
