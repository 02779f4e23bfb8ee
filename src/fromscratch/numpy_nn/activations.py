"""Elementwise activations; the formulas are in ops/sigmoid.py, ops/relu.py, ops/tanh.py."""
from __future__ import annotations

from types import ModuleType

from ..ops import relu, sigmoid, tanh
from .module import Array, Module


class _Elementwise(Module):
    op: ModuleType

    def forward(self, x: Array) -> Array:
        y, self._cache = self.op.forward(x)
        return y

    def backward(self, dout: Array) -> Array:
        return self.op.backward(dout, self._cache)


class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x)),  dy/dx = y (1 - y)."""
    op = sigmoid


class Tanh(_Elementwise):
    """y = tanh(x),  dy/dx = 1 - y^2."""
    op = tanh


class ReLU(_Elementwise):
    """y = max(0, x),  dy/dx = [x > 0]."""
    op = relu
