r"""Layer normalisation over the last axis. Derivation: docs/derivations/layer_norm.md.

Forward, per row x of length n:

    mu = mean(x)            xc = x - mu          var = mean(xc^2)      (biased, two-pass)
    r = 1 / sqrt(var + eps) xhat = xc * r        y = w * xhat + b

Backward, with g = dy * w (derivation eq. 5):

    dx = r * (g - mean(g) - xhat * mean(g * xhat))
    dw = sum_rows(dy * xhat)       db = sum_rows(dy)

Arrays may be NumPy or torch; the caller flattens ``normalized_shape`` into the last axis.
In-place updates touch only buffers created here and not saved by any other op, so torch
can still differentiate this backward (double backward).
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, namespace, rows, vecdot


class Cache(NamedTuple):
    xhat: Array
    rstd: Array  # (..., 1)
    weight: Array | None
    has_bias: bool


def forward(x: Array, weight: Array | None = None, bias: Array | None = None,
            eps: float = 1e-5) -> tuple[Array, Cache]:
    xp = namespace(x)
    n = x.shape[-1]
    xc = x - xp.mean(x, axis=-1, keepdims=True)
    var = vecdot(xc, xc)[..., None] / n               # two-pass: never E[x^2] - E[x]^2
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = xc * rstd
    y = xhat * weight if weight is not None else xhat
    if bias is not None:
        y = y + bias if y is xhat else _iadd(y, bias)
    return y, Cache(xhat, rstd, weight, bias is not None)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None, Array | None]:
    """Returns (dx, dweight, dbias); dweight/dbias are None where there is no parameter."""
    xp = namespace(dy)
    xhat, rstd, weight, has_bias = cache
    n = xhat.shape[-1]
    dweight = xp.sum(rows(dy * xhat, n), axis=0) if weight is not None else None
    dbias = xp.sum(rows(dy, n), axis=0) if has_bias else None
    g = dy * weight if weight is not None else dy
    c = vecdot(g, xhat)[..., None] / n                 # mean(g * xhat)
    dx = xhat * c
    dx -= g
    dx += xp.mean(g, axis=-1, keepdims=True)
    dx *= -rstd                                        # r (g - mean(g) - xhat c)
    return dx, dweight, dbias


def _iadd(y: Array, b: Array) -> Array:
    y += b
    return y
