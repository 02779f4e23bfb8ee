"""Dropout between its front-ends and its formula: ``dropout``, the entry that
``nn.Dropout`` and ``functional.dropout`` call, and ``DropoutFn``, the autograd Function
whose forward and backward are ``ops/dropout.py``'s (on CUDA the entry hands over to the
Triton kernels' Function, ``kernels/dropout.py``).
"""
from __future__ import annotations

from typing import Any

import torch

from .. import _checks as check
from ..kernels.dispatch import check_backend, use_kernels
from ..ops import dropout as dr
from ._calls import function
from ._dtypes import cast, up


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
        y = function(DropoutFn).apply(input, p)[0]
    return input.copy_(y) if inplace else y


@torch.compiler.disable
def _kernel_dropout(input: torch.Tensor, p: float) -> torch.Tensor:
    """The Triton dropout, its seed drawn eagerly: under torch.compile it stays outside the
    graph (a graph break). The seed is a host number: a CUDA graph would replay the one it
    was captured with, the same mask on every replay, so capturing it is refused (torch's
    own dropout is graph-safe)."""
    from ..kernels.autograd import DropoutFn as KernelDropoutFn
    from ..kernels.dropout import new_seed
    if input.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("dropout: backend='triton' cannot be captured in a CUDA graph (its "
                           "seed is drawn on the host, so every replay would drop the same "
                           "elements); use backend='torch' inside graphs")
    return KernelDropoutFn.apply(input, p, new_seed(), 0)


class DropoutFn(torch.autograd.Function):
    """(x, p) -> (y, keep); only y is differentiable. Under vmap the mask is drawn as
    torch.func's ``randomness`` argument says (its default refuses, as for torch.nn)."""
    generate_vmap_rule = True
    OUTPUTS = 2

    @staticmethod
    def forward(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(x.shape, device=x.device)       # float32 uniforms, global generator
        y, cache = dr.forward(up(x), p, u)
        return cast(y, x.dtype), cache.keep

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
