r"""Fused residual add + RMSNorm, as a pre-norm transformer block uses it:

    s = x + residual            (rounded to x's dtype: the new residual stream)
    y = rms_norm(s) * w

Returning both saves one full read of s: the unfused pair reads x and residual, writes s,
then reads s again to normalise it. The kernels are ``rms_norm.py``'s with the residual
flags on; this file only names the two directions.

Backward, with ds_direct the gradient that reached s from later in the network:

    ds = rms_norm_backward(dy, s) + ds_direct       dx = dresidual = ds

This file holds the two launchers and ``FusedAddRMSNormFn``, the autograd Function over them.
"""
from __future__ import annotations

from typing import Any

import torch

from . import rms_norm
from ._common import once_differentiable
from ._fast_path import Replayable


def forward(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
            eps: float, prepare: bool = False, round_xhat: bool = False,
            out_dtype: torch.dtype | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Replayable | None]:
    """x, residual (M, N) -> (s = x + residual, y = rms_norm(s) * weight, rstd (M,) float32,
    prepared): with ``prepare``, what lets ``backward`` replay; ``round_xhat``, ``out_dtype``
    as ``rms_norm.forward``'s."""
    y, rstd, s, prepared = rms_norm.forward(x, weight, eps, residual, prepare, round_xhat,
                                            out_dtype)
    assert s is not None
    return s, y, rstd, prepared


def backward(dy: torch.Tensor, ds: torch.Tensor | None, s: torch.Tensor,
             weight: torch.Tensor | None, rstd: torch.Tensor,
             prepared: Replayable | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(d(sum), dweight): d(sum) is the gradient of both x and residual. ``prepared``: what
    ``forward`` made with ``prepare`` (or ``rms_norm.prepare_backward(s, weight, rstd,
    has_ds=True)``)."""
    return rms_norm.backward(dy, s, weight, rstd, ds=ds, prepared=prepared)


class FusedAddRMSNormFn(torch.autograd.Function):
    """(x, residual, weight, eps, round_xhat, out_dtype) -> (s = x + residual,
    rms_norm(s) * weight), through ``forward`` and ``backward`` above."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                eps: float, round_xhat: bool = False, out_dtype: torch.dtype | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        s, y, rstd, ctx.prepared = forward(x, residual, weight, eps, any(ctx.needs_input_grad),
                                           round_xhat, out_dtype)
        ctx.save_for_backward(s, weight, rstd)
        ctx.set_materialize_grads(False)       # an unused output sends None, not zeros to read
        return s, y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, ds: torch.Tensor | None, dy: torch.Tensor | None):
        s, weight, rstd = ctx.saved_tensors
        if dy is None:                          # only s was used downstream
            d = ds if ds is not None else torch.zeros_like(s)
            dw = None if weight is None else torch.zeros_like(weight)
            return d, d, dw, None, None, None
        d, dw = backward(dy, ds, s, weight, rstd, ctx.prepared)
        return d, d, dw, None, None, None
