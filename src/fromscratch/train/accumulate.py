r"""The window weighting rule: gradient accumulation that equals one large batch.

A *window* is the run of micro-batches behind one optimizer step (``accumulation_steps``
of them on each of W processes; the last window of an epoch may be shorter). Write
``s_j`` for micro-batch j's sum of item losses and ``n_j`` for its number of items (a
token whose target is ``ignore_index`` is not an item). One step on the whole window taken
as one batch follows the gradient of

    L = (sum_j s_j) / N,        N = sum_j n_j   (over every micro-batch of every process)

The notebook's loop backpropagates ``mean_j / k`` instead, i.e. ``s_j / (k n_j)``. That
equals dL only when every window has k micro-batches *and* every micro-batch has the same
number of items; the short last window gets weight k'/k, and an item in a small
micro-batch weighs more than one in a large one.

N is known only after the window's last forward, so each micro-batch backpropagates
``s_j * W / N_hat`` with a guess N_hat that every process shares, and once the window is
done the summed gradient is multiplied by ``N_hat / N``. Gradients are linear in the
loss, so the result is dL exactly; DDP averages over W processes, hence the W. The guess
is ``N_hat = k * sum_r n_{r,0}`` (the first micro-batch's count, summed over processes,
times k): right whenever micro-batches are equal, so that the correction is exactly 1.0
and costs nothing, and close otherwise, which keeps fp16 gradients in range under AMP.
The logged loss is ``sum_j s_j / N``, whatever k and W are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def sum_and_count(result: Any, target: Any) -> tuple[torch.Tensor, float]:
    """loss_fn's return as (sum of item losses, number of items).

    A ``(sum, count)`` pair is taken as it is. A plain scalar is read as a mean over the
    micro-batch's first dimension (``len(target)``), so the window weighting stays right;
    a mean over anything else (tokens that are not padding) must be returned as a pair.
    """
    if isinstance(result, (tuple, list)):
        if len(result) != 2:
            raise ValueError(f"loss_fn must return (sum_of_item_losses, number_of_items) or a "
                             f"scalar mean, got a sequence of length {len(result)}")
        total, count = result
        return total, float(count)
    if isinstance(result, torch.Tensor) and result.dim() == 0:
        count = len(target) if hasattr(target, "__len__") else 1
        return result * count, float(count)
    raise ValueError(f"loss_fn must return (sum_of_item_losses, number_of_items) or a scalar "
                     f"mean, got {type(result).__name__}"
                     f"{' of shape ' + str(tuple(result.shape)) if hasattr(result, 'shape') else ''}")


def zero_weight(total: torch.Tensor) -> torch.Tensor:
    """A loss of exactly 0 for a micro-batch with no items, still connected to the graph.

    An empty micro-batch's mean is NaN and ``NaN * 0`` is NaN; ``where`` routes a zero
    gradient instead, so every parameter gets a (zero) gradient and DDP's hooks all fire.
    """
    return torch.where(torch.isfinite(total), total, torch.zeros_like(total)) * 0.0


@dataclass
class Window:
    """Book-keeping for one window on one process: the backward scale and the totals."""

    estimate: float     # N_hat, the same on every process
    world_size: int = 1
    loss_sum: float = 0.0   # sum_j s_j on this process (detached)
    count: float = 0.0      # sum_j n_j on this process

    @classmethod
    def start(cls, first_count_all_ranks: float, accumulation_steps: int,
              world_size: int) -> "Window":
        return cls(max(first_count_all_ranks * accumulation_steps, 1.0), world_size)

    def loss_to_backward(self, total: torch.Tensor, count: float) -> torch.Tensor:
        """s_j * W / N_hat, what micro-batch j backpropagates."""
        self.loss_sum += float(total.detach()) if count > 0 else 0.0
        self.count += count
        if count == 0:
            return zero_weight(total)
        return total * self.world_size / self.estimate

    def correction(self, global_count: float) -> float:
        """N_hat / N: turns the accumulated gradient into exactly dL."""
        return self.estimate / global_count
