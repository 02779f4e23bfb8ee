r"""Inverted dropout. Derivation: docs/derivations/dropout.md.

Given p (probability to drop) and u ~ U[0, 1) of x's shape (derivation eqs. 1-3):

    keep = u >= p   (P(keep) = 1 - p)       y = x * keep / (1 - p)       E[y] = x

Backward (eq. 4): dx = dy * keep / (1 - p). With p = 1 everything is dropped: y = 0 * x,
dx = 0 * dy (zeros, except that NaN / Inf in x give NaN, as in torch).
Randomness comes from the caller (NumPy Generator, torch generator), so the op is pure.
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array


class Cache(NamedTuple):
    keep: Array  # bool, x's shape
    scale: float


def scale(p: float) -> float:
    """1 / (1 - p), the factor of the kept units (0 for p = 1, where none is kept)."""
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def forward(x: Array, p: float, u: Array) -> tuple[Array, Cache]:
    keep = u >= p
    return _masked(x, keep, scale(p)), Cache(keep, scale(p))


def backward(dy: Array, cache: Cache) -> Array:
    return _masked(dy, cache.keep, cache.scale)


def _masked(x: Array, keep: Array, scale: float) -> Array:
    # no zeros_like shortcut for p = 1: x * 0 keeps a NaN / Inf visible (NaN), as torch does
    y = x * keep
    y *= scale
    return y
