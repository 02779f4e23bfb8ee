"""Functional forms of the four layers, with torch.nn.functional's signatures.

``batch_norm`` is channels-last: input (N, C) or (N, ..., C), statistics over every
dimension but the last.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import _checks as check
from .kernels.dispatch import check_backend, use_kernels
from .ops._xp import functorch_stack
from .autograd.functions import (BatchNormFn, DropoutFn, LayerNormFn, RMSNormFn,
                                  everyday, up)
from .autograd.compiled import ops
from .ops import batch_norm as bn
from .ops import rms_norm as rn


def _flat(x: torch.Tensor, k: int) -> torch.Tensor:
    """(..., *normalized_shape) -> (M, prod(normalized_shape)). A 2-D x with k = 1 is
    returned as it is: a reshape would be a view, one more autograd node to run (and on CUDA
    on autograd's worker thread) for nothing."""
    if k == 1 and x.dim() == 2:
        return x
    n = 1
    for s in x.shape[x.dim() - k:]:
        n *= s
    return x.reshape(-1, n)


def layer_norm(input: torch.Tensor, normalized_shape: int | Sequence[int],
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5, backend: str = "auto") -> torch.Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the trailing ``normalized_shape``.

    ``backend``: "auto" (Triton kernels for CUDA tensors when triton imports), "triton",
    "torch" (the ``ops`` reference) or "compile" (the reference fused by torch.compile); see
    ``fromscratch.kernels.dispatch``."""
    op = "layer_norm"
    shape = _checked_input(op, input, normalized_shape)
    check.param(op, "weight", weight, shape, input)
    check.param(op, "bias", bias, shape, input)
    args = (_flat(input, len(shape)), _flat1(weight), _flat1(bias), check.epsilon(op, eps))
    if use_kernels(op, backend, input, weight=weight, bias=bias):
        K = _kernels()
        y = _run_kernels(K.LayerNormFn, "layer_norm", *args)
    else:
        y = _function(LayerNormFn).apply(*args, ops(op, backend))[0]
    return _unflat(y, input.shape)


def rms_norm(input: torch.Tensor, normalized_shape: int | Sequence[int],
             weight: torch.Tensor | None = None, eps: float | None = None,
             backend: str = "auto", *, offset: float = 0.0, cast: str = "output"
             ) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * (offset + weight); eps=None is the float32 (float64)
    machine eps.

    ``offset``: the weight is applied as offset + weight (Gemma stores weight - 1 and uses
    offset=1), formed in the compute dtype. ``cast``, where fp16/bf16 input meets float32
    maths (float32 and float64 input are computed in their own dtype, so there every mode
    gives the same numbers):

    * ``"output"`` (default): normalise and apply the weight in float32, cast the output to
      the input's dtype once. Hugging Face's GemmaRMSNorm (with offset=1).
    * ``"normalized"``: normalise in float32, cast xhat to the input's dtype, then apply the
      weight; the output has the dtype torch promotes weight and input to. Hugging Face's
      LlamaRMSNorm, ``weight * xhat.to(input_dtype)`` (and Mistral's, Qwen2's, ...).

    The backward is the same derivative in every mode (a cast has derivative 1). Under
    backend="compile" Inductor keeps a fused intermediate in float32 unless
    ``torch._inductor.config.emulate_precision_casts`` is set, so there "normalized" rounds
    once, as a compiled Llama does itself."""
    op = "rms_norm"
    shape = _checked_input(op, input, normalized_shape)
    check.param(op, "weight", weight, shape, input, floating_point=_RMS_WEIGHT_FLOATING_ONLY)
    if eps is None:
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    x, w, eps = _flat(input, len(shape)), _flat1(weight), check.epsilon(op, eps)
    offset = check.finite(op, "offset", offset)
    xhat_dtype, out_dtype = _rms_dtypes(op, cast, input, weight)
    if use_kernels(op, backend, input, weight=weight):
        K = _kernels()
        y = _run_kernels(K.RMSNormFn, "rms_norm", x, _applied(w, offset), eps,
                         xhat_dtype is not None, out_dtype)
    else:
        y = _function(RMSNormFn).apply(x, w, eps, offset, xhat_dtype, out_dtype,
                                       ops(op, backend))[0]
    return _unflat(y, input.shape)


def fused_add_rms_norm(input: torch.Tensor, residual: torch.Tensor,
                       normalized_shape: int | Sequence[int], weight: torch.Tensor | None = None,
                       eps: float | None = None, backend: str = "auto", *, offset: float = 0.0,
                       cast: str = "output") -> tuple[torch.Tensor, torch.Tensor]:
    """(s, y) with s = input + residual and y = rms_norm(s): a pre-norm transformer block's
    residual add and norm in one pass. The kernels read input and residual once and write s
    and y; the reference is the two steps composed. ``offset`` and ``cast`` as
    ``rms_norm``'s (the kernels take them too)."""
    op = "fused_add_rms_norm"
    check_backend(backend)
    shape = _checked_input(op, input, normalized_shape)
    check.tensor(op, residual, "residual")
    check.floating(op, residual, "residual")
    if residual.shape != input.shape:
        raise check.ShapeError(f"{op}: residual has shape {tuple(residual.shape)}, expected the "
                               f"input's {tuple(input.shape)}")
    check.param(op, "weight", weight, shape, input, floating_point=_RMS_WEIGHT_FLOATING_ONLY)
    if eps is not None:
        eps = check.epsilon(op, eps)
    offset = check.finite(op, "offset", offset)
    if backend == "triton" and residual.dtype != input.dtype:
        raise check.DtypeError(f"{op}: residual is {residual.dtype} and input {input.dtype}; the "
                               "fused kernel takes one dtype for both")
    if residual.dtype == input.dtype and use_kernels(op, backend, input, residual=residual,
                                                     weight=weight):
        if eps is None:
            eps = torch.finfo(torch.float32).eps
        xhat_dtype, out_dtype = _rms_dtypes(op, cast, input, weight)
        K = _kernels()
        s, y = _run_kernels(K.FusedAddRMSNormFn, "fused_add_rms_norm",
                            _flat(input, len(shape)), _flat(residual, len(shape)),
                            _applied(_flat1(weight), offset), float(eps),
                            xhat_dtype is not None, out_dtype)
        return _unflat(s, input.shape), _unflat(y, input.shape)
    s = input + residual
    return s, rms_norm(s, shape, weight, eps, "compile" if backend == "compile" else "torch",
                       offset=offset, cast=cast)


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
        K = _kernels()
        y = _run_kernels(K.BatchNormFn, "batch_norm", x, weight, bias, running_mean,
                         running_var, bool(training), float(momentum), float(eps))
        return _unflat(y, input.shape)
    y, mean, var = _function(BatchNormFn, 3).apply(
        x, weight, bias, None if training else running_mean,
        None if training else running_var, float(eps), ops(op, backend))[:3]
    if training and running_mean is not None and running_var is not None and x.shape[0] > 0:
        # an empty batch has no statistics (0/0): it leaves the running ones, as torch
        _update_running(running_mean, running_var, mean, var, x.shape[0], momentum)
    return _unflat(y, input.shape)


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


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True,
            inplace: bool = False, backend: str = "auto") -> torch.Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    The triton backend draws its mask from Philox (seed from torch's CPU generator) and
    regenerates it in the backward instead of storing it, so for one ``torch.manual_seed``
    it drops other elements than the torch backend; see ``fromscratch.kernels.dropout``."""
    op = "dropout"
    p = check.probability(op, p)
    check.tensor(op, input)
    check.floating(op, input)
    if not training or p == 0.0:
        check_backend(backend)
        return input
    if use_kernels(op, backend, input):
        y = _kernel_dropout(input, p)
    else:
        y = _function(DropoutFn).apply(input, p)[0]
    return input.copy_(y) if inplace else y


#: rms_norm's ``cast`` modes: what is cast to the input's dtype (see ``rms_norm``)
RMS_CASTS = ("output", "normalized")
_HALF = (torch.float16, torch.bfloat16)


def _rms_dtypes(op: str, cast: str, input: torch.Tensor, weight: torch.Tensor | None
                ) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(the dtype xhat is rounded to before the weight, None for none; the output's dtype,
    None for the input's) of ``cast``."""
    if cast == "output":
        return None, None
    check.choice(op, "cast", cast, RMS_CASTS)
    if weight is None:                 # nothing is applied after the cast: the same numbers
        return None, None
    return (input.dtype if input.dtype in _HALF else None,
            torch.promote_types(input.dtype, weight.dtype))


def _applied(weight: torch.Tensor | None, offset: float) -> torch.Tensor | None:
    """What the kernels get as the weight: offset + weight formed in float32, as ``ops``
    forms it (Gemma's 1 + weight.float()); an n-vector, through which autograd carries the
    weight's gradient back. The weight itself when the offset is 0."""
    return weight if not offset else rn.applied(up(weight), offset)


# torch.nn.functional.rms_norm takes an integer weight (its composite form promotes it, and
# such a weight can have no gradient to truncate), so ours does too; layer_norm's and
# batch_norm's torch refuses, and so do we.
_RMS_WEIGHT_FLOATING_ONLY = False


def _checked_input(op: str, input: torch.Tensor, normalized_shape: int | Sequence[int]
                   ) -> tuple[int, ...]:
    """The checks every trailing-dims norm starts with; returns normalized_shape as a tuple."""
    check.tensor(op, input)
    shape = check.normalized_shape(op, normalized_shape)
    check.floating(op, input)
    check.trailing(op, input.shape, shape)
    return shape


def _function(fn: type, public: int = 1) -> type:
    """``fn`` inside a torch.func transform, else its cheaper classic form (``everyday``)
    returning the first ``public`` outputs."""
    return fn if functorch_stack() else everyday(fn, public)


_kernel_functions: list = []      # fromscratch.kernels.autograd once imported


def _kernels() -> Any:
    """The kernels' autograd Functions (``fromscratch.kernels.autograd``, which also holds
    their custom ops as ``.library``), imported on first use: it imports triton, which the
    other backends do not need. A list lookup afterwards, cheaper than an import statement on
    every call."""
    if not _kernel_functions:
        from .kernels import autograd
        _kernel_functions.append(autograd)
    return _kernel_functions[0]


def _run_kernels(fn: type, traced: str, *args: object) -> Any:
    """``fn.apply(*args)`` for a Function of the Triton kernels; under torch.compile the same
    through ``kernels.library.<traced>``: custom ops that a compiled graph holds as single
    operators (no graph break; CUDA graphs of mode="reduce-overhead" capture them). Eagerly
    the Function is cheaper on the host."""
    if torch.compiler.is_compiling():
        library = _kernels().library
        if library is None:                    # it did not load (a warning said why)
            return _outside_graph(fn, *args)
        return getattr(library, traced)(*args)
    return fn.apply(*args)


@torch.compiler.disable
def _outside_graph(fn: type, *args: object) -> object:
    return fn.apply(*args)


@torch.compiler.disable
def _kernel_dropout(input: torch.Tensor, p: float) -> torch.Tensor:
    """The Triton dropout, its seed drawn eagerly: under torch.compile it stays outside the
    graph (a graph break). The seed is a host number: a CUDA graph would replay the one it
    was captured with, the same mask on every replay, so capturing it is refused (torch's
    own dropout is graph-safe)."""
    from .kernels.autograd import DropoutFn as KernelDropoutFn
    from .kernels.dropout import new_seed
    if input.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("dropout: backend='triton' cannot be captured in a CUDA graph (its "
                           "seed is drawn on the host, so every replay would drop the same "
                           "elements); use backend='torch' inside graphs")
    return KernelDropoutFn.apply(input, p, new_seed(), 0)


def _flat1(p: torch.Tensor | None) -> torch.Tensor | None:
    return p if p is None or p.dim() == 1 else p.reshape(-1)


def _unflat(y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """y reshaped to ``shape``; y itself when it has it already (no view node)."""
    return y if y.shape == shape else y.reshape(shape)
