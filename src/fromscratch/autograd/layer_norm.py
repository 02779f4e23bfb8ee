"""LayerNorm between its front-ends and its formula: ``layer_norm``, the entry that
``nn.LayerNorm`` and ``functional.layer_norm`` call, and ``LayerNormFn``, the autograd
Function whose forward and backward are ``ops/layer_norm.py``'s (on CUDA the entry hands over
to the Triton kernels' Function instead, ``kernels/layer_norm.py``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .. import _checks as check
from ..kernels.dispatch import use_kernels
from ..ops import layer_norm as ln
from ._calls import function, kernels, run_kernels
from ._dtypes import cast, down, own_dtypes, up
from ._shapes import checked_input, flat, flat1, unflat
from .compiled import Ops, ops


def layer_norm(input: torch.Tensor, normalized_shape: int | Sequence[int],
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5, backend: str = "auto") -> torch.Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the trailing ``normalized_shape``.

    ``backend``: "auto" (Triton kernels for CUDA tensors when triton imports), "triton",
    "torch" (the ``ops`` reference) or "compile" (the reference fused by torch.compile); see
    ``fromscratch.kernels.dispatch``."""
    op = "layer_norm"
    shape = checked_input(op, input, normalized_shape)
    check.param(op, "weight", weight, shape, input)
    check.param(op, "bias", bias, shape, input)
    args = (flat(input, len(shape)), flat1(weight), flat1(bias), check.epsilon(op, eps))
    if use_kernels(op, backend, input, weight=weight, bias=bias):
        K = kernels()
        y = run_kernels(K.LayerNormFn, "layer_norm", *args)
    else:
        y = function(LayerNormFn).apply(*args, ops(op, backend))[0]
    return unflat(y, input.shape)


class LayerNormFn(torch.autograd.Function):
    """(x, weight, bias, eps, ops) -> (y, mean, rstd); only y is differentiable."""
    generate_vmap_rule = True
    OUTPUTS = 3

    @staticmethod
    @own_dtypes
    def forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float, ops: Ops = ln) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, cache = ops.forward(up(x), up(weight), up(bias), eps)
        return cast(y, x.dtype), cache.mean, cache.rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, bias, eps, *ops = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.eps, ctx.ops = eps, ops[0] if ops else ln

    @staticmethod
    @own_dtypes
    def backward(ctx: Any, dy: torch.Tensor, *_stats: Any):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            _, cache = ln.forward(up(x), up(weight), up(bias), ctx.eps)
        else:
            # no dbias where nobody asked for it (a frozen bias): one reduction less
            cache = ln.Cache(up(x), mean, rstd, up(weight),
                             bias is not None and ctx.needs_input_grad[2])
        backward = ln.backward if torch.is_grad_enabled() else ctx.ops.backward
        dx, dw, db = backward(up(dy), cache)
        return dx.to(x.dtype), down(dw, weight), down(db, bias), None, None
