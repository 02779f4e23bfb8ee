r"""Fully connected (affine) layer. Derivation: docs/numpy_engine.md, "Backpropagation tables".

Rows are samples (torch's layout): x has shape (..., in), W has shape (out, in), b (out,).

    y = x W^T + b

Backward, with dy of y's shape and the leading axes flattened into M rows:

    dx = dy W                    (..., out) @ (out, in)
    dW = dy^T x                  (out, M) @ (M, in): one outer product per row, summed
    db = sum_rows(dy)

The notebook writes the same layer for columns, z = W a + b with a of shape (in, samples),
so its dW = delta a^T is our dW = dy^T x read the other way round.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._xp import Array, is_torch, namespace, reuse, rows


class Cache(NamedTuple):
    x: Array
    weight: Array
    has_bias: bool


def forward(x: Array, weight: Array, bias: Array | None = None) -> tuple[Array, Cache]:
    y = _matmul(x, weight.T)                           # x W^T
    if bias is not None:
        y = namespace(y).add(y, bias, out=reuse(y))    # + b
    return y, Cache(x, weight, bias is not None)


def backward(dy: Array, cache: Cache,
             input_grad: bool = True) -> tuple[Array | None, Array, Array | None]:
    """Returns (dx, dweight, dbias); dbias is None without a bias, dx is None when
    ``input_grad`` is False (the input is data: torch skips it too, a third of the work)."""
    x, weight, has_bias = cache
    dy2 = rows(dy, dy.shape[-1])
    dweight = _matmul(dy2.T, rows(x, x.shape[-1]))
    dbias = dy2.sum(axis=0) if has_bias else None
    return _matmul(dy, weight) if input_grad else None, dweight, dbias


def _matmul(a: Array, b: Array) -> Array:
    """a @ b. For 2-D NumPy arrays np.dot, which calls BLAS for every shape, where
    np.matmul loops in C when the inner dimension is 1 (the sine net's first layer)."""
    if a.ndim == 2 and b.ndim == 2 and not is_torch(a):
        return np.dot(a, b)
    return a @ b
