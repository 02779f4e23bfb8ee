"""gradcheck and gradgradcheck in float64 for the four modules, with the weights as inputs
(torch.func.functional_call), so the hand-derived backward is checked against finite
differences and is itself differentiable. Dropout re-seeds inside the function under test,
so every evaluation draws the same mask."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from fromscratch.nn import BatchNorm, Dropout, LayerNorm, RMSNorm
from tests._compare import randn

CASES = {
    "LayerNorm": (lambda: LayerNorm(6), (3, 6)),
    "LayerNorm (2,3)": (lambda: LayerNorm((2, 3)), (2, 2, 3)),
    "LayerNorm bias only": (lambda: LayerNorm(5, bias=False), (4, 5)),
    "LayerNorm no affine": (lambda: LayerNorm(5, elementwise_affine=False), (4, 5)),
    "RMSNorm": (lambda: RMSNorm(6), (3, 6)),
    "RMSNorm eps": (lambda: RMSNorm((2, 3), eps=1e-3), (2, 2, 3)),
    "RMSNorm no weight": (lambda: RMSNorm(5, elementwise_affine=False), (4, 5)),
    "BatchNorm train": (lambda: BatchNorm(4), (5, 4)),
    "BatchNorm train (N,L,C)": (lambda: BatchNorm(3), (2, 3, 3)),
    "BatchNorm train bias=False": (lambda: BatchNorm(3, bias=False), (4, 3)),
    "BatchNorm train no affine": (lambda: BatchNorm(3, affine=False), (4, 3)),
    "BatchNorm eval": (lambda: BatchNorm(4).eval(), (5, 4)),
    "BatchNorm eval no stats": (lambda: BatchNorm(4, track_running_stats=False).eval(), (5, 4)),
}


def module_as_function(module):
    """(x, *params) -> module(x) with those parameters, and the params' initial values."""
    names = [n for n, _ in module.named_parameters()]
    g = torch.Generator().manual_seed(1)
    params = [(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64)).requires_grad_()
              for _, p in module.named_parameters()]
    if isinstance(module, BatchNorm) and module.running_var is not None:
        with torch.no_grad():
            module.running_mean.copy_(torch.randn(module.num_features, generator=g))
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)

    def fn(x, *ps):
        return functional_call(module, dict(zip(names, ps)), (x,))
    return fn, params


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gradcheck_and_gradgradcheck(case):
    make, shape = case
    module = make().double()
    fn, params = module_as_function(module)
    x = randn(*shape, seed=3, shift=0.5).requires_grad_()
    inputs = (x, *params)
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_dropout_with_a_fixed_seed(p):
    module = Dropout(p)

    def fn(x):
        torch.manual_seed(7)                # the same mask on every evaluation
        return module(x)

    x = randn(6, 5, seed=4).requires_grad_()
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))
