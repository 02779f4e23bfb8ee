"""The kernels as ``torch.library`` custom ops, for code that ``torch.compile`` traces.

A compiled model sees each as one operator with known output shapes, so its graph does not
break around our kernels, and ``mode="reduce-overhead"`` can capture them in its CUDA graphs
with the rest of the model (our launches go to the current stream, allocations through
torch's allocator). Eager calls keep the autograd Functions of ``autograd.py``: through the
dispatcher a custom op costs more host time per call (LayerNorm's forward+backward 67.0 us
against 42.6 us through the front-end and its Function, ``benchmarks/host_overhead.py`` on a
2-core CPU), and eagerly nothing needs the op.

Each op has a backward op and the autograd formula that joins them, as ``autograd.py``'s
Functions do; a backward op returns an empty tensor where the Function returns None (an op
cannot return None). Ops with an autograd formula must not mutate their inputs, so
BatchNorm's op leaves the running statistics alone and ``batch_norm`` below updates them
with traced torch code (the same formula as the kernel's, which Inductor fuses). Dropout is
not here: its seed is drawn on the host at every call, and a captured graph would replay one
mask; it stays outside the graph (``autograd.dropout._kernel_dropout``).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..ops import batch_norm as bn_ops
from . import batch_norm as bn, layer_norm as ln, rms_norm as rms
from ._common import refuse_double_backward

_F32 = torch.float32


def _or_empty(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


def _fake_grad(p: Tensor | None, n: int, like: Tensor) -> Tensor:
    """A fake implementation's gradient for parameter ``p`` (length ``n``): empty without it."""
    return like.new_empty(0) if p is None else p.new_empty(n)


# --- LayerNorm ------------------------------------------------------------------------------

@torch.library.custom_op("fromscratch::layer_norm", mutates_args=())
def layer_norm_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, N) -> (y, mean, rstd): ``layer_norm.forward``."""
    return ln.forward(x, weight, bias, eps)[:3]


@layer_norm_op.register_fake
def _(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Any:
    m, n = x.shape
    return x.new_empty((m, n)), x.new_empty(m, dtype=_F32), x.new_empty(m, dtype=_F32)


@torch.library.custom_op("fromscratch::layer_norm_backward", mutates_args=())
def layer_norm_backward_op(dy: Tensor, x: Tensor, weight: Optional[Tensor],
                           bias: Optional[Tensor], mean: Tensor,
                           rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias), empty where absent; ``bias`` only gives dbias its dtype."""
    b_dtype = None if bias is None else bias.dtype
    prep = ln.prepare_backward(x, weight, bias is not None, mean, rstd, b_dtype)
    dx, dw, db = ln.backward(dy, x, weight, bias is not None, mean, rstd, b_dtype, prep)
    return dx, _or_empty(dw, x), _or_empty(db, x)


@layer_norm_backward_op.register_fake
def _(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
      rstd: Tensor) -> Any:
    n = x.shape[1]
    return x.new_empty(x.shape), _fake_grad(weight, n, x), _fake_grad(bias, n, x)


def _layer_norm_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, bias, _ = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(x, weight, bias, output[1], output[2])


def _layer_norm_backward(ctx: Any, dy: Tensor, *_: Any) -> tuple:
    refuse_double_backward()
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = layer_norm_backward_op(dy, x, weight, bias, mean, rstd)
    return dx, None if weight is None else dw, None if bias is None else db, None


layer_norm_op.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """What ``LayerNormFn.apply`` returns, through the op."""
    return layer_norm_op(x, weight, bias, eps)[0]


# --- RMSNorm and the fused residual add + RMSNorm ------------------------------------------

@torch.library.custom_op("fromscratch::rms_norm", mutates_args=())
def rms_norm_op(x: Tensor, weight: Optional[Tensor], eps: float, round_xhat: bool,
                out_dtype: Optional[torch.dtype]) -> tuple[Tensor, Tensor]:
    """x (M, N) -> (y, rstd): ``rms_norm.forward``."""
    y, rstd, _, _ = rms.forward(x, weight, eps, None, False, round_xhat, out_dtype)
    return y, rstd


@rms_norm_op.register_fake
def _(x: Tensor, weight: Optional[Tensor], eps: float, round_xhat: bool,
      out_dtype: Optional[torch.dtype]) -> Any:
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape[0], dtype=_F32)


@torch.library.custom_op("fromscratch::fused_add_rms_norm", mutates_args=())
def fused_add_rms_norm_op(x: Tensor, residual: Tensor, weight: Optional[Tensor],
                          eps: float, round_xhat: bool, out_dtype: Optional[torch.dtype]
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """x, residual (M, N) -> (s = x + residual, y = rms_norm(s), rstd)."""
    y, rstd, s, _ = rms.forward(x, weight, eps, residual, False, round_xhat, out_dtype)
    return s, y, rstd


@fused_add_rms_norm_op.register_fake
def _(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float, round_xhat: bool,
      out_dtype: Optional[torch.dtype]) -> Any:
    return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=out_dtype),
            x.new_empty(x.shape[0], dtype=_F32))


