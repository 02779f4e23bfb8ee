r"""RMS normalisation over the last axis. Derivation: docs/derivations/rms_norm.md.

Forward, per row x of length n (derivation eqs. 1-3):

    r = 1 / sqrt(mean(x^2) + eps)      xhat = x * r       y = w * xhat

Backward, with g = dy * w (eqs. 4, 5 and 7):

    dx = r * (g - xhat * mean(g * xhat))          dw = sum_rows(dy * xhat)

r is ``_xp.inv_rms``: where x^2 overflows (float32: |x| beyond 1.8e19) it scales the row by
max|x| first, so xhat is right (about +-1), never 0. No mean is subtracted, so unlike
LayerNorm there is no mean(g) term. As in layer_norm, the only new full-size arrays are xhat
and y (forward) and dx (backward).
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, addcmul, iadd, imul, inv_rms, matvec, mul, namespace, sum_rows


class Cache(NamedTuple):
    xhat: Array
    rstd: Array  # (..., 1)
    weight: Array | None


def forward(x: Array, weight: Array | None = None, eps: float = 1e-6) -> tuple[Array, Cache]:
    rstd = inv_rms(x, eps)                                                 # (1)
    xhat = x * rstd                                                        # (2)
    y = xhat * weight if weight is not None else xhat                      # (3)
    return y, Cache(xhat, rstd, weight)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None]:
    """Returns (dx, dweight); dweight is None without a weight."""
    xp = namespace(dy)
    xhat, rstd, weight = cache
    t = dy * xhat                                  # the one new array; it becomes dx
    dweight = sum_rows(t) if weight is not None else None                  # (4)
    if weight is not None:                         # mean(g xhat) = (dy xhat).w / n, g = dy w (5)
        mean_gx = matvec(t, weight)[..., None] / xhat.shape[-1]
    else:
        mean_gx = xp.mean(t, axis=-1, keepdims=True)
    dx = mul(xhat, -mean_gx, out=t)                # -xhat mean(g xhat)
    dx = addcmul(dx, dy, weight, out=dx) if weight is not None else iadd(dx, dy)   # + g
    return imul(dx, rstd), dweight                                         # (7)
