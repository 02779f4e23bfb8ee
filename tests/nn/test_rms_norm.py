"""fromscratch.nn.RMSNorm against torch.nn.RMSNorm: float64 tight, then fp32 / fp16 / bf16
against a float64 reference built from the rounded inputs (the tolerances of docs/conventions.md).

eps=None is float32's machine epsilon for fp32/fp16/bf16 input and float64's for float64
input, as torch; the data hold a row whose mean square is near eps so a wrong eps shows.
With ``offset`` and ``cast`` it is Hugging Face's Llama and Gemma RMSNorms, whose forwards
tests/nn/_hf_rms_norms.py writes out: float64 to 1e-10, half precision to one ulp."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fromscratch import functional as F
from fromscratch.nn import RMSNorm
from fromscratch.autograd.rms_norm import RMSNormFn
from tests._compare import (EPS32, TOL, WORKING_DTYPES, assert_backward_is, assert_close, randn,
                            tol, upstream)
from tests.nn._hf_rms_norms import MODELS, assert_within_one_ulp
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


# --- offset and cast: Hugging Face's Llama and Gemma RMSNorms (tests/nn/_hf_rms_norms.py) --


def model_pair(model, n, dtype, seed=3):
    """Our RMSNorm configured as ``model`` with a random weight (around 0 for Gemma, which
    stores w - 1), and that weight."""
    kw, _ = MODELS[model]
    ours = RMSNorm(n, eps=1e-6, dtype=dtype, **kw)
    with torch.no_grad():
        ours.weight.copy_(randn(n, seed=seed, scale=0.3, shift=1.0 - ours.offset))
    return ours, ours.weight.detach()


def model_forward_backward(model, x, w, dy, compute):
    """The model's output and (dx, dweight) by autograd over its forward."""
    xl, wl = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = MODELS[model][1](xl, wl, 1e-6, compute)
    y.backward(dy.to(y.dtype))
    return y.detach(), xl.grad, wl.grad


def ours_forward_backward(ours, x, dy):
    y, dx, g = forward_backward(ours, x, dy.to(ours(x[:1]).dtype))
    return y, dx, g["weight"]