@torch.library.custom_op("fromscratch::rms_norm_backward", mutates_args=())
def rms_norm_backward_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], rstd: Tensor,
                         ds: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(dx, dweight), dweight empty without weight; ``ds`` is added to dx (the fused form's
    gradient that reached the sum directly)."""
    prep = rms.prepare_backward(x, weight, rstd, has_ds=ds is not None)
    dx, dw = rms.backward(dy, x, weight, rstd, ds=ds, prepared=prep)
    return dx, _or_empty(dw, x)


@rms_norm_backward_op.register_fake
def _(dy: Tensor, x: Tensor, weight: Optional[Tensor], rstd: Tensor,
      ds: Optional[Tensor]) -> Any:
    return x.new_empty(x.shape), _fake_grad(weight, x.shape[1], x)


def _rms_norm_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, *_ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_backward(ctx: Any, dy: Tensor, _: Any) -> tuple:
    refuse_double_backward()
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_backward_op(dy, x, weight, rstd, None)
    return dx, None if weight is None else dw, None, None, None


def _fused_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    weight = inputs[2]
    s, _, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.save_for_backward(s, weight, rstd)


def _fused_backward(ctx: Any, ds: Tensor, dy: Tensor, _: Any) -> tuple:
    refuse_double_backward()
    s, weight, rstd = ctx.saved_tensors
    d, dw = rms_norm_backward_op(dy, s, weight, rstd, ds)
    return d, d, None if weight is None else dw, None, None, None


rms_norm_op.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup)
fused_add_rms_norm_op.register_autograd(_fused_backward, setup_context=_fused_setup)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float, round_xhat: bool = False,
             out_dtype: torch.dtype | None = None) -> Tensor:
    """What ``RMSNormFn.apply`` returns, through the op."""
    return rms_norm_op(x, weight, eps, round_xhat, out_dtype)[0]


def fused_add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor | None, eps: float,
                       round_xhat: bool = False, out_dtype: torch.dtype | None = None
                       ) -> tuple[Tensor, Tensor]:
    """What ``FusedAddRMSNormFn.apply`` returns, through the op."""
    s, y, _ = fused_add_rms_norm_op(x, residual, weight, eps, round_xhat, out_dtype)
    return s, y


# --- BatchNorm, channels-last ---------------------------------------------------------------

@torch.library.custom_op("fromscratch::batch_norm", mutates_args=())
def batch_norm_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  running_mean: Optional[Tensor], running_var: Optional[Tensor],
                  training: bool, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x (M, C) -> (y, mean, var, rstd). Training: the batch's statistics, the running
    buffers untouched (see ``batch_norm``); otherwise the running statistics normalise."""
    if training:
        y, mean, var, rstd, _ = bn.forward(x, weight, bias, eps, True)
        if var is mean:                              # an empty batch: one NaN tensor for all
            var, rstd = mean.clone(), mean.clone()
        return y, mean, var, rstd
    y, mean, var, rstd, _ = bn.forward(x, weight, bias, eps, False, running_mean, running_var)
    # float32 running buffers come back as themselves; an op's outputs must be its own
    return y, mean.clone(), var.clone(), rstd


@batch_norm_op.register_fake
def _(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
      running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool,
      eps: float) -> Any:
    c = x.shape[1]
    return (x.new_empty(x.shape), x.new_empty(c, dtype=_F32), x.new_empty(c, dtype=_F32),
            x.new_empty(c, dtype=_F32))


@torch.library.custom_op("fromscratch::batch_norm_backward", mutates_args=())
def batch_norm_backward_op(dy: Tensor, x: Tensor, weight: Optional[Tensor],
                           bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
                           training: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias), empty where absent; ``bias`` only gives dbias its dtype."""
    b_dtype = None if bias is None else bias.dtype
    prep = bn.prepare_backward(x, weight, bias is not None, mean, rstd, training, b_dtype)
    dx, dw, db = bn.backward(dy, x, weight, bias is not None, mean, rstd, training, b_dtype,
                             prep)
    return dx, _or_empty(dw, x), _or_empty(db, x)


@batch_norm_backward_op.register_fake
def _(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
      rstd: Tensor, training: bool) -> Any:
    c = x.shape[1]
    return x.new_empty(x.shape), _fake_grad(weight, c, x), _fake_grad(bias, c, x)


def _batch_norm_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, bias, _, _, training, _ = inputs
    _, mean, var, rstd = output
    ctx.mark_non_differentiable(mean, var, rstd)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.training = training


def _batch_norm_backward(ctx: Any, dy: Tensor, *_: Any) -> tuple:
    refuse_double_backward()
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = batch_norm_backward_op(dy, x, weight, bias, mean, rstd, ctx.training)
    return (dx, None if weight is None else dw, None if bias is None else db,
            None, None, None, None)


batch_norm_op.register_autograd(_batch_norm_backward, setup_context=_batch_norm_setup)


def batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
               running_mean: Tensor | None, running_var: Tensor | None, training: bool,
               momentum: float, eps: float) -> Tensor:
    """What ``BatchNormFn.apply`` returns and does, through the op: in training the running
    buffers, when given, are updated afterwards (``ops.batch_norm.update_running_``, the
    kernel's formula) unless the batch is empty, as torch leaves them then."""
    y, mean, var, _ = batch_norm_op(x, weight, bias, running_mean, running_var, training, eps)
    m = x.shape[0]
    if training and running_mean is not None and running_var is not None and m > 0:
        with torch.no_grad():
            bn_ops.update_running_(running_mean, running_var, mean, var, m, momentum)
    return y
