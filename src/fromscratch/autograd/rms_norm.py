"""RMSNorm between its front-ends and its formula: ``rms_norm`` and ``fused_add_rms_norm``,
the entries that ``nn.RMSNorm``, ``nn.FusedAddRMSNorm`` and ``functional`` call, and
``RMSNormFn``, the autograd Function whose forward and backward are ``ops/rms_norm.py``'s
(on CUDA the entries hand over to the Triton kernels' Functions, ``kernels/rms_norm.py`` and
``kernels/residual_rms_norm.py``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .. import _checks as check
from ..kernels.dispatch import check_backend, use_kernels
from ..ops import rms_norm as rn
from ._calls import function, kernels, run_kernels
from ._dtypes import down, output, own_dtypes, up
from ._shapes import checked_input, flat, flat1, unflat
from .compiled import Ops, ops


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
    shape = checked_input(op, input, normalized_shape)
    check.param(op, "weight", weight, shape, input, floating_point=_RMS_WEIGHT_FLOATING_ONLY)
    if eps is None:
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    x, w, eps = flat(input, len(shape)), flat1(weight), check.epsilon(op, eps)
    offset = check.finite(op, "offset", offset)
    xhat_dtype, out_dtype = _rms_dtypes(op, cast, input, weight)
    if use_kernels(op, backend, input, weight=weight):
        K = kernels()
        y = run_kernels(K.RMSNormFn, "rms_norm", x, _applied(w, offset), eps,
                        xhat_dtype is not None, out_dtype)
    else:
        y = function(RMSNormFn).apply(x, w, eps, offset, xhat_dtype, out_dtype,
                                      ops(op, backend))[0]
    return unflat(y, input.shape)


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
    shape = checked_input(op, input, normalized_shape)
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
        K = kernels()
        s, y = run_kernels(K.FusedAddRMSNormFn, "fused_add_rms_norm",
                           flat(input, len(shape)), flat(residual, len(shape)),
                           _applied(flat1(weight), offset), float(eps),
                           xhat_dtype is not None, out_dtype)
        return unflat(s, input.shape), unflat(y, input.shape)
    s = input + residual
    return s, rms_norm(s, shape, weight, eps, "compile" if backend == "compile" else "torch",
                       offset=offset, cast=cast)


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
