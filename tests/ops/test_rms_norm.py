"""ops.rms_norm on NumPy arrays and on torch tensors, against torch autograd in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from fromscratch.ops import rms_norm as rn
from tests._compare import as64, assert_close, assert_same, randn, upstream

TIGHT = {"rtol": 1e-10, "atol": 1e-12}
SHAPES = [(6, 37), (2, 3, 10), (5, 1)]


def inputs(shape, weight):
    x = randn(*shape, seed=0, shift=0.3)
    if x.shape[0] > 1:
        x[0] *= 1e-3                       # mean(x^2) below eps: eps matters
    w = randn(shape[-1], seed=2, shift=1.0) if weight else None
    return x, w, upstream(shape, torch.float64)


def reference(x, w, dy, eps):
    xl = x.clone().requires_grad_()
    wl = w.clone().requires_grad_() if w is not None else None
    y = TF.rms_norm(xl, (x.shape[-1],), wl, eps)
    y.backward(dy)
    return y.detach(), xl.grad, wl.grad if wl is not None else None


def to_kind(t, kind):
    if t is None:
        return None
    return t.numpy().copy() if kind == "numpy" else t.clone()


def run(kind, x, w, dy, eps):
    y, cache = rn.forward(to_kind(x, kind), to_kind(w, kind), eps)
    dx, dw = rn.backward(to_kind(dy, kind), cache)
    return y, dx, dw


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("weight", [True, False], ids=["weight", "no-weight"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("eps", [1e-6, torch.finfo(torch.float64).eps, 1e-2])
def test_matches_torch_autograd_float64(kind, weight, shape, eps):
    x, w, dy = inputs(shape, weight)
    for name, m, r in zip(("y", "dx", "dweight"), run(kind, x, w, dy, eps),
                          reference(x, w, dy, eps)):
        if r is None:
            assert m is None, f"{name}: expected None without a weight"
            continue
        assert type(m) is (np.ndarray if kind == "numpy" else torch.Tensor)
        assert_close(m, r, f"{kind} eps={eps} {name}", **TIGHT)


@pytest.mark.parametrize("weight", [True, False])
def test_numpy_and_torch_give_the_same_numbers(weight):
    x, w, dy = inputs((7, 23), weight)
    for name, a, t in zip(("y", "dx", "dweight"), run("numpy", x, w, dy, 1e-6),
                          run("torch", x, w, dy, 1e-6)):
        if a is None:
            assert t is None
            continue
        assert_same(a, t, name)


def test_no_mean_is_subtracted():
    """RMSNorm of a row and of the same row shifted differ (LayerNorm's would not)."""
    x, _, _ = inputs((3, 8), False)
    y0, _ = rn.forward(x.numpy(), None, 1e-6)
    y1, _ = rn.forward(x.numpy() + 5.0, None, 1e-6)
    assert np.abs(y0 - y1).max() > 0.1


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nothing_passed_in_is_modified(kind):
    x, w, dy = (to_kind(t, kind) for t in inputs((5, 8), True))
    for weight in (w, None):
        before = [as64(t).copy() for t in (x, weight, dy) if t is not None]
        _, cache = rn.forward(x, weight, 1e-6)
        kept = [as64(cache.xhat).copy(), as64(cache.rstd).copy()]
        rn.backward(dy, cache)
        for i, (p, t) in enumerate(zip(before, [t for t in (x, weight, dy) if t is not None])):
            np.testing.assert_array_equal(p, as64(t), err_msg=f"argument {i} was modified")
        np.testing.assert_array_equal(kept[0], as64(cache.xhat), err_msg="cache.xhat modified")
        np.testing.assert_array_equal(kept[1], as64(cache.rstd), err_msg="cache.rstd modified")


def test_float32_stays_float32_and_is_accurate():
    x, w, dy = inputs((6, 37), True)
    x32, w32, dy32 = (t.numpy().astype(np.float32) for t in (x, w, dy))
    y, cache = rn.forward(x32, w32, 1e-6)
    dx, dw = rn.backward(dy32, cache)
    assert y.dtype == dx.dtype == dw.dtype == np.float32
    ref = reference(*(torch.from_numpy(t).double() for t in (x32, w32, dy32)), eps=1e-6)
    for name, m, r, atol in zip(("y", "dx", "dw"), (y, dx, dw), ref, (1e-5, 1e-5, 1e-4)):
        assert_close(m, r, f"float32 {name}", rtol=1.3e-6, atol=atol)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("offset", [1.0, -0.5])
def test_offset_is_the_weight_plus_offset_float64(kind, offset):
    """y = (offset + w) xhat; dweight is dL/d(offset + w), the same sum (eq. 4)."""
    x, w, dy = inputs((6, 37), True)
    y, cache = rn.forward(to_kind(x, kind), to_kind(w, kind), 1e-6, offset)
    dx, dw = rn.backward(to_kind(dy, kind), cache)
    ref = reference(x, w + offset, dy, 1e-6)
    for name, m, r in zip(("y", "dx", "dweight"), (y, dx, dw), ref):
        assert_close(m, r, f"{kind} offset={offset} {name}", **TIGHT)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_xhat_dtype_rounds_xhat_before_the_weight_and_leaves_the_backward(kind):
    """Llama's cast: y = w * round(xhat) exactly; the cache, and so the backward, are those
    of the unrounded forward."""
    x, w, dy = (to_kind(t, kind) for t in inputs((6, 37), True))
    half = np.float16 if kind == "numpy" else torch.bfloat16
    y, cache = rn.forward(x, w, 1e-6, xhat_dtype=half)
    _, plain = rn.forward(x, w, 1e-6)
    rounded = cache.xhat.astype(half) if kind == "numpy" else cache.xhat.to(half)
    np.testing.assert_array_equal(as64(y), as64(rounded) * as64(w))
    assert y.dtype == x.dtype, "y comes in the weight's (compute) dtype"
    assert not np.array_equal(as64(y), as64(plain.xhat * w)), "nothing was rounded"
    for a, b in zip(rn.backward(dy, cache), rn.backward(dy, plain)):
        assert_same(a, b, "backward with and without the rounding")
