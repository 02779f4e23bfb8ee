"""The ops' statistics where the textbook formula goes wrong, on NumPy arrays and torch
tensors in float32, against float64: constant rows (x - mu exactly 0, y = bias), rows with
a mean of 1e4-1e6 and a spread of 1 (x - mu without mu's rounding, forward and backward),
and rows of |x| ~ 1e20, whose squares overflow float32 (scaled first: right, never 0)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fromscratch.ops import batch_norm as bn
from fromscratch.ops import layer_norm as ln
from fromscratch.ops import rms_norm as rms
from tests._compare import TOL, assert_close

RTOL, ATOL = TOL[torch.float32]
KINDS = ["numpy", "torch"]


def data(m, n, mean, scale, seed=0):
    """(m, n) float32 rows of the given mean and spread, and their float64 copy."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, n)) * scale + mean).astype(np.float32)
    return x, x.astype(np.float64)


def as_kind(kind, *arrays):
    return [torch.from_numpy(a) if kind == "torch" else a for a in arrays]


@pytest.mark.parametrize("kind", KINDS)
def test_constant_rows_and_channels_give_the_bias_exactly(kind):
    x = np.repeat(np.float32([10000.1, -3.3e4, 7.7, 1e20])[:, None], 37, axis=1)
    b = np.linspace(-1, 1, 37, dtype=np.float32)
    xk, bk, wk = as_kind(kind, x, b, np.ones(37, np.float32))
    y, cache = ln.forward(xk, wk, bk, 1e-5)
    assert np.array_equal(np.asarray(y), np.broadcast_to(b, x.shape))
    dx, _, _ = ln.backward(as_kind(kind, np.ones_like(x))[0], cache)
    assert np.array_equal(np.asarray(dx), np.zeros_like(x))
    xt, bt = as_kind(kind, np.ascontiguousarray(x.T), b[:4].copy())          # 4 channels
    y, _, mean, var = bn.forward(xt, None, bt, 1e-5)
    assert np.array_equal(np.asarray(y), np.broadcast_to(b[:4], xt.shape))
    assert np.array_equal(np.asarray(mean), x[:, 0]) and not np.asarray(var).any()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shift", [1e4, 1e6])
def test_large_mean_rows_keep_their_digits(kind, shift):
    x, x64 = data(6, 45, shift, 1.0)
    dy, dy64 = data(6, 45, 0.0, 1.0, seed=1)
    w, w64 = data(1, 45, 1.0, 0.3, seed=2)
    w, w64 = w[0], w64[0]
    xk, dyk, wk = as_kind(kind, x, dy, w)
    for op, cols in ((ln, False), (bn, True)):          # rows, and the same data as channels
        a, a64, g, g64 = (np.ascontiguousarray(t.T) if cols else t for t in (x, x64, dy, dy64))
        ak, gk = as_kind(kind, a, g)
        wk, wk64 = (as_kind(kind, w[:6].copy())[0], w64[:6]) if cols else (wk, w64)
        y, cache = op.forward(ak, wk, None, 1e-5)[:2]
        y_r, cache_r = op.forward(a64, wk64, None, 1e-5)[:2]
        assert_close(y, y_r, f"{op.__name__} y", RTOL, ATOL)
        dx, dw, _ = op.backward(gk, cache)
        dx_r, dw_r, _ = op.backward(g64, cache_r)
        assert_close(dx, dx_r, f"{op.__name__} dx", RTOL, ATOL)
        assert_close(dw, dw_r, f"{op.__name__} dweight", RTOL, ATOL * (1 + 45 ** 0.5))


@pytest.mark.parametrize("kind", KINDS)
def test_huge_rows_are_scaled_before_squaring(kind):
    """|x| ~ 1e20: every square overflows float32; y is right (about +-1), dx finite."""
    x, x64 = data(4, 37, 0.0, 1e20)
    x[1] += np.float32(3e20)
    x64 = x.astype(np.float64)
    dy, dy64 = data(4, 37, 0.0, 1.0, seed=1)
    xk, dyk = as_kind(kind, x, dy)
    for name, fwd, bwd in (
            ("layer_norm", lambda a: ln.forward(a, None, None, 1e-5), ln.backward),
            ("rms_norm", lambda a: rms.forward(a, None, 1e-6), rms.backward),
            ("batch_norm", lambda a: bn.forward(a, None, None, 1e-5)[:2], bn.backward)):
        y, cache = fwd(xk)
        y_r, cache_r = fwd(x64)
        assert_close(y, y_r, f"{name} y", RTOL, ATOL)
        dx, dx_r = bwd(dyk, cache)[0], bwd(dy64, cache_r)[0]
        scale = np.abs(dx_r).max()                    # dx ~ dy / std ~ 1e-20
        # (relative to its largest value; 4 rows a channel: BatchNorm's dx cancels a little)
        assert_close(np.asarray(dx) / scale, dx_r / scale, f"{name} dx", RTOL, 10 * ATOL)


def test_huge_rows_raise_no_overflow_warning():
    """NumPy would warn "overflow encountered" on the squares that inv_rms then scales away:
    the answer is right, so no warning."""
    x, _ = data(4, 37, 0.0, 1e20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for y in (ln.forward(x)[0], rms.forward(x)[0], bn.forward(x)[0]):
            assert np.isfinite(y).all()


def test_huge_rows_keep_gradcheck_in_float64():
    """The scaled path under autograd (the double backward's forward) in float64, where the
    squares overflow beyond 1e154."""
    x = torch.randn(3, 5, dtype=torch.float64) * 1e160
    x.requires_grad_()
    y, _ = ln.forward(x, None, None, 1e-5)
    ref = (x - x.mean(-1, keepdim=True)) / (x / 1e160).std(-1, unbiased=False, keepdim=True)
    assert_close(y, ref / 1e160, "y", 1e-12, 1e-12)
    (g,) = torch.autograd.grad(y[:, 0].sum(), x)
    assert torch.isfinite(g).all() and g.abs().max() > 0
