"""The NumPy engine's norms in float32 on constant rows (y = bias exactly), rows with a
mean of 1e4-1e6 (float32's tolerance) and rows of |x| ~ 1e20 (right, never 0)."""
from __future__ import annotations

import numpy as np
import pytest

from fromscratch import numpy_nn as nn
from tests._compare import TOL, assert_close

import torch

RTOL, ATOL = TOL[torch.float32]


def spread(m, n, mean, scale, seed=0):
    return np.random.default_rng(seed).standard_normal((m, n)) * scale + mean


def twins(kind, n):
    return kind(n, dtype=np.float32), kind(n, dtype=np.float64)


def test_constant_rows_and_channels_give_the_bias_exactly():
    x = np.repeat(np.float32([10000.1, -3.3e4, 7.7, 1e20])[:, None], 37, axis=1)
    ln, bnorm = nn.LayerNorm(37, dtype=np.float32), nn.BatchNorm(4, dtype=np.float32)
    ln.params["bias"][...] = np.linspace(-1, 1, 37)
    bnorm.params["bias"][...] = np.linspace(-1, 1, 4)
    assert np.array_equal(ln.forward(x), np.broadcast_to(ln.params["bias"], x.shape))
    assert np.array_equal(ln.backward(np.ones_like(x)), np.zeros_like(x))
    assert np.array_equal(bnorm.forward(np.ascontiguousarray(x.T)),
                          np.broadcast_to(bnorm.params["bias"], (37, 4)))


@pytest.mark.parametrize("shift", [1e4, 1e6])
def test_rows_with_a_large_mean_keep_their_digits(shift):
    x = spread(6, 45, shift, 1.0).astype(np.float32)
    dy = spread(6, 45, 0.0, 1.0, seed=1).astype(np.float32)
    for kind, a, g in ((nn.LayerNorm, x, dy), (nn.BatchNorm, x.T.copy(), dy.T.copy())):
        mine, ref = twins(kind, a.shape[-1])
        assert_close(mine.forward(a), ref.forward(a.astype(np.float64)), f"{kind.__name__} y",
                     RTOL, ATOL)
        assert_close(mine.backward(g), ref.backward(g.astype(np.float64)),
                     f"{kind.__name__} dx", RTOL, ATOL)


def test_huge_rows_are_right_not_zero():
    x = spread(4, 37, 0.0, 1e20).astype(np.float32)
    for kind, a in ((nn.LayerNorm, x), (nn.RMSNorm, x), (nn.BatchNorm, x.T.copy())):
        mine, ref = twins(kind, a.shape[-1])
        assert_close(mine.forward(a), ref.forward(a.astype(np.float64)), f"{kind.__name__} y",
                     RTOL, ATOL)
        assert np.isfinite(mine.backward(np.ones_like(a))).all()
