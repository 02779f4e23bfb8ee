"""The kernels' statistics on rows where the textbook formula goes wrong, against float64:
constant rows (x - mu exactly 0, y = bias), rows with a mean of 1e4-1e6 and a spread of 1
(x - mu without mu's rounding), and rows of |x| ~ 1e20, whose squares overflow float32
(the right answer where the row is in registers, NaN where it is not, never 0)."""
from __future__ import annotations

import pytest
import torch

from fromscratch.ops import batch_norm as bn
from fromscratch.ops import layer_norm as ln
from fromscratch.ops import rms_norm as rms
from tests._compare import TOL, assert_close
from tests.kernels._helpers import f64, param

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# the interpreter computes the overflowing squares in NumPy, which warns
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def spread_rows(m, n, mean, scale, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=torch.float64) * scale + mean
    return x.to(dtype).to(device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_constant_rows_give_the_bias_exactly(device, dtype):
    from fromscratch.kernels import layer_norm as K
    x = torch.tensor([10000.1, -3.3e4, 7.7, 0.1], dtype=torch.float64)[:, None].expand(4, 37)
    x = x.to(dtype).to(device)
    b = param(37, dtype, device, 2)
    y, mean, rstd, _ = K.forward(x, param(37, dtype, device, 1, shift=1.0), b, 1e-5)
    assert torch.equal(y, b.expand_as(y)), (y - b).abs().max()
    assert torch.equal(mean, x[:, 0].float())
    dx, _, _ = K.backward(torch.ones_like(x), x, None, True, mean, rstd)
    assert torch.equal(dx, torch.zeros_like(dx))       # xhat = 0 and g - mean(g) = 0


@pytest.mark.parametrize("shift", [1e4, 1e6])
@pytest.mark.parametrize("looped", [False, True])
def test_layer_norm_large_mean_rows_keep_their_digits(device, monkeypatch, shift, looped):
    from fromscratch.kernels import layer_norm as K
    if looped:                                       # the kernels that walk a row in chunks
        monkeypatch.setattr(K, "MAX_FUSED_FWD", 16)
        monkeypatch.setattr(K, "MAX_FUSED_BWD", 16)
        monkeypatch.setattr(K, "LOOP_BLOCK", 16)
    x = spread_rows(5, 45, shift, 1.0, torch.float32, device)
    w, b = param(45, torch.float32, device, 1, shift=1.0), param(45, torch.float32, device, 2)
    dy = spread_rows(5, 45, 0.0, 1.0, torch.float32, device, seed=3)
    y, mean, rstd, _ = K.forward(x, w, b, 1e-5)
    dx, dw, _ = K.backward(dy, x, w, True, mean, rstd, b.dtype)
    y_r, cache = ln.forward(f64(x), f64(w), f64(b), 1e-5)
    dx_r, dw_r, _ = ln.backward(f64(dy), cache)
    rtol, atol = TOL[torch.float32]
    assert_close(y, y_r, "y", rtol, atol)
    assert_close(dx, dx_r, "dx", rtol, atol)
    assert_close(dw, dw_r, "dweight", rtol, atol * (1 + 5 ** 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_norms_of_huge_rows_are_right_in_registers(device, dtype):
    """|x| ~ 1e20: x^2 overflows float32; the fused forwards scale the row first."""
    from fromscratch.kernels import layer_norm as KL
    from fromscratch.kernels import rms_norm as KR
    x = spread_rows(3, 37, 0.0, 1e20, dtype, device)
    x[1] += 3e20                                       # one row with a large mean too
    y, _, _, _ = KL.forward(x, None, None, 1e-5)
    assert_close(y, ln.forward(f64(x), None, None, 1e-5)[0], "layer_norm y", *TOL[dtype])
    y, _, _, _ = KR.forward(x, None, 1e-6)
    assert_close(y, rms.forward(f64(x), None, 1e-6)[0], "rms_norm y", *TOL[dtype])


def test_row_norms_of_huge_wide_rows_are_nan_never_zero(device, monkeypatch):
    """The looped kernels would need one more pass to scale: there the row is NaN."""
    from fromscratch.kernels import layer_norm as KL
    from fromscratch.kernels import rms_norm as KR
    for K in (KL, KR):
        monkeypatch.setattr(K, "MAX_FUSED_FWD", 16)
        monkeypatch.setattr(K, "LOOP_BLOCK", 16)
    x = spread_rows(2, 37, 0.0, 1.0, torch.float32, device)
    x[1] *= 1e20
    for y in (KL.forward(x, None, None, 1e-5)[0], KR.forward(x, None, 1e-6)[0]):
        assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all()


def test_batch_norm_constant_large_mean_and_huge_channels(device):
    """Channel 0 constant (y = bias exactly), 1 with mean 1e4, 2 with mean 1e6 (accurate in
    float32), 3 of |x| ~ 1e20 (NaN: its squares overflow, never 0)."""
    from fromscratch.kernels import batch_norm as K
    m = 40
    cols = [torch.full((m,), 10000.1, dtype=torch.float64),
            spread_rows(1, m, 1e4, 1.0, torch.float64, "cpu")[0],
            spread_rows(1, m, 1e6, 1.0, torch.float64, "cpu", seed=1)[0],
            spread_rows(1, m, 0.0, 1e20, torch.float64, "cpu", seed=2)[0]]
    x = torch.stack(cols, 1).float().to(device)
    w, b = param(4, torch.float32, device, 1, shift=1.0), param(4, torch.float32, device, 2)
    y, mean, var, rstd, _ = K.forward(x, w, b, 1e-5, True)
    y_r, _, mean_r, _ = bn.forward(f64(x), f64(w), f64(b), 1e-5)
    assert torch.equal(y[:, 0], b[0].expand(m))
    assert_close(y[:, :3], y_r[:, :3], "y", *TOL[torch.float32])
    assert_close(mean[:3], mean_r[:3], "mean", *TOL[torch.float32])
    assert torch.isnan(y[:, 3]).all()
    for _ in range(2):                                   # also when the launches replay
        y2 = K.forward(x, w, b, 1e-5, True)[0]
        assert torch.equal(y2[:, :3], y[:, :3])
