r"""RMS normalisation over the last axis. Derivation: docs/derivations/rms_norm.md.

Forward, per row x of length n:

    r = 1 / sqrt(mean(x^2) + eps)      xhat = x * r       y = w * xhat

Backward, with g = dy * w (derivation eq. 4):

    dx = r * (g - xhat * mean(g * xhat))          dw = sum_rows(dy * xhat)

No mean is subtracted, so unlike LayerNorm there is no mean(g) term.
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, namespace, rows, vecdot


class Cache(NamedTuple):
    xhat: Array
    rstd: Array  # (..., 1)
    weight: Array | None


def forward(x: Array, weight: Array | None = None, eps: float = 1e-6) -> tuple[Array, Cache]:
    xp = namespace(x)
    n = x.shape[-1]
    rstd = 1.0 / xp.sqrt(vecdot(x, x)[..., None] / n + eps)
    xhat = x * rstd
    y = xhat * weight if weight is not None else xhat
    return y, Cache(xhat, rstd, weight)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None]:
    """Returns (dx, dweight); dweight is None without a weight."""
    xp = namespace(dy)
    xhat, rstd, weight = cache
    n = xhat.shape[-1]
    dweight = xp.sum(rows(dy * xhat, n), axis=0) if weight is not None else None
    g = dy * weight if weight is not None else dy
    dx = xhat * (vecdot(g, xhat)[..., None] / n)       # xhat mean(g xhat)
    dx -= g
    dx *= -rstd                                        # r (g - xhat mean(g xhat))
    return dx, dweight
