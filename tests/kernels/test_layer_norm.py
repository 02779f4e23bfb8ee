"""LayerNorm kernels against ``ops.layer_norm`` in float64 (from the rounded inputs)."""
from __future__ import annotations

import pytest
import torch

from fromscratch import functional as F
from fromscratch.ops import layer_norm as ln
from tests.kernels._helpers import close, f64, param, row_condition, rows

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference(x, w, b, dy, eps=1e-5):
    y, cache = ln.forward(f64(x), f64(w), f64(b), eps)
    dx, dw, db = ln.backward(f64(dy), cache)
    return y, dx, dw, db


def run_kernel(x, w, b, dy, eps=1e-5):
    from fromscratch.kernels import layer_norm as K
    y, mean, rstd, _ = K.forward(x, w, b, eps)
    dx, dw, db = K.backward(dy, x, w, b is not None, mean, rstd,
                            None if b is None else b.dtype)
    return y, dx, dw, db


def check_all(mine, ref, x, dtype, wdtype):
    m = x.shape[0]
    cond = row_condition(x)
    close(mine[0], ref[0], "y", dtype, cond=cond)
    close(mine[1], ref[1], "dx", dtype, cond=4 * cond)
    if ref[2] is not None:
        close(mine[2], ref[2], "dweight", wdtype if wdtype != torch.float32 else dtype,
              reduced_over=m, cond=float(cond.max()) * m)
    if ref[3] is not None:
        close(mine[3], ref[3], "dbias", wdtype if wdtype != torch.float32 else dtype,
              reduced_over=m)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 37), (3, 130), (7, 64)])      # 64: no padding
def test_matches_ops(device, dtype, shape):
    m, n = shape
    x = rows(m, n, dtype, device)
    w = param(n, torch.float32, device, 1, shift=1.0)     # weights in float32, input in dtype
    b = param(n, dtype, device, 2)
    dy = rows(m, n, dtype, device, seed=3, shifted=False)
    check_all(run_kernel(x, w, b, dy), reference(x, w, b, dy), x, dtype, torch.float32)


@pytest.mark.parametrize("affine", ["none", "weight only"])
def test_without_parameters(device, affine):
    x = rows(4, 37, torch.float32, device)
    dy = rows(4, 37, torch.float32, device, seed=3, shifted=False)
    w = param(37, torch.float32, device, 1) if affine == "weight only" else None
    mine, ref = run_kernel(x, w, None, dy), reference(x, w, None, dy)
    check_all(mine, ref, x, torch.float32, torch.float32)
    assert (mine[2] is None) == (w is None) and mine[3] is None


def test_looped_kernels_for_wide_rows(device, monkeypatch):
    from fromscratch.kernels import layer_norm as K
    monkeypatch.setattr(K, "MAX_FUSED_FWD", 32)   # rows wider than 32 take the looped path
    monkeypatch.setattr(K, "MAX_FUSED_BWD", 32)
    monkeypatch.setattr(K, "LOOP_BLOCK", 32)      # and walk it in 5 chunks, the last partial
    x = rows(3, 130, torch.float32, device)
    w, b = param(130, torch.float32, device, 1, 1.0), param(130, torch.float32, device, 2)
    dy = rows(3, 130, torch.float32, device, seed=3, shifted=False)
    check_all(run_kernel(x, w, b, dy), reference(x, w, b, dy), x, torch.float32, torch.float32)


def test_non_contiguous_inputs(device):
    """A column slice (strided rows, read in place), a transpose and a broadcast gradient
    (copied): each gives what the contiguous tensor gives."""
    wide = rows(6, 50, torch.float32, device)
    x_slice = wide[:, 5:42]                                        # row stride 50, n = 37
    x_t = rows(37, 6, torch.float32, device).t()                   # columns strided
    w, b = param(37, torch.float32, device, 1, 1.0), param(37, torch.float32, device, 2)
    for x in (x_slice, x_t):
        assert not x.is_contiguous()
        dy = rows(37, 6, torch.float32, device, seed=3, shifted=False).t()
        check_all(run_kernel(x, w, b, dy), reference(x, w, b, dy), x, torch.float32,
                  torch.float32)
    dy = param(37, torch.float32, device, 4).expand(6, 37)        # strides (0, 1)
    check_all(run_kernel(x_slice, w, b, dy), reference(x_slice, w, b, dy), x_slice,
              torch.float32, torch.float32)