@pytest.mark.parametrize("model", MODELS)
def test_float64_matches_the_models_formula(model):
    """In float64 (the models' formula with float64 in place of their .float()): output, dx
    and dweight to 1e-10."""
    ours, w = model_pair(model, 37, torch.float64)
    x, dy = data((4, 5, 37), torch.float64)
    for name, a, r in zip(("y", "dx", "dweight"), ours_forward_backward(ours, x, dy),
                          model_forward_backward(model, x, w, dy, torch.float64)):
        assert_close(a, r, f"{model} float64 {name}", rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("param_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("model", MODELS)
def test_half_precision_output_is_the_models_to_one_ulp(model, dtype, param_dtype):
    """The model's own half-precision forward: the same dtype (Llama's promotes a float32
    weight with the input: a float32 output), every value within one unit in the last place
    (the models' rsqrt and summation order differ from ours in r's last bit), at least 99.9%
    of them identical."""
    pdtype = dtype if param_dtype == "same" else torch.float32
    ours, w = model_pair(model, 512, pdtype)
    x = randn(64, 512, seed=5, scale=2.0, shift=0.3).to(dtype)
    y = ours(x)
    assert_within_one_ulp(y, MODELS[model][1](x, w, 1e-6), f"{model} {dtype} y")


@pytest.mark.parametrize("model", MODELS)
def test_float32_output_is_the_models(model):
    ours, w = model_pair(model, 512, torch.float32)
    x = randn(64, 512, seed=5, scale=2.0, shift=0.3).to(torch.float32)
    assert_close(ours(x), MODELS[model][1](x, w, 1e-6), f"{model} float32 y",
                 *TOL[torch.float32])


@pytest.mark.parametrize("param_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", WORKING_DTYPES, ids=str)
@pytest.mark.parametrize("model", MODELS)
def test_working_dtypes_gradients_against_the_models_formula_in_float64(model, dtype,
                                                                         param_dtype):
    """Output and gradients against the model's formula in float64 on the same rounded
    numbers, with docs/conventions.md's tolerances; the model's own autograd in the working
    dtype is quoted where a value fails."""
    pdtype = dtype if param_dtype == "same" else torch.float32
    ours, w = model_pair(model, 37, pdtype)
    x, dy = data((5, 7, 37), dtype)
    y, dx, dw = ours_forward_backward(ours, x, dy)
    ref = model_forward_backward(model, x.double(), w.double(), dy.double(), torch.float64)
    theirs = model_forward_backward(model, x, w, dy, torch.float32)
    assert y.dtype == theirs[0].dtype and dx.dtype == dtype and dw.dtype == pdtype
    assert_close(y, ref[0], f"{model} {dtype} y", *tol(dtype), theirs=theirs[0])
    assert_close(dx, ref[1], f"{model} {dtype} dx", *tol(dtype), theirs=theirs[1])
    assert_close(dw, ref[2], f"{model} {dtype} dweight", *tol(dtype, reduced_over=35),
                 theirs=theirs[2])


@pytest.mark.parametrize("kw", [{"offset": 1.0}, {"offset": -0.5, "cast": "normalized"},
                                {"cast": "normalized", "elementwise_affine": False}], ids=str)
def test_gradcheck_with_offset_and_cast(kw):
    m = RMSNorm((2, 5), eps=1e-3, dtype=torch.float64, **kw)
    if m.weight is not None:
        with torch.no_grad():
            m.weight.copy_(randn(2, 5, seed=4))
    x = randn(3, 2, 5, seed=6, shift=0.2).requires_grad_()
    params = [x] + ([m.weight] if m.weight is not None else [])
    assert torch.autograd.gradcheck(lambda x, *w: m(x), params)
    assert torch.autograd.gradgradcheck(lambda x, *w: m(x), params)


def test_offset_initialises_the_applied_weight_to_one_and_keeps_the_state_dict():
    gemma = RMSNorm(6, offset=1.0)
    assert torch.equal(gemma.weight, torch.zeros(6)), "Gemma's weight starts at zeros"
    assert torch.equal(RMSNorm(6, offset=0.25).weight, torch.full((6,), 0.75))
    assert list(gemma.state_dict()) == ["weight"]
    x = randn(3, 6, seed=2).float()
    assert_close(gemma(x), RMSNorm(6)(x), "offset + weight starts at 1", *TOL[torch.float32])
    llama = RMSNorm(6, cast="normalized")
    llama.load_state_dict(nn.RMSNorm(6).state_dict())
    assert "offset=1.0" in repr(gemma) and "cast='normalized'" in repr(llama)
    assert repr(RMSNorm(6)) == "RMSNorm((6,), eps=None, elementwise_affine=True)"


def test_offset_and_cast_that_are_wrong_are_refused_by_name():
    x = torch.randn(2, 4)
    for bad, error in (("1.0", TypeError), (True, TypeError), (float("nan"), ValueError),
                       (float("inf"), ValueError)):
        with pytest.raises(error, match="offset"):
            RMSNorm(4, offset=bad)
        with pytest.raises(error, match="offset"):
            F.rms_norm(x, 4, torch.ones(4), offset=bad)
    for bad in ("llama", "float32", None, 1):
        with pytest.raises(ValueError, match="cast"):
            RMSNorm(4, cast=bad)
        with pytest.raises(ValueError, match="cast"):
            F.rms_norm(x, 4, torch.ones(4), cast=bad)


def test_per_sample_gradients_with_offset_under_vmap():
    from torch.func import grad, vmap
    m = RMSNorm(5, offset=1.0, cast="normalized", dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(randn(5, seed=1, scale=0.3))
    x = randn(4, 5, seed=2)

    def loss(w, xi):
        return torch.func.functional_call(m, {"weight": w}, (xi,)).pow(2).sum()
    per_sample = vmap(grad(loss), in_dims=(None, 0))(m.weight.detach(), x)
    for i in range(4):
        assert_close(per_sample[i], grad(loss)(m.weight.detach(), x[i]), f"sample {i}",
                     *TOL[torch.float64])
