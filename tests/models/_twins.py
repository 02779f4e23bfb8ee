"""Train an untouched model and its swapped twin side by side, and compare them."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


def train_alike(ref: torch.nn.Module, model: torch.nn.Module, batches: Iterable[Any],
                run: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, torch.Tensor]],
                lr: float, tol: float, grad_tol: tuple[float, float] | None = None) -> None:
    """A few SGD steps (momentum 0.9) on both. At each step the logits must agree to
    ``tol`` (relative and absolute) and, with ``grad_tol`` (rtol, atol), every gradient.
    ``run(model, batch) -> (logits, loss)``. SGD, not Adam: an update proportional to the
    gradient (Adam's m / sqrt(v) turns a rounding difference in a near-zero gradient into a
    whole step's difference)."""
    opt_ref = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for batch in batches:
        (y_ref, loss_ref), (y, loss) = run(ref, batch), run(model, batch)
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        loss_ref.backward()
        loss.backward()
        if grad_tol is not None:
            for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
                if p.grad is not None:
                    torch.testing.assert_close(q.grad, p.grad, rtol=grad_tol[0],
                                               atol=grad_tol[1], msg=n)
        for opt_ in (opt_ref, opt):
            opt_.step()
            opt_.zero_grad()
