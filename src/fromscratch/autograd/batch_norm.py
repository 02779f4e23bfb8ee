"""BatchNorm between its front-ends and its formula: ``batch_norm``, the channels-last entry
that ``nn.BatchNorm1d/2d/3d`` and ``functional.batch_norm`` call, and ``BatchNormFn``, the
autograd Function whose forward and backward are ``ops/batch_norm.py``'s (on CUDA the entry
hands over to the Triton kernels' Function, ``kernels/batch_norm.py``).
"""
from __future__ import annotations

from typing import Any

import torch

from .. import _checks as check
from ..kernels.dispatch import use_kernels
from ..ops import batch_norm as bn
from ..ops._xp import functorch_stack
from ._calls import function, kernels, run_kernels
from ._dtypes import cast, down, own_dtypes, up
from ._shapes import unflat
from .compiled import Ops, ops


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None,
               running_var: torch.Tensor | None, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, backend: str = "auto") -> torch.Tensor:
    """Channels-last batch norm. In training it normalises with the batch's biased variance
    and, when running buffers are given, updates them in place with the unbiased one:
    ``running = (1 - momentum) * running + momentum * batch``."""
    op = "batch_norm"
    check.tensor(op, input)
    check.floating(op, input)
    check.batch_norm_input(op, input.shape, None, training, eps)
    momentum = check.unit_interval(op, "momentum", momentum)
    c = input.shape[-1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        check.param(op, name, t, (c,), input)
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: running_mean and running_var are required when not training")
    x = input if input.dim() == 2 else input.reshape(-1, c)
    if use_kernels(op, backend, input, weight=weight, bias=bias, running_mean=running_mean,
                   running_var=running_var):
        K = kernels()
        y = run_kernels(K.BatchNormFn, "batch_norm", x, weight, bias, running_mean,
                        running_var, bool(training), float(momentum), float(eps))
        return unflat(y, input.shape)
    y, mean, var = function(BatchNormFn, 3).apply(
        x, weight, bias, None if training else running_mean,
        None if training else running_var, float(eps), ops(op, backend))[:3]
    if training and running_mean is not None and running_var is not None and x.shape[0] > 0:
        # an empty batch has no statistics (0/0): it leaves the running ones, as torch
        _update_running(running_mean, running_var, mean, var, x.shape[0], momentum)
    return unflat(y, input.shape)


def _update_running(running_mean: torch.Tensor, running_var: torch.Tensor,
                    mean: torch.Tensor, var: torch.Tensor, count: int, momentum: float) -> None:
    """Update the running buffers in place, outside autograd (as torch). Under
    torch.func.vmap that fails where the buffers are one for all samples while each sample
    has its own batch statistics; torch's own message for it names none of that."""
    with torch.no_grad():
        try:
            bn.update_running_(running_mean, running_var, mean, var, count, momentum)
        except RuntimeError as err:
            if not functorch_stack():
                raise
            raise RuntimeError(
                "batch_norm: the running statistics (running_mean, running_var) cannot be "
                "updated in place under torch.func.vmap in training: each vmapped sample has "
                "its own batch statistics, the buffers are one for all. Normalise with the "
                "batch's statistics only (BatchNorm(..., track_running_stats=False), or "
                "running_mean=running_var=None for F.batch_norm), or call the module in "
                "eval mode") from err


class BatchNormFn(torch.autograd.Function):
    """x is (M, C). With ``mean``/``var`` given they are used as constants (eval).
    (x, weight, bias, mean, var, eps, ops) -> (y, mean, var, rstd); only y is
    differentiable."""
    generate_vmap_rule = True
    OUTPUTS = 4

    @staticmethod
    @own_dtypes
    def forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                mean: torch.Tensor | None, var: torch.Tensor | None, eps: float,
                ops: Ops = bn) -> tuple[torch.Tensor, ...]:
        y, cache, mean, var = ops.forward(up(x), up(weight), up(bias), eps, up(mean), up(var),
                                          batch_stats=mean is None)
        # in eval mean and var are the running buffers themselves: outputs that are inputs
        # cannot be saved, views of them can
        return cast(y, x.dtype), mean.view_as(mean), var.view_as(var), cache.rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, bias, mean_in, _, eps, *ops = inputs
        _, mean, var, rstd = output
        ctx.mark_non_differentiable(mean, var, rstd)
        ctx.save_for_backward(x, weight, bias, rstd, mean, var)
        ctx.eps, ctx.batch, ctx.ops = eps, mean_in is None, ops[0] if ops else bn

    @staticmethod
    @own_dtypes
    def backward(ctx: Any, dy: torch.Tensor, *_stats: Any):
        x, weight, bias, rstd, mean, var = ctx.saved_tensors
        if torch.is_grad_enabled():
            _, cache, _, _ = bn.forward(up(x), up(weight), up(bias), ctx.eps,
                                        None if ctx.batch else mean, None if ctx.batch else var,
                                        batch_stats=ctx.batch)
        else:
            cache = bn.Cache(up(x), mean, rstd, up(weight),
                             bias is not None and ctx.needs_input_grad[2], ctx.batch)
        backward = bn.backward if torch.is_grad_enabled() else ctx.ops.backward
        dx, dw, db = backward(up(dy), cache)
        return dx.to(x.dtype), down(dw, weight), down(db, bias), None, None, None, None
