r"""Hyperbolic tangent. Derivation: docs/numpy_engine.md, "Backpropagation tables".

    y = tanh(x) = (e^x - e^-x) / (e^x + e^-x)          dy/dx = 1 - y^2
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, namespace


class Cache(NamedTuple):
    y: Array


def forward(x: Array) -> tuple[Array, Cache]:
    y = namespace(x).tanh(x)
    return y, Cache(y)


def backward(dy: Array, cache: Cache) -> Array:
    y = cache.y
    return dy * (1.0 - y * y)                          # dy * (1 - y^2)
