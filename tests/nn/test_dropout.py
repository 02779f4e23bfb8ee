"""fromscratch.nn.Dropout: statistics (keep rate in a binomial confidence interval,
E[out] = x), edges (p = 0, p = 1, eval), fresh masks, inplace semantics as torch's."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fromscratch import functional as F
from fromscratch.nn import Dropout
from fromscratch.autograd.dropout import DropoutFn
from tests._compare import assert_backward_is, assert_close, randn, upstream

Z999 = 3.2905            # two-sided 99.9% normal quantile


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_in_binomial_confidence_interval(p):
    torch.manual_seed(1234)
    n = 200_000
    y = Dropout(p)(torch.ones(n))
    kept = int((y != 0).sum())
    mean, sd = n * (1 - p), math.sqrt(n * p * (1 - p))
    assert abs(kept - mean) <= Z999 * sd, (
        f"p={p}: kept {kept} of {n} ({kept / n:.4f}), expected {1 - p:.4f} "
        f"+- {Z999 * sd / n:.4f} (99.9% interval)")
    # kept values are x / (1 - p), the rest exactly zero
    assert torch.allclose(y[y != 0], torch.full((kept,), 1 / (1 - p)))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_expected_output_is_the_input(p):
    """mean over T draws of dropout(x) is within a 99.9% interval (Bonferroni over the d
    entries) of x: standard error |x| sqrt(p / (1 - p)) / sqrt(T)."""
    torch.manual_seed(99)
    t, d = 20_000, 16
    x = randn(d, dtype=torch.float64, seed=5) + 2.0
    y = Dropout(p)(x.expand(t, d).contiguous())
    se = x.abs() * math.sqrt(p / (1 - p)) / math.sqrt(t)
    z = 3.29 + math.log(d) / 2                              # ~ Bonferroni for d entries
    err = (y.mean(0) - x).abs()
    assert (err <= z * se).all(), f"p={p}: |E[out] - x| / se up to {float((err / se).max()):.2f}"


def test_p_zero_is_identity_and_p_one_gives_zeros_and_zero_gradient():
    x = randn(6, 7).requires_grad_()
    assert torch.equal(Dropout(0.0)(x), x)
    y = Dropout(1.0)(x)
    assert torch.equal(y, torch.zeros_like(x))
    y.backward(upstream((6, 7), torch.float64))
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_eval_is_identity_and_returns_the_input_as_torch():
    x = randn(5, 3)
    for m in (Dropout(0.5).eval(), nn.Dropout(0.5).eval()):
        assert m(x) is x


def test_fresh_mask_on_each_call_and_reproducible_from_the_seed():
    m, x = Dropout(0.5), torch.ones(1000)
    torch.manual_seed(0)
    a, b = m(x), m(x)
    assert not torch.equal(a != 0, b != 0), "the same mask twice"
    torch.manual_seed(0)
    assert torch.equal(m(x), a), "not reproducible from torch.manual_seed"


def test_gradient_is_mask_over_keep_rate():
    x = randn(40, 30).requires_grad_()
    y = Dropout(0.3)(x)
    dy = upstream((40, 30), torch.float64)
    y.backward(dy)
    keep = (y != 0).double()
    assert_close(x.grad, dy * keep / 0.7, "dx", 1e-15, 0)
    assert_close(y, x.detach() * keep / 0.7, "y", 1e-15, 0)
    assert_backward_is(y, DropoutFn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_working_dtypes_keep_dtype_and_exact_scaling(dtype):
    x = randn(64, 33, dtype=dtype, seed=3).requires_grad_()
    y = Dropout(0.25)(x)
    y.backward(torch.ones_like(y))
    assert y.dtype == x.grad.dtype == dtype
    keep = y != 0
    # computed in float32 and rounded once: within one unit of the dtype of x / 0.75
    exact = x.detach().double()[keep] / 0.75
    assert_close(y[keep], exact, f"{dtype} kept values", torch.finfo(dtype).eps, 0)
    assert torch.equal(x.grad[keep], torch.full_like(x.grad[keep], 1 / 0.75))
    assert (x.grad[~keep] == 0).all()


def test_inplace_matches_torch_semantics():
    # modifies the input and returns that same tensor
    x = randn(8, 9) + 3.0
    out = Dropout(0.5, inplace=True)(x)
    assert out is x and (x == 0).any()
    # on a leaf that requires grad: the same error as torch
    for m in (Dropout(0.5, inplace=True), nn.Dropout(0.5, inplace=True)):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            m(randn(3, 3).requires_grad_())
    # on a non-leaf: the gradient flows through the in-place result
    a = (randn(20, 10) + 3.0).requires_grad_()
    h = a * 2.0
    y = Dropout(0.4, inplace=True)(h)
    assert y is h
    dy = upstream((20, 10), torch.float64)
    y.backward(dy)
    keep = (y != 0).double()
    assert_close(a.grad, 2.0 * dy * keep / 0.6, "da through inplace dropout", 1e-15, 0)
    # eval: identity, untouched
    x = randn(4, 4)
    before = x.clone()
    assert Dropout(0.5, inplace=True).eval()(x) is x and torch.equal(x, before)


def test_non_contiguous_input():
    torch.manual_seed(3)
    x = (randn(12, 10) + 2.0).t()[:, ::2]
    y = F.dropout(x, 0.5)
    assert y.shape == x.shape
    keep = y != 0
    assert torch.equal(y[keep], x[keep] * 2.0)


def test_activation_checkpointing_recomputes_the_same_mask():
    """torch.utils.checkpoint reruns the forward in the backward with the RNG state restored:
    the same mask, so the same gradient as without checkpointing."""
    from torch.utils.checkpoint import checkpoint
    m = Dropout(0.3)
    x = torch.randn(8, 64, requires_grad=True)
    torch.manual_seed(5)
    y1 = m(x).sin()
    g1 = torch.autograd.grad(y1.sum(), x)[0]
    torch.manual_seed(5)
    y2 = checkpoint(lambda t: m(t).sin(), x, use_reentrant=False)
    g2 = torch.autograd.grad(y2.sum(), x)[0]
    assert torch.equal(y1, y2) and torch.equal(g1, g2)
