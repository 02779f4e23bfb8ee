r"""RMS normalisation over the last axis: docs/derivations/rms_norm.md, whose equation
numbers the lines carry. Per row x of length n, with weight w applied as o + w:

    r = 1 / sqrt(mean(x^2) + eps)                  (1)
    xhat = x r                                     (2)
    y = (o + w) xhat                               (3)

    dw = sum_rows(dy xhat)                         (4)
    g = dy (o + w)                                 (5)
    dx = r (g - xhat mean(g xhat))                 (7)

``offset`` o is Gemma's: it stores w - 1 and applies 1 + w; the default 0 applies w itself.
The forward forms o + w once and the cache keeps it, so the backward is the same for every
offset (d(o + w)/dw = 1). ``xhat_dtype`` is Llama's cast (Hugging Face's LlamaRMSNorm):
xhat is rounded to the input's dtype before the weight multiplies it. A rounding has
derivative 1, so the backward is the same for every ``xhat_dtype``: it uses the unrounded
xhat, as autograd over Llama's forward passes the gradient straight through the cast.

r is ``_xp.inv_rms``: where x^2 overflows (float32: |x| beyond 1.8e19) it scales the row by
max|x| first, so xhat is right (about +-1), never 0. No mean is subtracted, so unlike
LayerNorm there is no mean(g) term.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ._xp import Array, astype, inv_rms, row_mean, sum_rows


class Cache(NamedTuple):
    xhat: Array
    rstd: Array  # (..., 1)
    weight: Array | None  # the weight as applied: offset + w


def applied(weight: Array | None, offset: float = 0.0) -> Array | None:
    """o + w, the weight as (3) applies it; w itself when the offset is 0."""
    return weight + offset if offset and weight is not None else weight


def forward(x: Array, weight: Array | None = None, eps: float = 1e-6, offset: float = 0.0,
            xhat_dtype: Any = None) -> tuple[Array, Cache]:
    """``xhat_dtype``: the dtype xhat is rounded to before the weight multiplies it (Llama's
    cast), None for no rounding."""
    w = applied(weight, offset)                                            # o + w
    r = inv_rms(x, eps)                                                    # (1)
    xhat = x * r                                                           # (2)
    rounded = xhat if xhat_dtype is None else astype(xhat, xhat_dtype)
    y = rounded if w is None else rounded * w                              # (3)
    return y, Cache(xhat, r, w)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None]:
    """Returns (dx, dweight); dweight is None without a weight."""
    xhat, r, w = cache
    dy_xhat = dy * xhat
    dw = sum_rows(dy_xhat) if w is not None else None                      # (4)
    g = dy if w is None else dy * w                                        # (5)
    mean_gxhat = row_mean(dy_xhat, w)           # mean(g xhat) = (dy xhat . w) / n
    dx = r * (g - xhat * mean_gxhat)                                       # (7)
    return dx, dw
