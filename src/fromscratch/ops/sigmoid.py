r"""Logistic sigmoid. Derivation: docs/numpy_engine.md, "Backpropagation tables".

    y = 1 / (1 + exp(-x))          dy/dx = y (1 - y)

The textbook formula is accurate everywhere: for x >= 0, exp(-x) lies in (0, 1]; for
x < 0, 1 + exp(-x) is a large number known to full relative precision, and so is its
reciprocal. Only for x < -709 (-88 in float32) does exp(-x) overflow to inf, and then
1 / (1 + inf) = 0 is the right answer (the true value is below the smallest normal
number), so NumPy's overflow warning is silenced rather than the formula changed.
The backward reuses the forward's output, so exp is computed once per step (the
notebook's ``sigmoid_prime`` computes it again).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np

from ._xp import Array, is_torch, namespace


class Cache(NamedTuple):
    y: Array


def forward(x: Array) -> tuple[Array, Cache]:
    xp = namespace(x)
    with contextlib.nullcontext() if is_torch(x) else np.errstate(over="ignore"):
        y = 1.0 / (1.0 + xp.exp(-x))
    return y, Cache(y)


def backward(dy: Array, cache: Cache) -> Array:
    y = cache.y
    return dy * (y * (1.0 - y))                        # dy * y (1 - y), grouped as the notebook
