"""The shape checks and reshapes the entries share: every Function sees 2-D input.

A trailing-dims norm flattens (..., *normalized_shape) to (rows, n), runs its Function on
that and gives the output the input's shape back; each step is skipped where it would only
add a view (one more autograd node to run for nothing).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import _checks as check


def checked_input(op: str, input: torch.Tensor, normalized_shape: int | Sequence[int]
                  ) -> tuple[int, ...]:
    """The checks every trailing-dims norm starts with; returns normalized_shape as a tuple."""
    check.tensor(op, input)
    shape = check.normalized_shape(op, normalized_shape)
    check.floating(op, input)
    check.trailing(op, input.shape, shape)
    return shape


def flat(x: torch.Tensor, k: int) -> torch.Tensor:
    """(..., *normalized_shape) -> (M, prod(normalized_shape)), k the normalized dims. A 2-D
    x with k = 1 is returned as it is: a reshape would be a view, one more autograd node to
    run (and on CUDA on autograd's worker thread) for nothing."""
    if k == 1 and x.dim() == 2:
        return x
    n = 1
    for s in x.shape[x.dim() - k:]:
        n *= s
    return x.reshape(-1, n)


def flat1(p: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter of normalized_shape as one vector."""
    return p if p is None or p.dim() == 1 else p.reshape(-1)


def unflat(y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """y reshaped to ``shape``; y itself when it has it already (no view node)."""
    return y if y.shape == shape else y.reshape(shape)
