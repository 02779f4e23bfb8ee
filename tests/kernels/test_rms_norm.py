"""RMSNorm and fused residual-add + RMSNorm kernels against ``ops.rms_norm`` in float64."""
from __future__ import annotations

import pytest
import torch

from fromscratch import functional as F
from fromscratch.ops import rms_norm as rn
from tests.kernels._helpers import close, f64, param, rows

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = 1e-6


def reference(x, w, dy, eps=EPS):
    y, cache = rn.forward(f64(x), f64(w), eps)
    dx, dw = rn.backward(f64(dy), cache)
    return y, dx, dw


def run_kernel(x, w, dy, eps=EPS):
    from fromscratch.kernels import rms_norm as K
    y, rstd, _, _ = K.forward(x, w, eps)
    dx, dw = K.backward(dy, x, w, rstd)
    return y, dx, dw


def check_all(mine, ref, m, dtype):
    close(mine[0], ref[0], "y", dtype)
    close(mine[1], ref[1], "dx", dtype)
    if ref[2] is not None:
        close(mine[2], ref[2], "dweight", dtype, reduced_over=m)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 37), (3, 130)])
def test_matches_ops(device, dtype, shape):
    m, n = shape
    x = rows(m, n, dtype, device)
    w = param(n, torch.float32, device, 1, shift=1.0)
    dy = rows(m, n, dtype, device, seed=3, shifted=False)
    check_all(run_kernel(x, w, dy), reference(x, w, dy), m, dtype)


def test_weight_in_input_dtype_and_no_weight(device):
    x = rows(4, 37, torch.bfloat16, device)
    dy = rows(4, 37, torch.bfloat16, device, seed=3, shifted=False)
    w = param(37, torch.bfloat16, device, 1, shift=1.0)
    mine = run_kernel(x, w, dy)
    assert mine[2].dtype == torch.bfloat16
    check_all(mine, reference(x, w, dy), 4, torch.bfloat16)
    mine = run_kernel(x, None, dy)
    assert mine[2] is None
    check_all(mine, reference(x, None, dy), 4, torch.bfloat16)


def test_looped_kernels_for_wide_rows(device, monkeypatch):
    from fromscratch.kernels import rms_norm as K
    for name, value in (("MAX_FUSED_FWD", 32), ("MAX_FUSED_BWD", 32), ("LOOP_BLOCK", 32)):
        monkeypatch.setattr(K, name, value)
    x = rows(3, 130, torch.float32, device)
    w = param(130, torch.float32, device, 1, 1.0)
    dy = rows(3, 130, torch.float32, device, seed=3, shifted=False)
    check_all(run_kernel(x, w, dy), reference(x, w, dy), 3, torch.float32)
    r = rows(3, 130, torch.float32, device, seed=5)
    check_fused(x, r, w, dy, rows(3, 130, torch.float32, device, seed=6), torch.float32)


def test_non_contiguous_inputs(device):
    wide = rows(6, 50, torch.float16, device)
    x = wide[:, 5:42]
    w = param(37, torch.float32, device, 1, 1.0)
    dy = rows(37, 6, torch.float16, device, seed=3, shifted=False).t()
    check_all(run_kernel(x, w, dy), reference(x, w, dy), 6, torch.float16)
    xt = rows(37, 6, torch.float16, device).t()
    check_all(run_kernel(xt, w, dy), reference(xt, w, dy), 6, torch.float16)


