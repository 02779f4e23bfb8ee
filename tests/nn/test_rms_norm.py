"""fromscratch.nn.RMSNorm against torch.nn.RMSNorm: float64 tight, then fp32 / fp16 / bf16
against a float64 reference built from the rounded inputs (the tolerances of docs/conventions.md).

eps=None is float32's machine epsilon for fp32/fp16/bf16 input and float64's for float64
input, as torch; the data hold a row whose mean square is near eps so a wrong eps shows."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fromscratch.nn import RMSNorm
from fromscratch.nn._autograd import RMSNormFn
from tests._compare import (EPS32, TOL, WORKING_DTYPES, assert_backward_is, assert_close, randn,
                            tol, upstream)
from tests.nn._run import (assert_float32_compute_rounded_once, assert_same_as_torch,
                          float64_twin, forward_backward, randomize_affine,
                          try_forward_backward)

CONFIGS = {
    "37": ((5, 7, 37), 37, {}),
    "(3,10)": ((4, 3, 10), (3, 10), {}),
    "no-weight": ((6, 19), 19, {"elementwise_affine": False}),
    "eps=1e-6": ((2, 3, 2, 13), 13, {"eps": 1e-6}),
}


def pair(normalized_shape, dtype, seed=0, **kw):
    theirs = randomize_affine(nn.RMSNorm(normalized_shape, dtype=dtype, **kw), seed)
    ours = RMSNorm(normalized_shape, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def data(shape, dtype):
    x = randn(*shape, seed=12, scale=1.5, shift=0.4)
    x.reshape(-1, x.shape[-1])[0] *= 3e-4                  # mean(x^2) ~ 1e-7 ~ float32's eps
    return x.to(dtype), upstream(shape, dtype)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_float64_matches_torch(config):
    shape, normalized_shape, kw = config
    ours, theirs = pair(normalized_shape, torch.float64, **kw)
    x, dy = data(shape, torch.float64)
    assert_same_as_torch(ours, theirs, x, dy, *TOL[torch.float64])


@pytest.mark.parametrize("param_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", WORKING_DTYPES, ids=str)
@pytest.mark.parametrize("config", [CONFIGS["37"], CONFIGS["(3,10)"], CONFIGS["no-weight"]],
                         ids=["37", "(3,10)", "no-weight"])
def test_working_dtypes_against_float64_reference(config, dtype, param_dtype):
    shape, normalized_shape, kw = config
    pdtype = dtype if param_dtype == "same" else torch.float32
    ours, theirs = pair(normalized_shape, pdtype, **kw)
    x, dy = data(shape, dtype)
    reference = float64_twin(theirs)
    reference.eps = EPS32                  # torch: eps=None is float32's eps for these inputs
    y, dx, g = forward_backward(ours, x, dy)
    y_r, dx_r, g_r = forward_backward(reference, x.double(), dy.double())
    t = try_forward_backward(theirs, x, dy)
    assert y.dtype == dx.dtype == dtype
    assert all(v.dtype == pdtype for v in g.values())
    rows = x.numel() // ours.weight.numel() if ours.weight is not None else 1
    assert_close(y, y_r, f"{dtype} y", *tol(dtype), theirs=t and t[0])
    assert_close(dx, dx_r, f"{dtype} dx", *tol(dtype), theirs=t and t[1])
    for name in g:
        assert_close(g[name], g_r[name], f"{dtype} d{name}", *tol(dtype, reduced_over=rows),
                     theirs=t and t[2][name])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eps_none_is_the_machine_epsilon_of_the_compute_dtype(dtype):
    """A row with mean(x^2) ~ eps: float32 eps for float32 input, float64 eps for float64."""
    ours, theirs = pair(13, dtype, elementwise_affine=False)
    x = (torch.randn(3, 13, dtype=torch.float64) * 3e-4).to(dtype)
    expected_eps = torch.finfo(dtype).eps
    ref = nn.functional.rms_norm(x.double(), (13,), eps=expected_eps)
    assert_close(ours(x), ref, f"{dtype} eps=None", *TOL[dtype])
    assert_close(theirs(x), ref, f"torch {dtype} eps=None (sanity)", *TOL[dtype])
    wrong = nn.functional.rms_norm(x.double(), (13,), eps=1e-6)
    assert (ours(x).double() - wrong).abs().max() > 0.1, "eps=None behaves like eps=1e-6"


def test_backward_is_ours_not_autograd_over_the_forward():
    ours, _ = pair(16, torch.float32)
    y = ours(torch.randn(3, 16, requires_grad=True))
    assert_backward_is(y, RMSNormFn)


@pytest.mark.parametrize("kw", [{}, {"elementwise_affine": False}])
def test_in_place_op_on_the_output_keeps_the_backward_right(kw):
    ours, theirs = pair(9, torch.float64, **kw)
    x, dy = data((4, 9), torch.float64)
    grads = []
    for m in (ours, theirs):
        xl = x.clone().requires_grad_()
        nn.ReLU(inplace=True)(m(xl * 1.0)).backward(dy)
        grads.append(xl.grad)
    assert_close(grads[0], grads[1], "dx through an in-place ReLU", *TOL[torch.float64])


def test_zero_size_batch():
    ours, _ = pair(5, torch.float64)
    x = torch.zeros(2, 0, 5, dtype=torch.float64)
    y, dx, g = forward_backward(ours, x, torch.zeros_like(x))
    assert y.shape == dx.shape == (2, 0, 5)
    assert torch.equal(g["weight"], torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_is_float32_compute_rounded_once(dtype):
    x = randn(*(6, 5, 24), dtype=dtype, seed=8, shift=0.5)
    assert_float32_compute_rounded_once(lambda: randomize_affine(RMSNorm(24), 1), x,
                                        upstream((6, 5, 24), dtype))
