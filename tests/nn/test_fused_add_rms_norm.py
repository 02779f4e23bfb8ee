"""fromscratch.nn.FusedAddRMSNorm: (x, residual) -> (s = x + residual, RMSNorm(s)), the
constructor and state dict of RMSNorm. Against the two steps written with torch.nn.RMSNorm
(and Hugging Face's Llama/Gemma formulas for offset and cast) in float64, then the working
dtypes with docs/conventions.md's tolerances. The Triton path: tests/kernels/test_rms_norm.py."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from fromscratch.nn import FusedAddRMSNorm, RMSNorm
from tests._compare import TOL, WORKING_DTYPES, assert_close, randn, tol, upstream
from tests.nn._hf_rms_norms import MODELS

SHAPE = (3, 4, 19)
OPTIONS = {   # our options: the norm of the two steps, given (s, weight, eps, compute dtype)
    "default": ({}, lambda s, w, eps, c: nn.functional.rms_norm(s, (s.shape[-1],), w, eps)),
    **MODELS,                                     # Llama's and Gemma's
}


def module(options, dtype, **kw):
    m = FusedAddRMSNorm(19, eps=1e-5, dtype=dtype, **OPTIONS[options][0], **kw)
    if m.weight is not None:
        with torch.no_grad():
            m.weight.copy_(randn(19, seed=3, scale=0.3, shift=1.0 - m.offset))
    return m


def run(fn, x, r, w, dy, ds):
    """(s, y, dx, dresidual, dweight) of ``fn(x, residual, weight) -> (s, y)``."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, r)]
    wl = w.detach().clone().requires_grad_() if w is not None else None
    s, y = fn(*leaves, wl)
    torch.autograd.backward([s, y], [ds, dy.to(y.dtype)])
    return s.detach(), y.detach(), leaves[0].grad, leaves[1].grad, wl.grad if wl is not None \
        else None


def ours(m):
    """``m`` as ``fn(x, residual, weight)``, the weight passed in."""
    def fn(x, r, w):
        return m(x, r) if w is None else torch.func.functional_call(m, {"weight": w}, (x, r))
    return fn


def two_steps(options, eps, compute):
    norm = OPTIONS[options][1]

    def fn(x, r, w):
        s = x + r
        return s, norm(s, w, eps, compute)
    return fn


def data(dtype):
    x = randn(*SHAPE, seed=1, scale=2.0, shift=0.3).to(dtype)
    r = randn(*SHAPE, seed=2).to(dtype)
    return x, r, upstream(SHAPE, dtype, seed=4), upstream(SHAPE, dtype, seed=5)


NAMES = ("s", "y", "dx", "dresidual", "dweight")


@pytest.mark.parametrize("options", OPTIONS)
def test_float64_is_the_add_then_the_norm(options):
    m = module(options, torch.float64)
    x, r, dy, ds = data(torch.float64)
    mine = run(ours(m), x, r, m.weight, dy, ds)
    ref = run(two_steps(options, 1e-5, torch.float64), x, r, m.weight, dy, ds)
    for name, a, b in zip(NAMES, mine, ref):
        assert_close(a, b, f"{options} {name}", *TOL[torch.float64])


@pytest.mark.parametrize("dtype", WORKING_DTYPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS)
def test_working_dtypes_against_float64(options, dtype):
    """s is x + residual rounded once to the dtype; y normalises that rounded s."""
    m = module(options, dtype)
    x, r, dy, ds = data(dtype)
    s, y, dx, dr, dw = run(ours(m), x, r, m.weight, dy, ds)
    assert torch.equal(s, x + r), "s is not x + residual in the input's dtype"
    ref = run(two_steps(options, 1e-5, torch.float64), s.double(), torch.zeros_like(s.double()),
              m.weight.double(), dy.double(), ds.double())
    rows = x.numel() // 19
    for name, a, b in zip(NAMES[1:], (y, dx, dr, dw), ref[1:]):
        assert a.dtype == (m.weight.dtype if name == "dweight" else dtype)
        assert_close(a, b, f"{options} {dtype} {name}", *tol(dtype, rows if name == "dweight"
                                                              else None))


def test_constructor_and_state_dict_are_rmsnorms():
    assert inspect.signature(FusedAddRMSNorm) == inspect.signature(RMSNorm)
    fused, plain = FusedAddRMSNorm(7, offset=1.0, cast="normalized"), RMSNorm(7)
    assert list(fused.state_dict()) == ["weight"] and torch.equal(fused.weight, torch.zeros(7))
    fused.load_state_dict(plain.state_dict())
    assert FusedAddRMSNorm(7, elementwise_affine=False).weight is None
    assert repr(fused) == ("FusedAddRMSNorm((7,), eps=None, elementwise_affine=True, "
                           "offset=1.0, cast='normalized')")
    assert not isinstance(fused, RMSNorm), "its forward takes two tensors: not an RMSNorm"


def test_without_weight_and_gradient_through_s_only():
    m = FusedAddRMSNorm(19, elementwise_affine=False, dtype=torch.float64)
    x, r, dy, ds = data(torch.float64)
    mine = run(ours(m), x, r, None, dy, ds)
    ref = run(two_steps("default", None, torch.float64), x, r, None, dy, ds)
    for name, a, b in zip(NAMES[:4], mine, ref):
        assert_close(a, b, f"no weight {name}", *TOL[torch.float64])
    xl = x.clone().requires_grad_()
    s, _ = module("gemma", torch.float64)(xl, r)
    s.backward(ds)
    assert torch.equal(xl.grad, ds), "through s alone the gradient is ds"


def test_residual_of_another_shape_is_refused_by_name():
    with pytest.raises(ValueError, match="residual has shape"):
        FusedAddRMSNorm(19)(torch.randn(2, 19), torch.randn(3, 19))
