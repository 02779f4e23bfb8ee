"""The few array functions the ops need, for NumPy arrays and torch tensors alike.

NumPy 2 and torch both follow the array API for what the ops use (``mean``, ``sum``,
``sqrt``, ``where`` with ``axis=`` / ``keepdims=``, in-place operators), so ``namespace``
returns the module itself. Only the spellings that differ live here.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

try:  # torch is optional for the NumPy engine
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

Array = Any  # numpy.ndarray | torch.Tensor


def is_torch(x: Array) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def namespace(x: Array) -> ModuleType:
    """``numpy`` or ``torch``: the module whose functions apply to ``x``."""
    return torch if is_torch(x) else np


def vecdot(a: Array, b: Array, axis: int = -1) -> Array:
    """sum(a * b) along ``axis`` without materialising the product."""
    if is_torch(a):
        return torch.linalg.vecdot(a, b, dim=axis)
    return np.vecdot(a, b, axis=axis)


def rows(x: Array, n: int) -> Array:
    """View ``x`` of shape (..., n) as (M, n)."""
    return x.reshape(-1, n)


def zeros(shape: tuple[int, ...], like: Array) -> Array:
    if is_torch(like):
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return np.zeros(shape, dtype=like.dtype)
