"""The layers on rows where the textbook statistics go wrong, against float64: constant
rows in float32/float16/bfloat16 give the bias exactly (the seed bug: LayerNorm(37) on
10000.1 gave up to 0.295), rows with a mean of 1e4-1e6 keep float32's tolerance, and rows
of |x| ~ 1e20 (squares overflow float32) are right, never a plausible 0 (torch.nn gives 0)."""
from __future__ import annotations

import pytest
import torch

from fromscratch.nn import BatchNorm, LayerNorm, RMSNorm
from tests._compare import TOL, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def spread(m, n, mean, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64) * scale + mean


def test_layer_norm_of_a_constant_row_is_zero():
    assert torch.equal(LayerNorm(37)(torch.full((1, 37), 10000.1)), torch.zeros(1, 37))


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_rows_and_channels_give_the_bias_exactly(dtype):
    x = torch.tensor([10000.1, -3.3e4, 7.7, 1e20], dtype=torch.float64)[:, None]
    x = x.expand(4, 37).to(dtype)
    if dtype == torch.float16:
        x = x[:3]                                     # 1e20 is inf in float16
    ln = LayerNorm(37, dtype=dtype)
    bnorm = BatchNorm(x.shape[0], dtype=dtype)
    with torch.no_grad():
        ln.bias.copy_(torch.linspace(-1, 1, 37))
        bnorm.bias.copy_(torch.linspace(-1, 1, x.shape[0]))
    xl = x.clone().requires_grad_()
    y = ln(xl)
    assert torch.equal(y, ln.bias.detach().expand_as(y))
    y.backward(torch.ones_like(y))
    assert torch.equal(xl.grad, torch.zeros_like(x))
    y = bnorm(x.t().contiguous())
    assert torch.equal(y, bnorm.bias.detach().expand_as(y))


@pytest.mark.parametrize("shift", [1e4, 1e6])
def test_float32_rows_with_a_large_mean_keep_their_digits(shift):
    v = spread(6, 45, shift, 1.0).float()
    dy = spread(6, 45, 0.0, 1.0, seed=1).float()
    for layer, x, g in ((LayerNorm(45), v, dy), (BatchNorm(6), v.t().contiguous(),
                                                  dy.t().contiguous())):
        ref = type(layer)(45 if isinstance(layer, LayerNorm) else 6, dtype=torch.float64)
        xl, x64 = x.clone().requires_grad_(), x.double().requires_grad_()
        y, y_r = layer(xl), ref(x64)
        y.backward(g)
        y_r.backward(g.double())
        name = type(layer).__name__
        assert_close(y, y_r, f"{name} y", *TOL[torch.float32])
        assert_close(xl.grad, x64.grad, f"{name} dx", *TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_huge_rows_are_right_not_zero(dtype):
    x = spread(4, 37, 0.0, 1e20).to(dtype)
    for layer, a in ((LayerNorm(37, dtype=dtype), x), (RMSNorm(37, dtype=dtype), x),
                     (BatchNorm(4, dtype=dtype), x.t().contiguous())):
        ref = type(layer)(a.shape[-1], dtype=torch.float64)
        al = a.clone().requires_grad_()
        y = layer(al)
        assert_close(y, ref(a.double()), f"{type(layer).__name__} y", *TOL[dtype])
        y.backward(torch.ones_like(y).normal_())
        assert torch.isfinite(al.grad).all()
