"""torch.autograd.Functions whose backward is the hand-derived one in ``ops``.

fp16/bf16 tensors are computed in float32 and cast back once, with autocast off (see
``own_dtypes``). Under ``create_graph=True`` the backward rebuilds the forward's cache from
the saved inputs with grad enabled, so the hand-written backward is itself differentiable
(gradgradcheck passes).

Each forward returns what its backward needs (the per-row statistics) as extra outputs,
marked non-differentiable, and ``setup_context`` saves them: that is the form torch.func
accepts, so ``torch.func.grad``, ``vmap`` (per-sample gradients) and ``jacrev`` work on these
layers as on torch.nn's (``generate_vmap_rule``: the ops are plain torch operations).
Outside a transform the front-ends call ``everyday(Fn, public)``, the same Function in the
classic form (see there), which costs the host less per call.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from ..ops import batch_norm as bn
from ..ops import dropout as dr
from ..ops import layer_norm as ln
from ..ops import rms_norm as rn
from .compiled import Ops


def _autocasting(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:                       # a device autocast does not know (meta)
        return False


def own_dtypes(fn: Callable) -> Callable:
    """Run a Function's forward or backward with autocast off on its tensors' device.

    The ops choose their dtypes themselves (float32 maths for fp16/bf16, the input's dtype
    out). Under ``torch.autocast`` their row dots, a matmul, would be cast to bf16/fp16:
    a backward run inside an autocast region (on the CPU it runs in the caller's thread)
    would lose dx's digits to half-precision statistics."""
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if t is None or not _autocasting(t.device.type):
            return fn(*args)
        with torch.autocast(t.device.type, enabled=False):
            return fn(*args)
    return wrapper


def up(t: torch.Tensor | None) -> torch.Tensor | None:
    """The compute dtype: float32 for fp16/bf16, the tensor's own otherwise."""
    if t is not None and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def down(t: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None or like is None else t.to(like.dtype)


def output(y: torch.Tensor, dtype: torch.dtype, saved: torch.Tensor) -> torch.Tensor:
    """y in ``dtype``, never the saved tensor itself: RMSNorm without a weight returns
    xhat, which its backward keeps, and an in-place op on the output (ReLU(inplace=True))
    would corrupt it. (LayerNorm and BatchNorm keep x, mean and rstd: y is never saved.)"""
    out = y.to(dtype)
    return out.clone() if out is saved else out


@functools.lru_cache(maxsize=None)              # one class per (fn, public), made once
def everyday(fn: type, public: int) -> type:
    """``fn`` in the classic form: ``forward(ctx, *inputs)`` runs ``fn.forward``, hands ``ctx``
    to ``fn.setup_context`` itself and returns the first ``public`` outputs (a tuple, as
    ``fn``'s); the backward is ``fn``'s. Same maths, same saved tensors. Why: with
    ``setup_context`` defined, ``Function.apply`` binds the arguments with
    ``inspect.signature`` on every call (~12 us) and materialises zero gradients for the
    statistics; at small sizes that was a quarter of a step. torch.func transforms need
    ``fn`` itself (``ops._xp.functorch_stack()`` tells)."""
    def forward(ctx: Any, *inputs: Any) -> Any:
        outputs = fn.forward(*inputs)
        fn.setup_context(ctx, inputs, outputs)
        return outputs[:public]

    def backward(ctx: Any, *grads: Any) -> Any:
        return fn.backward(ctx, *grads, *([None] * (fn.OUTPUTS - public)))
    # the same name, so the graph shows LayerNormFnBackward either way
    return type(fn.__name__, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward),
                 "__doc__": fn.__doc__, "__module__": fn.__module__})


class LayerNormFn(torch.autograd.Function):
    """(x, weight, bias, eps, ops) -> (y, mean, rstd); only y is differentiable."""
    generate_vmap_rule = True
    OUTPUTS = 3

    @staticmethod
    @own_dtypes
    def forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float, ops: Ops = ln) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, cache = ops.forward(up(x), up(weight), up(bias), eps)
        return y.to(x.dtype), cache.mean, cache.rstd

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


class RMSNormFn(torch.autograd.Function):
    """(x, weight, eps, offset, xhat_dtype, out_dtype, ops) -> (y, xhat, rstd); only y is
    differentiable. ``offset``, ``xhat_dtype``: ``ops.rms_norm.forward``'s; y comes in
    ``out_dtype`` (None: x's)."""
    generate_vmap_rule = True
    OUTPUTS = 3

    @staticmethod
    @own_dtypes
    def forward(x: torch.Tensor, weight: torch.Tensor | None, eps: float, offset: float,
                xhat_dtype: torch.dtype | None, out_dtype: torch.dtype | None, ops: Ops
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, cache = ops.forward(up(x), up(weight), eps, offset, xhat_dtype)
        return output(y, out_dtype or x.dtype, cache.xhat), cache.xhat, cache.rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, eps, offset, _, _, ops = inputs
        _, xhat, rstd = output
        ctx.mark_non_differentiable(xhat, rstd)
        ctx.save_for_backward(x, weight, xhat, rstd)
        ctx.eps, ctx.offset, ctx.ops = eps, offset, ops

    @staticmethod
    @own_dtypes
    def backward(ctx: Any, dy: torch.Tensor, *_stats: Any):
        x, weight, xhat, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            _, cache = rn.forward(up(x), up(weight), ctx.eps, ctx.offset)
        else:
            cache = rn.Cache(xhat, rstd, rn.applied(up(weight), ctx.offset))
        backward = rn.backward if torch.is_grad_enabled() else ctx.ops.backward
        dx, dw = backward(up(dy), cache)
        return dx.to(x.dtype), down(dw, weight), None, None, None, None, None


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
        return y.to(x.dtype), mean.view_as(mean), var.view_as(var), cache.rstd

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


class DropoutFn(torch.autograd.Function):
    """(x, p) -> (y, keep); only y is differentiable. Under vmap the mask is drawn as
    torch.func's ``randomness`` argument says (its default refuses, as for torch.nn)."""
    generate_vmap_rule = True
    OUTPUTS = 2

    @staticmethod
    def forward(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(x.shape, device=x.device)       # float32 uniforms, global generator
        y, cache = dr.forward(up(x), p, u)
        return y.to(x.dtype), cache.keep

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, p = inputs
        _, keep = output
        ctx.mark_non_differentiable(keep)
        ctx.save_for_backward(keep)
        ctx.scale = dr.scale(p)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _keep: Any):
        (keep,) = ctx.saved_tensors
        return dr.backward(up(dy), dr.Cache(keep, ctx.scale)).to(dy.dtype), None
