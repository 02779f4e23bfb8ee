r"""Layer normalisation over the last axis: docs/derivations/layer_norm.md, whose equation
numbers the lines carry. Per row x of length n, with weight w and bias b:

    mu = mean(x)                                   (1)
    var = mean((x - mu)^2)                         (2)  biased, two-pass: never E[x^2] - mu^2
    r = 1 / sqrt(var + eps),   xhat = (x - mu) r   (3)
    y = w xhat + b                                 (4)

    dw = sum_rows(dy xhat),    db = sum_rows(dy)   (5)
    g = dy w                                       (6)
    dx = r (g - mean(g) - xhat mean(g xhat))       (8)

x - mu is computed on the row shifted by its first element K (the page's "Computing the
statistics"): d = x - K, mu = K + mean(d), x - mu = d - mean(d), exactly 0 on a constant row
and without mu's rounding on a row with a large mean. r is ``_xp.inv_rms``, which scales a
row whose squares overflow. The cache keeps x, mu and r, as torch's kernel does (not xhat),
and the backward computes x - mu from x again the same way, so its xhat is the forward's.

Arrays may be NumPy or torch; the caller flattens ``normalized_shape`` into the last axis.
On the eager CPU path two memory tricks keep the formulas within reach of torch's fused
kernel, each one helper of ``_xp``: a step whose input is an array the op made itself
writes over it (``out=reuse(a)``), so each direction allocates one full-size array (the
forward's holds x - mu, then xhat, then y; the backward's xhat, then dy xhat for the sums
(5) and (9), then x - mu again, which (8) turns into dx); and the rows go through the
formulas in cache-sized blocks (``in_cache_blocks``).
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import (Array, addcmul, in_cache_blocks, inv_rms, mean_square, namespace, reuse,
                  row_mean, sum_rows)


class Cache(NamedTuple):
    x: Array
    mean: Array  # (..., 1)
    rstd: Array  # (..., 1)
    weight: Array | None
    has_bias: bool


def forward(x: Array, weight: Array | None = None, bias: Array | None = None,
            eps: float = 1e-5) -> tuple[Array, Cache]:
    y, mu, r = in_cache_blocks(lambda x, out: _forward(x, weight, bias, eps, out), x)
    return y, Cache(x, mu, r, weight, bias is not None)


def _forward(x: Array, w: Array | None, b: Array | None, eps: float,
             out: Array | None = None) -> tuple[Array, Array, Array]:
    """(y, mu, r) of the rows x; y is written into ``out`` where given."""
    xp = namespace(x)
    K = x[..., :1]                              # the shift: each row's first element
    xc, mean_d = centre(x, K, out=out)          # x - mu: the new array, y at the end
    mu = K + mean_d                                                        # (1)
    var = mean_square(xc)                                                  # (2)
    r = inv_rms(xc, eps, var)                                              # (3)
    xhat = xp.multiply(xc, r, out=reuse(xc))                               # (3)
    y = affine(xhat, w, b, out=reuse(xhat))                                # (4)
    return y, mu, r


def centre(x: Array, K: Array, out: Array | None = None) -> tuple[Array, Array]:
    """(x - mu, mean(d)) with d = x - K and mu = K + mean(d), x - mu = d - mean(d): mu is
    never rounded before it is subtracted. For K within a factor of 2 of x, d is exact
    (Sterbenz), so a constant row gives exactly 0. x - mu is a new array, or ``out``."""
    xp = namespace(x)
    d = xp.subtract(x, K, out=out)
    mean_d = row_mean(d)
    return xp.subtract(d, mean_d, out=reuse(d)), mean_d


def affine(xhat: Array, w: Array | None, b: Array | None, out: Array | None = None) -> Array:
    """y = w xhat + b (4), either parameter possibly absent; into ``out`` where given."""
    xp = namespace(xhat)
    if w is None:
        return xhat if b is None else xp.add(xhat, b, out=out)
    return xp.multiply(xhat, w, out=out) if b is None else addcmul(b, xhat, w, out=out)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None, Array | None]:
    """Returns (dx, dweight, dbias); dweight/dbias are None where there is no parameter."""
    x, _, r, w, has_bias = cache
    return in_cache_blocks(lambda dy, x, r, out: _backward(dy, x, r, w, has_bias, out),
                           dy, x, r)


def _backward(dy: Array, x: Array, r: Array, w: Array | None, has_bias: bool,
              out: Array | None = None) -> tuple[Array, Array | None, Array | None]:
    """(dx, dw, db) of the rows dy; dx is written into ``out`` where given."""
    xp = namespace(dy)
    K = x[..., :1]
    xc, mean_d = centre(x, K, out=out)          # x - mu as the forward computed it: dx at the end
    xhat = xp.multiply(xc, r, out=reuse(xc))                               # (3)
    dy_xhat = xp.multiply(dy, xhat, out=reuse(xhat))
    dw = sum_rows(dy_xhat) if w is not None else None                      # (5)
    db = sum_rows(dy) if has_bias else None                                # (5)
    mean_g = row_mean(dy, w)                    # mean(g) = mean(dy w)              (6, 9)
    mean_gxhat = row_mean(dy_xhat, w)           # mean(g xhat) = mean(dy xhat w)    (6, 9)
    d = xp.subtract(x, K, out=reuse(dy_xhat))   # x - mu again, into the same array
    xc = xp.subtract(d, mean_d, out=reuse(d))
    # (8), dx = r (g - mean(g) - xhat mean(g xhat)), term by term into that array:
    dx = xp.multiply(xc, -r * mean_gxhat, out=reuse(xc))   # - xhat mean(g xhat), xhat = xc r
    dx = xp.subtract(dx, mean_g, out=reuse(dx))            # - mean(g)
    dx = addcmul(dx, dy, w, out=reuse(dx))                 # + g = dy w              (6)
    dx = xp.multiply(dx, r, out=reuse(dx))                 # r (...)                 (8)
    return dx, dw, db
