r"""RMS normalisation over the last axis. Derivation: docs/derivations/rms_norm.md.

Forward, per row x of length n (derivation eqs. 1-3):

    r = 1 / sqrt(mean(x^2) + eps)      xhat = x * r       y = (offset + w) * xhat

Backward, with g = dy * (offset + w) (eqs. 4, 5 and 7):

    dx = r * (g - xhat * mean(g * xhat))          dw = sum_rows(dy * xhat)

``offset`` is Gemma's: it stores w - 1 and applies 1 + w; the default 0 applies w itself.
``xhat_dtype`` is Llama's cast (Hugging Face's LlamaRMSNorm): xhat is rounded to the input's
dtype before the weight multiplies it, ``weight * xhat.to(input_dtype)``. A rounding has
derivative 1, so the backward is the same for every ``xhat_dtype``: it uses the unrounded
xhat, as autograd over Llama's forward passes the gradient straight through the cast.

r is ``_xp.inv_rms``: where x^2 overflows (float32: |x| beyond 1.8e19) it scales the row by
max|x| first, so xhat is right (about +-1), never 0. No mean is subtracted, so unlike
LayerNorm there is no mean(g) term. As in layer_norm, the only new full-size arrays are xhat
and y (forward) and dx (backward).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ._xp import Array, addcmul, astype, iadd, imul, inv_rms, matvec, mul, namespace, sum_rows


class Cache(NamedTuple):
    xhat: Array
    rstd: Array  # (..., 1)
    weight: Array | None  # the weight as applied: offset + w


def applied(weight: Array | None, offset: float = 0.0) -> Array | None:
    """offset + w, the weight as (3) applies it; w itself when the offset is 0."""
    return weight + offset if offset and weight is not None else weight


def forward(x: Array, weight: Array | None = None, eps: float = 1e-6, offset: float = 0.0,
            xhat_dtype: Any = None) -> tuple[Array, Cache]:
    """``xhat_dtype``: the dtype xhat is rounded to before the weight multiplies it (Llama's
    cast), None for no rounding."""
    rstd = inv_rms(x, eps)                                                 # (1)
    xhat = x * rstd                                                        # (2)
    weight = applied(weight, offset)
    if weight is None:
        y = xhat
    elif xhat_dtype is None:
        y = xhat * weight                                                  # (3)
    else:
        y = astype(xhat, xhat_dtype) * weight                              # (3), xhat rounded
    return y, Cache(xhat, rstd, weight)


def backward(dy: Array, cache: Cache) -> tuple[Array, Array | None]:
    """Returns (dx, dweight); dweight is None without a weight. The same for every offset:
    d(offset + w)/dw = 1."""
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
