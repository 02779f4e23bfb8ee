r"""Mean squared error. Derivation: docs/numpy_engine.md, "Backpropagation tables".

With d = input - target over n elements:

    reduction "mean":  L = sum(d^2) / n        dL/dinput = 2 d / n
    reduction "sum":   L = sum(d^2)            dL/dinput = 2 d
    reduction "none":  L_i = d_i^2             dL_i/dinput_i = 2 d_i

dL/dtarget = -dL/dinput. The seed notebook reports mean(d^2) but steps along d / n, the
gradient of half of it: its updates are those of lr/2 on this loss (docs/numpy_engine.md).
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, vecdot

REDUCTIONS = ("mean", "sum", "none")


class Cache(NamedTuple):
    diff: Array
    reduction: str


def forward(input: Array, target: Array, reduction: str = "mean") -> tuple[Array, Cache]:
    diff = input - target
    if reduction == "none":
        loss = diff * diff
    else:
        flat = diff.reshape(-1)
        loss = vecdot(flat, flat)                      # sum(d^2), no temporary
        if reduction == "mean":
            loss = loss / flat.shape[0]
    return loss, Cache(diff, reduction)


def backward(dloss: Array | float, cache: Cache) -> Array:
    """dL/dinput; ``dloss`` is a scalar, or of the input's shape for reduction "none"."""
    diff, reduction = cache
    if reduction == "none":
        return 2.0 * diff * dloss
    n = 1
    for s in diff.shape:
        n *= s
    scale = 2.0 / n if reduction == "mean" else 2.0
    return diff * (scale * dloss)