def test_functional_and_module_match_torch_backend(device):
    """Through fromscratch.functional / nn with backend='triton' vs 'torch': a 3-D input,
    autograd on x and both parameters."""
    from fromscratch.nn import LayerNorm
    x = rows(2 * 3, 37, torch.bfloat16, device).reshape(2, 3, 37)
    dy = rows(6, 37, torch.bfloat16, device, seed=3, shifted=False).reshape(2, 3, 37)
    out = {}
    for backend in ("torch", "triton"):
        mod = LayerNorm(37, backend=backend, device=device)
        with torch.no_grad():
            mod.weight.copy_(param(37, torch.float32, device, 1, 1.0))
            mod.bias.copy_(param(37, torch.float32, device, 2))
        xi = x.clone().requires_grad_(True)
        y = mod(xi)
        y.backward(dy)
        out[backend] = (y, xi.grad, mod.weight.grad, mod.bias.grad)
    for name, a, b in zip(("y", "dx", "dweight", "dbias"), out["triton"], out["torch"]):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        close(a.float(), b.double(), name, torch.bfloat16, reduced_over=6)
    from fromscratch.kernels.autograd import LayerNormFn
    y = F.layer_norm(x.requires_grad_(True), 37, backend="triton")
    node = y.grad_fn.next_functions[0][0]                 # under the reshape back to 3-D
    assert node._forward_cls is LayerNormFn


def test_empty_batch_and_nan_row(device):
    x = rows(0, 37, torch.float32, device).requires_grad_()
    w, b = (param(37, torch.float32, device, s).requires_grad_() for s in (1, 2))
    y = F.layer_norm(x, 37, w, b, backend="triton")
    assert y.shape == (0, 37)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(37, device=device)) and torch.equal(w.grad, b.grad)
    assert w.grad.data_ptr() != b.grad.data_ptr(), "weight and bias share one .grad tensor"
    x = rows(0, 37, torch.float32, device)
    x = rows(3, 37, torch.float32, device, shifted=False)
    x[1, 4] = float("nan")
    y = F.layer_norm(x, 37, backend="triton")
    assert torch.isnan(y[1]).all(), "the NaN row must be NaN"
    ref = F.layer_norm(x, 37, backend="torch")
    close(y[[0, 2]], f64(ref[[0, 2]]), "the other rows", torch.float32)


def test_every_launch_configuration(device, monkeypatch):
    """The tuner may pick any candidate on a GPU: each must give the same right answer
    (prefetch or not, several rows per program or one, few or many programs)."""
    from fromscratch.kernels import _common, _row_backward, layer_norm as K
    m, n = 75, 130          # several tiles per program: the prefetch matters
    x = rows(m, n, torch.float16, device)
    w, b = param(n, torch.float32, device, 1, 1.0), param(n, torch.float16, device, 2)
    dy = rows(m, n, torch.float16, device, seed=3, shifted=False)
    ref = reference(x, w, b, dy)
    block_n = _common.next_pow2(n)
    fwd, bwd = _common.row_fwd_configs(block_n), _common.row_bwd_configs(block_n)
    for i in range(max(len(fwd), len(bwd))):
        monkeypatch.setattr(K, "row_fwd_configs", lambda _, c=fwd[i % len(fwd)]: [c])
        monkeypatch.setattr(_row_backward, "row_bwd_configs",
                            lambda _, c=bwd[i % len(bwd)]: [c])
        check_all(run_kernel(x, w, b, dy), ref, x, torch.float16, torch.float32)
