"""Losses. ``forward(input, target)`` returns the loss; ``backward(dloss=1.0)`` returns
dL/dinput, to be handed to the model's ``backward``. Formulas: ops/mse_loss.py and
ops/cross_entropy.py."""
from __future__ import annotations

import numpy as np

from .. import _checks as check
from ..ops import cross_entropy as ce
from ..ops import mse_loss as mse
from .module import Array


class _Loss:
    def __init__(self, reduction: str, reductions: tuple[str, ...]):
        if reduction not in reductions:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {reductions}, "
                             f"got {reduction!r}")
        self.reduction = reduction

    def __call__(self, input: Array, target: Array) -> Array:
        return self.forward(input, target)

    def _dloss(self, dloss: Array | float) -> Array | float:
        if not hasattr(self, "_cache"):
            raise RuntimeError(f"{type(self).__name__}: backward called before forward")
        return dloss

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class MSELoss(_Loss):
    """Mean squared error, mean over every element (torch's ``reduction="mean"``):
    L = mean((input - target)^2),  dL/dinput = 2 (input - target) / n."""

    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction, mse.REDUCTIONS)

    def forward(self, input: Array, target: Array) -> Array:
        check.floating("MSELoss", input)
        if input.shape != target.shape:
            raise ValueError(f"MSELoss: input of shape {input.shape} and target of shape "
                             f"{target.shape} differ (no broadcasting, unlike torch's warning)")
        loss, self._cache = mse.forward(input, target, self.reduction)
        return loss

    def backward(self, dloss: Array | float = 1.0) -> Array:
        return mse.backward(self._dloss(dloss), self._cache)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy on logits (..., C) with integer class targets (...), channels
    last; targets equal to ``ignore_index`` count for nothing, and the mean is over the
    others. Stable log-softmax: log p = z - max z - log sum exp(z - max z).
    dL/dz = (softmax(z) - onehot(target)) / (number of counted rows) for the mean.
    """

    def __init__(self, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(reduction, ce.REDUCTIONS)
        self.ignore_index = ignore_index

    def forward(self, input: Array, target: Array) -> Array:
        check.floating("CrossEntropyLoss", input)
        target = np.asarray(target)
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"CrossEntropyLoss: target must hold integer class indices, got "
                            f"dtype {target.dtype}")
        if input.ndim < 1 or input.shape[:-1] != target.shape:
            raise ValueError(f"CrossEntropyLoss: logits of shape {input.shape} need targets of "
                             f"shape {input.shape[:-1]}, got {target.shape}")
        c = input.shape[-1]
        counted = target != self.ignore_index
        bad = counted & ((target < 0) | (target >= c))
        if bad.any():
            raise ValueError(f"CrossEntropyLoss: target {int(target[bad][0])} is out of bounds "
                             f"for {c} classes (ignore_index={self.ignore_index})")
        self._shape = input.shape
        loss, self._cache = ce.forward(input.reshape(-1, c), target.reshape(-1),
                                       self.ignore_index, self.reduction)
        return loss.reshape(target.shape) if self.reduction == "none" else loss

    def backward(self, dloss: Array | float = 1.0) -> Array:
        dloss = self._dloss(dloss)
        if self.reduction == "none":
            dloss = np.asarray(dloss).reshape(-1)
        return ce.backward(dloss, self._cache).reshape(self._shape)

    def __repr__(self) -> str:
        return f"CrossEntropyLoss(ignore_index={self.ignore_index}, reduction={self.reduction!r})"
