r"""Inverted dropout: docs/derivations/dropout.md, whose equation numbers the lines carry.

Given p, the probability to drop, and u ~ U[0, 1) of x's shape:

    keep = u >= p                 P(keep) = 1 - p        (1)
    y = x keep / (1 - p)                                 (2)   E[y] = x   (3)
    dx = dy keep / (1 - p)                               (4)

With p = 1 everything is dropped and the scale 1 / (1 - p) is taken as 0: y = 0 x, dx = 0 dy
(zeros, except that NaN / Inf in x give NaN, as in torch). The randomness comes from the
caller (NumPy Generator, torch generator), so the op is pure.
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
    keep = u >= p                                                          # (1)
    y = x * keep * scale(p)                     # p = 1: 0 x, NaN where x is NaN   (2)
    return y, Cache(keep, scale(p))


def backward(dy: Array, cache: Cache) -> Array:
    return dy * cache.keep * cache.scale                                   # (4)
