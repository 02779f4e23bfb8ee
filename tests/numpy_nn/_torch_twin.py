"""Helpers: run one of our modules and its torch twin on the same weights and compare
forward, dL/dinput and every dL/dparameter in float64."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from fromscratch import numpy_nn as nn
from tests._compare import assert_close

TOL = 1e-10          # float64 parity with torch autograd (docs/numpy_engine.md)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial values (LayerNorm's ones and zeros hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + 0.3)
    return module


def compare_module(ours: nn.Module, theirs: torch.nn.Module, x: np.ndarray, *,
                   torch_call: Callable | None = None, seed: int = 1, what: str = "",
                   load: bool = True, passes: int = 1) -> None:
    """Forward, dx and every parameter gradient of ``ours`` against torch autograd.

    ``torch_call(theirs, xt)`` adapts layouts (e.g. channels-last for BatchNorm1d).
    ``passes`` > 1 runs several forward/backward rounds (gradients accumulate on both sides).
    """
    what = what or type(ours).__name__
    if load:
        ours.load_state_dict(theirs.state_dict())
    call = torch_call or (lambda m, t: m(t))
    rng = np.random.default_rng(seed)
    for k in range(passes):
        xt = torch.tensor(x, requires_grad=True)
        yt = call(theirs, xt)
        y = ours.forward(x)
        assert_close(y, yt, f"{what}: forward (pass {k})", TOL, TOL)
        g = rng.standard_normal(y.shape)
        yt.backward(torch.tensor(g))
        dx = ours.backward(g)
        assert_close(dx, xt.grad, f"{what}: dL/dinput (pass {k})", TOL, TOL)
    theirs_grads = dict(theirs.named_parameters())
    assert set(ours.grads) == set(theirs_grads), (sorted(ours.grads), sorted(theirs_grads))
    for name, p in theirs_grads.items():
        assert_close(ours.grads[name], p.grad, f"{what}: dL/d{name}", TOL, TOL)
    for name, b in theirs.named_buffers():
        mine = ours.state_dict()[name]
        assert_close(mine, b, f"{what}: buffer {name}", TOL, TOL)


class FixedUniforms:
    """Stands in for a numpy Generator: ``random`` returns prepared uniforms."""

    def __init__(self, u: np.ndarray):
        self.u = u

    def random(self, size, dtype=np.float64) -> np.ndarray:
        assert tuple(size) == self.u.shape
        return self.u.astype(dtype)
