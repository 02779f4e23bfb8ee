"""Central differences (float64) against the hand-written backward of every module and
loss, and proof that the check catches a wrong backward."""
from __future__ import annotations

import numpy as np
import pytest

from fromscratch import numpy_nn as nn

TOL = 1e-6


def x_of(*shape: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) + shift


def _randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    rng = np.random.default_rng(seed)
    for _, m, k in module.named_slots():
        m.params[k][...] = rng.standard_normal(m.params[k].shape) * 0.5 + 0.3
    return module


MODULES = {
    "Linear": (lambda: nn.Linear(4, 3, rng=0), (5, 4)),
    "Linear, no bias, 3-d input": (lambda: nn.Linear(4, 3, bias=False, rng=0), (2, 3, 4)),
    "Sigmoid": (nn.Sigmoid, (4, 5)),
    "Tanh": (nn.Tanh, (4, 5)),
    "ReLU": (nn.ReLU, (4, 5)),
    "LayerNorm": (lambda: nn.LayerNorm(6), (3, 6)),
    "LayerNorm (2, 3), no bias": (lambda: nn.LayerNorm((2, 3), bias=False), (4, 2, 3)),
    "RMSNorm": (lambda: nn.RMSNorm(6), (3, 6)),
    "BatchNorm, train": (lambda: nn.BatchNorm(3), (6, 3)),
    "BatchNorm, train, (N, L, C)": (lambda: nn.BatchNorm(3, momentum=None), (2, 4, 3)),
    "BatchNorm, eval": (lambda: nn.BatchNorm(3).eval(), (6, 3)),
    "Dropout p=0.4": (lambda: nn.Dropout(0.4, rng=3), (5, 6)),
    "Sequential": (lambda: nn.Sequential(nn.Linear(3, 6, rng=1), nn.LayerNorm(6), nn.Tanh(),
                                         nn.BatchNorm(6), nn.Dropout(0.2, rng=2),
                                         nn.Linear(6, 2, rng=4), nn.Sigmoid()), (7, 3)),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_module(name):
    make, shape = MODULES[name]
    module = _randomized(make())
    report = nn.gradcheck(module, x_of(*shape, shift=0.5))
    expected = {"input"} | {n for n, _, _ in module.named_slots()}
    assert set(report.errors) == expected, report.errors
    assert report.ok(TOL), f"{name}:\n{report}"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(reduction):
    report = nn.gradcheck(nn.MSELoss(reduction), x_of(4, 3), x_of(4, 3, seed=1))
    assert report.ok(TOL), str(report)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(reduction):
    target = np.array([[0, 2, -100], [1, 1, 3]])
    report = nn.gradcheck(nn.CrossEntropyLoss(reduction=reduction), x_of(2, 3, 4) * 3, target)
    assert report.ok(TOL), str(report)


def test_gradcheck_float32_module_checked_in_float64():
    """A float32 module is copied to float64 for the check; the original is untouched."""
    lin = nn.Linear(3, 2, rng=0, dtype=np.float32)
    report = nn.gradcheck(lin, x_of(4, 3).astype(np.float32))
    assert report.ok(TOL), str(report)
    assert lin.params["weight"].dtype == np.float32 and lin.grads["weight"] is None


class _WrongSigmoid(nn.Sigmoid):
    def backward(self, dout):
        return dout * self._cache.y                    # forgot the (1 - y)


class _WrongLinear(nn.Linear):
    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["bias"] = self.grads["bias"] / dout.shape[0]   # a mean where a sum belongs
        return dx


@pytest.mark.parametrize("module,bad", [(_WrongSigmoid(), "input"),
                                        (_WrongLinear(3, 2, rng=0), "bias")])
def test_catches_a_wrong_backward(module, bad):
    report = nn.gradcheck(module, x_of(5, 3))
    assert report.errors[bad] > 0.1, str(report)
    assert not report.ok(TOL)
