"""A forward+backward step as the benchmarks time it (``grad_step``), and its floor: an
autograd Function that allocates its output and its gradient and launches nothing, what the
harness and autograd (on CUDA, with the handoff to autograd's worker thread) cost by
themselves: no implementation's host time goes below it."""
from __future__ import annotations

from typing import Any, Callable

import torch


class Floor(torch.autograd.Function):
    #: called with the gradient once the backward has allocated it (where a real backward
    #: would launch its first kernel); host_overhead.py times the step up to there
    on_backward: Callable[[torch.Tensor], None] | None = None

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        dx = torch.empty_like(dy)
        if Floor.on_backward is not None:
            Floor.on_backward(dx)
        return dx


def floor_step(x: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: Floor.apply(x)


def grad_step(fwd: Callable[[], Any], params: list, grads: list) -> Callable[[], Any]:
    """The benchmarks' step: ``fwd``, then ``torch.autograd.grad`` of its output(s)."""
    def step() -> Any:
        out = fwd()
        return torch.autograd.grad(out if isinstance(out, tuple) else (out,), params, grads)
    return step
