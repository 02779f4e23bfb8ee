r"""Layer normalisation over the last axis. Derivation: docs/derivations/layer_norm.md.

Forward, per row x of length n (derivation eqs. 1-4):

    mu = mean(x)            xc = x - mu          var = mean(xc^2)      (biased, two-pass)
    r = 1 / sqrt(var + eps) xhat = xc * r        y = w * xhat + b

Backward, with g = dy * w (eqs. 5, 6 and 8):

    dx = r * (g - mean(g) - xhat * mean(g * xhat))
    dw = sum_rows(dy * xhat)       db = sum_rows(dy)

Arrays may be NumPy or torch; the caller flattens ``normalized_shape`` into the last axis.
Each function allocates as few full-size arrays as it can (forward: xhat and y; backward:
dx) and updates them in place, never an array it was given (see ``_xp.may_overwrite``),
so torch can still differentiate this backward (double backward).
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, addcmul, iadd, imul, isub, mul, namespace, sum_rows, sumsq


class Cache(NamedTuple):
    xhat: Array
    rstd: Array  # (..., 1)
    weight: Array | None
    has_bias: bool


def forward(x: Array, weight: Array | None = None, bias: Array | None = None,
            eps: float = 1e-5) -> tuple[Array, Cache]:
    xp = namespace(x)
    n = x.shape[-1]
    xhat = x - xp.mean(x, axis=-1, keepdims=True)      # xc = x - mu                 (1)
    rstd = 1.0 / xp.sqrt(sumsq(xhat) / n + eps)        # two-pass: never E[x^2]-E[x]^2 (2, 3)
    xhat = imul(xhat, rstd)                            # xhat = xc r                 (3)
    return affine(xhat, weight, bias), Cache(xhat, rstd, weight, bias is not None)


def affine(xhat: Array, weight: Array | None, bias: Array | None,
           out: Array | None = None) -> Array:
    """y = w * xhat + b (eq. 4) in one pass, into ``out`` (a spare buffer of the op's) where
    given and allowed; xhat itself when there is neither weight nor bias."""
    if weight is None:
        return xhat if bias is None else xhat + bias
    return mul(xhat, weight, out=out) if bias is None else addcmul(bias, xhat, weight, out=out)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None, Array | None]:
    """Returns (dx, dweight, dbias); dweight/dbias are None where there is no parameter."""
    xp = namespace(dy)
    xhat, rstd, weight, has_bias = cache
    dbias = sum_rows(dy) if has_bias else None                             # (5)
    t = dy * xhat                                  # the one new array; it becomes dx
    dweight = sum_rows(t) if weight is not None else None                  # (5)
    # the two row means of eq. 8 (eq. 9): mean(g) = dy.w / n, mean(g xhat) = (dy xhat).w / n
    if weight is not None:
        n = xhat.shape[-1]
        mean_g, mean_gx = (dy @ weight)[..., None] / n, (t @ weight)[..., None] / n
    else:
        mean_g, mean_gx = xp.mean(dy, axis=-1, keepdims=True), xp.mean(t, axis=-1, keepdims=True)
    dx = isub(mul(xhat, -mean_gx, out=t), mean_g)  # -xhat mean(g xhat) - mean(g)
    dx = addcmul(dx, dy, weight, out=dx) if weight is not None else iadd(dx, dy)   # + g
    return imul(dx, rstd), dweight, dbias                                  # (8)
