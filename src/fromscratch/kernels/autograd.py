"""torch.autograd.Functions whose forward and backward are the Triton kernels.

Inputs arrive as 2-D (rows, hidden) tensors: the functional front-end flattens and
validates them. The kernels' backward is not itself differentiable: asking for a second
derivative (``create_graph=True``) raises; use ``backend="torch"`` for double backward.
Under torch.compile the front-ends call the same kernels through ``library``'s custom ops.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from . import batch_norm, dropout, layer_norm, residual_rms_norm, rms_norm

try:       # the same kernels as custom ops, for torch.compile (the front-ends use them there)
    from . import library
except Exception as e:                          # noqa: BLE001 - a torch without that API
    import warnings
    warnings.warn(f"fromscratch.kernels.library did not load ({type(e).__name__}: {e}); under "
                  "torch.compile the kernels run outside the graph (a graph break)",
                  stacklevel=2)
    library = None


def once_differentiable(backward: Callable) -> Callable:
    """Refuse ``create_graph=True``: the kernels' gradients carry no graph of their own, and
    a second derivative through them would silently miss their dependence on x."""
    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any):
        if torch.is_grad_enabled():
            raise RuntimeError("the Triton kernels' backward is not differentiable (double "
                               "backward, create_graph=True); use backend='torch' for it")
        return backward(ctx, *grads)
    return wrapper


def _bump(*tensors: torch.Tensor | None) -> None:
    """Tell autograd that a kernel wrote into these tensors in place."""
    inc = getattr(torch.autograd.graph, "increment_version", None)
    for t in tensors:
        if t is not None and inc is not None:
            inc(t)


class LayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        y, mean, rstd, ctx.prepared = layer_norm.forward(x, weight, bias, eps,
                                                         any(ctx.needs_input_grad))
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = layer_norm.backward(dy, x, weight, ctx.bias_dtype is not None, mean, rstd,
                                         ctx.bias_dtype, ctx.prepared)
        return dx, dw, db, None


class RMSNormFn(torch.autograd.Function):
    """(x, weight, eps, round_xhat, out_dtype) -> y; see ``rms_norm.forward``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, eps: float,
                round_xhat: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        y, rstd, _, ctx.prepared = rms_norm.forward(x, weight, eps, None,
                                                    any(ctx.needs_input_grad), round_xhat,
                                                    out_dtype)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm.backward(dy, x, weight, rstd, prepared=ctx.prepared)
        return dx, dw, None, None, None


class FusedAddRMSNormFn(torch.autograd.Function):
    """(x, residual, weight, eps, round_xhat, out_dtype) -> (s = x + residual,
    rms_norm(s) * weight)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                eps: float, round_xhat: bool = False, out_dtype: torch.dtype | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        s, y, rstd, ctx.prepared = residual_rms_norm.forward(x, residual, weight, eps,
                                                             any(ctx.needs_input_grad),
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
        d, dw = residual_rms_norm.backward(dy, ds, s, weight, rstd, ctx.prepared)
        return d, d, dw, None, None, None


class DropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float, seed: int, offset: int) -> torch.Tensor:
        ctx.p, ctx.seed, ctx.offset = p, seed, offset
        return dropout.apply(x, p, seed, offset)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor):
        return dropout.apply(dy, ctx.p, ctx.seed, ctx.offset), None, None, None


class BatchNormFn(torch.autograd.Function):
    """x (M, C) channels-last. In training the running buffers, when given, are updated in
    place by the statistics kernel; otherwise they normalise."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, running_mean: torch.Tensor | None,
                running_var: torch.Tensor | None, training: bool, momentum: float,
                eps: float) -> torch.Tensor:
        y, mean, _, rstd, ctx.prepared = batch_norm.forward(
            x, weight, bias, eps, training, running_mean, running_var, momentum,
            any(ctx.needs_input_grad))
        if training:
            _bump(running_mean, running_var)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.training = training
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = batch_norm.backward(dy, x, weight, ctx.bias_dtype is not None, mean, rstd,
                                         ctx.training, ctx.bias_dtype, ctx.prepared)
        return dx, dw, db, None, None, None, None, None
