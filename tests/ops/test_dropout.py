"""ops.dropout with a given uniform array u: keep = u >= p, y = x keep / (1 - p)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fromscratch.ops import dropout as dr
from tests._compare import as64, assert_close, assert_same, randn, upstream


def to_kind(t, kind):
    return t.numpy().copy() if kind == "numpy" else t.clone()


def uniforms(shape, seed=4):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_forward_backward_match_torch_autograd(kind, p):
    x, dy, u = randn(7, 11), upstream((7, 11), torch.float64), uniforms((7, 11))
    xl = x.clone().requires_grad_()
    keep = (u >= p).double()
    y_ref = xl * keep / (1 - p) if p < 1 else xl * 0.0
    y_ref.backward(dy)
    y, cache = dr.forward(to_kind(x, kind), p, to_kind(u, kind))
    dx = dr.backward(to_kind(dy, kind), cache)
    assert type(y) is type(dx) is (np.ndarray if kind == "numpy" else torch.Tensor)
    assert_close(y, y_ref, f"{kind} p={p} y", rtol=1e-15, atol=0)
    assert_close(dx, xl.grad, f"{kind} p={p} dx", rtol=1e-15, atol=0)


def test_numpy_and_torch_give_the_same_numbers():
    x, dy, u = randn(5, 6), upstream((5, 6), torch.float64), uniforms((5, 6))
    y_n, c_n = dr.forward(x.numpy(), 0.3, u.numpy())
    y_t, c_t = dr.forward(x, 0.3, u)
    assert_same(y_n, y_t, "y")
    assert_same(dr.backward(dy.numpy(), c_n), dr.backward(dy, c_t), "dx")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keeps_exactly_one_minus_p_of_an_even_grid(p):
    """u on an even grid of [0, 1): the kept fraction is exactly 1 - p (u == p is kept,
    as P(u >= p) = 1 - p)."""
    n = 1000
    u = (np.arange(n) + 0.0) / n
    _, cache = dr.forward(np.ones(n), p, u)
    assert int(cache.keep.sum()) == round(n * (1 - p))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_edges(kind):
    x, u = to_kind(randn(4, 5), kind), to_kind(uniforms((4, 5)), kind)
    y0, c0 = dr.forward(x, 0.0, u)
    np.testing.assert_array_equal(as64(y0), as64(x))              # p = 0: identity
    np.testing.assert_array_equal(as64(dr.backward(x, c0)), as64(x))
    y1, c1 = dr.forward(x, 1.0, u)
    np.testing.assert_array_equal(as64(y1), np.zeros((4, 5)))      # p = 1: zeros, zero gradient
    np.testing.assert_array_equal(as64(dr.backward(x, c1)), np.zeros((4, 5)))
    assert y1.shape == x.shape


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_float32_and_input_untouched(kind):
    x = to_kind(randn(3, 4, dtype=torch.float32), kind)
    before = as64(x).copy()
    y, cache = dr.forward(x, 0.5, to_kind(uniforms((3, 4)).float(), kind))
    dx = dr.backward(x, cache)
    assert str(y.dtype).endswith("float32") and str(dx.dtype).endswith("float32")
    np.testing.assert_array_equal(as64(x), before, err_msg="forward/backward modified x")
