r"""Rectified linear unit. Derivation: docs/numpy_engine.md, "Backpropagation tables".

    y = max(0, x)          dy/dx = 1 if x > 0 else 0     (0 at x = 0, as torch)

NaN passes through the forward, as in torch; the backward masks on y, as torch's
``threshold_backward`` does: dx = 0 where y <= 0, dy elsewhere.
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, namespace


class Cache(NamedTuple):
    y: Array


def forward(x: Array) -> tuple[Array, Cache]:
    y = namespace(x).where(x < 0, 0.0, x)              # NaN < 0 is False: NaN stays
    return y, Cache(y)


def backward(dy: Array, cache: Cache) -> Array:
    return namespace(dy).where(cache.y <= 0, 0.0, dy)
