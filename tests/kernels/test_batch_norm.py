"""Channels-last BatchNorm kernels against ``ops.batch_norm`` in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fromscratch import functional as F
from fromscratch.ops import batch_norm as bn
from tests._compare import EPS32, as64
from tests.kernels._helpers import close, f64, param, rows

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def columns(m, c, dtype, device, seed=0):
    """(m, c) with per-column means far from 0 (0, 100, -30, ...) and spreads."""
    return rows(c, m, dtype, device, seed=seed).t().contiguous()


def col_condition(x, k=8.0):
    x = as64(x)
    return k * EPS32 * np.abs(x).max(axis=0) / (x.std(axis=0) + 1e-30)


def reference(x, w, b, dy, eps=1e-5):
    y, cache, mean, var = bn.forward(f64(x), f64(w), f64(b), eps)
    dx, dw, db = bn.backward(f64(dy), cache)
    return y, dx, dw, db, mean, var


def run_kernel(x, w, b, dy, eps=1e-5, running=None, momentum=0.1):
    from fromscratch.kernels import batch_norm as K
    rm, rv = running if running is not None else (None, None)
    y, mean, var, rstd, _ = K.forward(x, w, b, eps, True, rm, rv, momentum)
    dx, dw, db = K.backward(dy, x, w, b is not None, mean, rstd, True,
                            None if b is None else b.dtype)
    return y, dx, dw, db, mean, var


def check_all(mine, ref, x, dtype):
    m = x.shape[0]
    cond = col_condition(x)
    close(mine[0], ref[0], "y", dtype, cond=cond)
    close(mine[1], ref[1], "dx", dtype, cond=4 * cond)
    if ref[2] is not None:
        close(mine[2], ref[2], "dweight", dtype, reduced_over=m, cond=cond * m)
    if ref[3] is not None:
        close(mine[3], ref[3], "dbias", dtype, reduced_over=m)
    close(mine[4], ref[4], "batch mean", torch.float32, cond=cond * np.abs(as64(x)).max(axis=0))
    close(mine[5], ref[5], "batch var", torch.float32, scale=10.0)


def small_blocks(monkeypatch, prefetch=True):
    """Tiny tiles, so that several programs split the rows and the columns, each walking
    several tiles: the Chan merge of partial statistics and every mask are exercised."""
    from fromscratch.kernels import batch_norm as K
    monkeypatch.setattr(K, "_reduce_configs", lambda c: [(2, 16, 2, 1, prefetch, 1)])
    monkeypatch.setattr(K, "_elementwise_configs", lambda c: [(4, 16, 2)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(13, 37), (7, 130)])
def test_training_matches_ops(device, dtype, shape):
    m, c = shape
    x = columns(m, c, dtype, device)
    w, b = param(c, torch.float32, device, 1, 1.0), param(c, torch.float32, device, 2)
    dy = rows(m, c, dtype, device, seed=3, shifted=False)
    check_all(run_kernel(x, w, b, dy), reference(x, w, b, dy), x, dtype)


@pytest.mark.parametrize("prefetch", [True, False])
def test_many_programs_per_column(device, monkeypatch, prefetch):
    small_blocks(monkeypatch, prefetch)
    x = columns(29, 37, torch.float32, device)
    w, b = param(37, torch.float32, device, 1, 1.0), param(37, torch.float32, device, 2)
    dy = rows(29, 37, torch.float32, device, seed=3, shifted=False)
    check_all(run_kernel(x, w, b, dy), reference(x, w, b, dy), x, torch.float32)


def test_running_statistics_update(device, monkeypatch):
    small_blocks(monkeypatch)
    x = columns(29, 37, torch.float32, device)
    dy = rows(29, 37, torch.float32, device, seed=3, shifted=False)
    rm = param(37, torch.float32, device, 4)
    rv = param(37, torch.float32, device, 5, shift=2.0)
    want_m, want_v = bn.update_running(f64(rm), f64(rv), *reference(x, None, None, dy)[4:],
                                       29, 0.3)
    run_kernel(x, None, None, dy, running=(rm, rv), momentum=0.3)
    close(rm, want_m, "running_mean", torch.float32, cond=col_condition(x) * 100)
    close(rv, want_v, "running_var (unbiased)", torch.float32, scale=10.0)


def test_eval_uses_running_statistics(device):
    from fromscratch.kernels import batch_norm as K
    x = columns(13, 37, torch.bfloat16, device)
    w, b = param(37, torch.float32, device, 1, 1.0), param(37, torch.float32, device, 2)
    rm, rv = param(37, torch.float32, device, 4), param(37, torch.float32, device, 5, 2.0).abs()
    dy = rows(13, 37, torch.bfloat16, device, seed=3, shifted=False)
    y, mean, _, rstd, _ = K.forward(x, w, b, 1e-5, False, rm, rv)
    dx, dw, db = K.backward(dy, x, w, True, mean, rstd, False, b.dtype)
    y_ref, cache, _, _ = bn.forward(f64(x), f64(w), f64(b), 1e-5, f64(rm), f64(rv),
                                    batch_stats=False)
    dx_ref, dw_ref, db_ref = bn.backward(f64(dy), cache)
    close(y, y_ref, "y", torch.bfloat16)
    close(dx, dx_ref, "dx = w r dy", torch.bfloat16)
    close(dw, dw_ref, "dweight", torch.bfloat16, reduced_over=13)
    close(db, db_ref, "dbias", torch.bfloat16, reduced_over=13)


def train_twice_then_eval(mod, x, dy):
    """[y, dx] of two training steps on x and x + 1, then the eval output, dweight, dbias
    and the running statistics."""
    res = []
    for step in range(2):
        xi = (x + step).requires_grad_(True)
        y = mod(xi)
        y.backward(dy)
        res += [y, xi.grad]
    mod.eval()
    return res + [mod(x), mod.weight.grad, mod.bias.grad, mod.running_mean, mod.running_var]


def test_module_matches_torch_backend(device):
    """nn.BatchNorm(backend='triton') vs 'torch' on (N, L, C): two training steps (cumulative
    momentum), then eval; outputs, gradients and buffers agree, state_dict keys are equal."""
    from fromscratch.nn import BatchNorm
    x = columns(4 * 3, 37, torch.float32, device).reshape(4, 3, 37)
    dy = rows(12, 37, torch.float32, device, seed=3, shifted=False).reshape(4, 3, 37)
    outs, mods = {}, {}
    for backend in ("torch", "triton"):
        mods[backend] = BatchNorm(37, momentum=None, backend=backend, device=device)
        outs[backend] = train_twice_then_eval(mods[backend], x, dy)
    cond = col_condition(x.reshape(-1, 37))
    for i, (a, b) in enumerate(zip(outs["triton"], outs["torch"])):
        close(a, f64(b), f"output {i}", torch.float32, reduced_over=24, cond=cond * 100)
    assert list(mods["triton"].state_dict()) == list(mods["torch"].state_dict())
    assert int(mods["triton"].num_batches_tracked) == 2


def test_non_contiguous_and_no_affine(device):
    x = columns(13, 130, torch.float16, device).t().contiguous().t()   # (13, 130), strided
    assert not x.is_contiguous()
    dy = rows(13, 130, torch.float16, device, seed=3, shifted=False)
    check_all(run_kernel(x, None, None, dy), reference(x, None, None, dy), x, torch.float16)


def test_empty_batch(device):
    rm, rv = torch.zeros(37, device=device), torch.ones(37, device=device)
    w, b = (param(37, torch.float32, device, s).requires_grad_() for s in (1, 2))
    x = torch.empty(0, 37, device=device, requires_grad=True)
    y = F.batch_norm(x, rm, rv, w, b, training=True, backend="triton")
    assert y.shape == (0, 37)
    assert torch.equal(rm, torch.zeros_like(rm)) and torch.equal(rv, torch.ones_like(rv))
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(37, device=device)) and torch.equal(w.grad, b.grad)
    assert w.grad.data_ptr() != b.grad.data_ptr(), "weight and bias share one .grad tensor"


def test_every_launch_configuration(device, monkeypatch):
    from fromscratch.kernels import batch_norm as K
    m, c = 40, 37
    x = columns(m, c, torch.bfloat16, device)
    w, b = param(c, torch.float32, device, 1, 1.0), param(c, torch.float32, device, 2)
    dy = rows(m, c, torch.bfloat16, device, seed=3, shifted=False)
    ref = reference(x, w, b, dy)
    red, elt = K._reduce_configs(c), K._elementwise_configs(c)
    for i in range(max(len(red), len(elt))):
        monkeypatch.setattr(K, "_reduce_configs", lambda _, cfg=red[i % len(red)]: [cfg])
        monkeypatch.setattr(K, "_elementwise_configs", lambda _, cfg=elt[i % len(elt)]: [cfg])
        check_all(run_kernel(x, w, b, dy), ref, x, torch.bfloat16)


def test_channels_first_module_matches_torch_backend(device):
    """nn.BatchNorm2d(backend='triton') on a tiny (N, C, H, W): the kernels see the channels
    moved last; two training steps then eval agree with the 'torch' backend."""
    from fromscratch.nn import BatchNorm2d
    x = columns(2 * 3 * 2, 5, torch.float32, device).reshape(2, 3, 2, 5).movedim(-1, 1)
    dy = rows(12, 5, torch.float32, device, seed=3, shifted=False).reshape(2, 5, 3, 2)
    outs = {backend: train_twice_then_eval(BatchNorm2d(5, backend=backend, device=device), x, dy)
            for backend in ("torch", "triton")}
    cond = col_condition(x.movedim(1, -1).reshape(-1, 5))
    for i, (a, b) in enumerate(zip(outs["triton"], outs["torch"])):
        if a.dim() == 4:                   # channels last, where cond (per channel) broadcasts
            a, b = a.movedim(1, -1), b.movedim(1, -1)
        close(a, f64(b), f"output {i}", torch.float32, reduced_over=12, cond=cond * 100)
