"""fromscratch.nn.LayerNorm against torch.nn.LayerNorm: float64 tight, then fp32 / fp16 /
bf16 against a float64 reference built from the rounded inputs (the tolerances of docs/conventions.md)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fromscratch.nn import LayerNorm
from fromscratch.autograd.layer_norm import LayerNormFn
from tests._compare import (TOL, WORKING_DTYPES, assert_backward_is, assert_close, randn, tol,
                            upstream)
from tests.nn._run import (assert_float32_compute_rounded_once, assert_same_as_torch,
                          float64_twin, forward_backward, randomize_affine,
                          try_forward_backward)

CONFIGS = {
    "37": ((5, 7, 37), 37, {}),
    "(3,10)": ((4, 3, 10), (3, 10), {}),
    "no-bias": ((6, 19), 19, {"bias": False}),
    "no-affine": ((6, 19), 19, {"elementwise_affine": False}),
    "eps=1e-2": ((2, 3, 2, 13), 13, {"eps": 1e-2}),
}


def pair(normalized_shape, dtype, seed=0, **kw):
    theirs = randomize_affine(nn.LayerNorm(normalized_shape, dtype=dtype, **kw), seed)
    ours = LayerNorm(normalized_shape, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def data(shape, dtype):
    x = randn(*shape, seed=11, scale=2.0, shift=0.7)
    x.reshape(-1, x.shape[-1])[0] *= 1e-3                  # one row with variance below eps
    return x.to(dtype), upstream(shape, dtype)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_float64_matches_torch(config):
    shape, normalized_shape, kw = config
    ours, theirs = pair(normalized_shape, torch.float64, **kw)
    x, dy = data(shape, torch.float64)
    assert_same_as_torch(ours, theirs, x, dy, *TOL[torch.float64])


@pytest.mark.parametrize("param_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", WORKING_DTYPES, ids=str)
@pytest.mark.parametrize("config", [CONFIGS["37"], CONFIGS["(3,10)"], CONFIGS["no-affine"]],
                         ids=["37", "(3,10)", "no-affine"])
def test_working_dtypes_against_float64_reference(config, dtype, param_dtype):
    """Output, dx, dweight, dbias in fp32 / fp16 / bf16 (parameters in the same dtype or in
    fp32), each against torch in float64 on the same rounded numbers."""
    shape, normalized_shape, kw = config
    pdtype = dtype if param_dtype == "same" else torch.float32
    ours, theirs = pair(normalized_shape, pdtype, **kw)
    x, dy = data(shape, dtype)
    y, dx, g = forward_backward(ours, x, dy)
    y_r, dx_r, g_r = forward_backward(float64_twin(theirs), x.double(), dy.double())
    t = try_forward_backward(theirs, x, dy)
    assert y.dtype == dx.dtype == dtype
    assert all(v.dtype == pdtype for v in g.values())
    rows = x.numel() // ours.weight.numel() if ours.weight is not None else 1
    assert_close(y, y_r, f"{dtype} y", *tol(dtype), theirs=t and t[0])
    assert_close(dx, dx_r, f"{dtype} dx", *tol(dtype), theirs=t and t[1])
    for name in g:
        assert_close(g[name], g_r[name], f"{dtype} d{name}", *tol(dtype, reduced_over=rows),
                     theirs=t and t[2][name])


def test_backward_is_ours_not_autograd_over_the_forward():
    ours, _ = pair(16, torch.float32)
    x = torch.randn(3, 16, requires_grad=True)
    y = ours(x)
    assert_backward_is(y, LayerNormFn)
    assert "NativeLayerNormBackward0" not in str(y.grad_fn.next_functions)


@pytest.mark.parametrize("kw", [{}, {"elementwise_affine": False}])
def test_in_place_op_on_the_output_keeps_the_backward_right(kw):
    """LayerNorm -> ReLU(inplace=True) works in torch; the output must not be a tensor the
    backward saved (without an affine, y would be xhat itself)."""
    ours, theirs = pair(9, torch.float64, **kw)
    x, dy = data((4, 9), torch.float64)
    grads = []
    for m in (ours, theirs):
        xl = x.clone().requires_grad_()
        y = nn.ReLU(inplace=True)(m(xl * 1.0))
        y.backward(dy)
        grads.append(xl.grad)
    assert_close(grads[0], grads[1], "dx through an in-place ReLU", *TOL[torch.float64])


def test_zero_size_batch():
    ours, theirs = pair(5, torch.float64)
    x = torch.zeros(0, 3, 5, dtype=torch.float64)
    y, dx, g = forward_backward(ours, x, torch.zeros_like(x))
    y_t, _, g_t = forward_backward(theirs, x, torch.zeros_like(x))
    assert y.shape == (0, 3, 5) and dx.shape == (0, 3, 5)
    for name in g:
        assert torch.equal(g[name], g_t[name]), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_is_float32_compute_rounded_once(dtype):
    x = randn(*(6, 5, 24), dtype=dtype, seed=8, shift=0.5)
    assert_float32_compute_rounded_once(lambda: randomize_affine(LayerNorm(24), 1), x,
                                        upstream((6, 5, 24), dtype))