def check_fused(x, r, w, dy, ds, dtype):
    from fromscratch.kernels import residual_rms_norm as K
    s, y, rstd, _ = K.forward(x, r, w, EPS)
    dsum, dw = K.backward(dy, ds, s, w, rstd)
    # s is x + residual rounded once to the dtype (round-to-nearest on a GPU; Triton's
    # interpreter truncates float32 -> bfloat16, one unit in the last place at most)
    s_ref = (f64(x) + f64(r)).to(dtype)
    if s.device.type == "cuda":
        assert torch.equal(s.cpu(), s_ref), "s must be x + residual rounded once to the dtype"
    close(s, f64(s_ref), "s", dtype)
    y_ref, cache = rn.forward(f64(s), f64(w), EPS)     # y normalises the stored s itself
    dx_ref, dw_ref = rn.backward(f64(dy), cache)
    close(y, y_ref, "y", dtype)
    close(dsum, dx_ref + f64(ds), "d(sum)", dtype)
    close(dw, dw_ref, "dweight", dtype, reduced_over=x.shape[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_matches_two_steps(device, dtype):
    x, r = rows(5, 37, dtype, device), rows(5, 37, dtype, device, seed=5)
    w = param(37, torch.float32, device, 1, 1.0)
    check_fused(x, r, w, rows(5, 37, dtype, device, seed=3, shifted=False),
                rows(5, 37, dtype, device, seed=6, shifted=False), dtype)


def test_fused_add_functional(device):
    """functional.fused_add_rms_norm: triton vs the composed reference, gradients reaching
    x, residual and weight through both outputs, and through s alone."""
    x0, r0 = rows(2 * 5, 37, torch.float32, device), rows(10, 37, torch.float32, device, seed=5)
    w0 = param(37, torch.float32, device, 1, 1.0)
    gy = rows(10, 37, torch.float32, device, seed=3, shifted=False)
    gs = rows(10, 37, torch.float32, device, seed=4, shifted=False)
    out = {}
    for backend in ("torch", "triton"):
        x, r, w = (t.clone().reshape(2, 5, 37) if t.dim() == 2 else t.clone()
                   for t in (x0, r0, w0))
        for t in (x, r, w):
            t.requires_grad_(True)
        s, y = F.fused_add_rms_norm(x, r, 37, w, backend=backend)
        torch.autograd.backward([s, y], [gs.reshape(2, 5, 37), gy.reshape(2, 5, 37)])
        out[backend] = (s, y, x.grad, r.grad, w.grad)
    for name, a, b in zip(("s", "y", "dx", "dresidual", "dweight"), out["triton"], out["torch"]):
        close(a, f64(b), name, torch.float32, reduced_over=10)
    x = x0.clone().requires_grad_(True)
    s, _ = F.fused_add_rms_norm(x, r0, 37, w0, backend="triton")
    s.backward(gs)                                       # y unused: its gradient is None
    close(x.grad, f64(gs), "dx through s only", torch.float32)


def test_module_matches_torch_backend(device):
    from fromscratch.nn import RMSNorm
    x = rows(6, 130, torch.bfloat16, device)
    dy = rows(6, 130, torch.bfloat16, device, seed=3, shifted=False)
    out = {}
    for backend in ("torch", "triton"):
        mod = RMSNorm(130, backend=backend, device=device)
        xi = x.clone().requires_grad_(True)
        y = mod(xi)
        y.backward(dy)
        out[backend] = (y, xi.grad, mod.weight.grad)
    for name, a, b in zip(("y", "dx", "dweight"), out["triton"], out["torch"]):
        close(a.float(), f64(b), name, torch.bfloat16, reduced_over=6)


def test_every_launch_configuration(device, monkeypatch):
    """Each candidate the tuner may pick gives the right answer, with and without residual."""
    from fromscratch.kernels import _common, _row_backward, rms_norm as K
    m, n = 75, 130          # several tiles per program: the prefetch matters
    x, r = rows(m, n, torch.bfloat16, device), rows(m, n, torch.bfloat16, device, seed=5)
    w = param(n, torch.float32, device, 1, 1.0)
    dy = rows(m, n, torch.bfloat16, device, seed=3, shifted=False)
    ds = rows(m, n, torch.bfloat16, device, seed=6, shifted=False)
    ref = reference(x, w, dy)
    block_n = _common.next_pow2(n)
    fwd, bwd = _common.row_fwd_configs(block_n), _common.row_bwd_configs(block_n)
    for i in range(max(len(fwd), len(bwd))):
        monkeypatch.setattr(K, "row_fwd_configs", lambda _, c=fwd[i % len(fwd)]: [c])
        monkeypatch.setattr(_row_backward, "row_bwd_configs",
                            lambda _, c=bwd[i % len(bwd)]: [c])
        check_all(run_kernel(x, w, dy), ref, m, torch.bfloat16)
        check_fused(x, r, w, dy, ds, torch.bfloat16)


@pytest.mark.parametrize("wide", [False, True], ids=["fused", "looped"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_xhat_rounded_before_the_weight(device, dtype, wide, monkeypatch):
    """Llama's cast (``round_xhat``): y = w * xhat rounded to the input's dtype, stored in
    the promoted dtype (float32 for a float32 weight); the backward is the plain one."""
    from fromscratch.kernels import rms_norm as K
    if wide:
        monkeypatch.setattr(K, "MAX_FUSED_FWD", 32)
        monkeypatch.setattr(K, "LOOP_BLOCK", 32)
    x = rows(5, 37, dtype, device)
    w = param(37, torch.float32, device, 1, shift=1.0)
    dy = rows(5, 37, torch.float32, device, seed=3, shifted=False)
    y, rstd, _, _ = K.forward(x, w, EPS, round_xhat=True, out_dtype=torch.float32)
    assert y.dtype == torch.float32
    y_ref, cache = rn.forward(f64(x), f64(w), EPS, xhat_dtype=dtype)
    # one rounding of xhat to the dtype: its tolerance (the interpreter truncates)
    close(y, y_ref, "y", dtype)
    dx, dw = K.backward(dy, x, w, rstd)
    dx_ref, dw_ref = rn.backward(f64(dy), cache)
    close(dx, dx_ref, "dx", dtype)
    close(dw, dw_ref, "dweight", torch.float32, reduced_over=5)


@pytest.mark.parametrize("kw", [{"offset": 1.0}, {"cast": "normalized"},
                                {"offset": 1.0, "cast": "normalized"}], ids=str)
def test_offset_and_cast_through_functional_match_the_torch_backend(device, kw):
    """rms_norm and fused_add_rms_norm with Gemma's offset and Llama's cast: triton against
    the reference, outputs (and their dtype) and the gradients of x, residual and a bf16
    weight (the offset reaches the kernels as offset + weight in float32)."""
    x0, r0 = rows(5, 37, torch.bfloat16, device), rows(5, 37, torch.bfloat16, device, seed=5)
    w0 = param(37, torch.bfloat16, device, 1)
    gy = rows(5, 37, torch.float32, device, seed=3, shifted=False)
    gs = rows(5, 37, torch.bfloat16, device, seed=4, shifted=False)
    out = {}
    for backend in ("torch", "triton"):
        x, r, w = (t.clone().requires_grad_(True) for t in (x0, r0, w0))
        y = F.rms_norm(x, 37, w, EPS, backend, **kw)
        s, y2 = F.fused_add_rms_norm(x, r, 37, w, EPS, backend, **kw)
        torch.autograd.backward([y, s, y2], [gy.to(y.dtype), gs, gy.to(y2.dtype)])
        out[backend] = (y, s, y2, x.grad, r.grad, w.grad)
    for name, a, b in zip(("y", "s", "y(s)", "dx", "dresidual", "dweight"), out["triton"],
                          out["torch"]):
        assert a.dtype == b.dtype, f"{name}: {a.dtype}, the reference's {b.dtype}"
        close(a, f64(b), name, torch.bfloat16, reduced_over=5)
