"""The ops' array helpers: they write in place only into buffers an op owns, and only
while no autograd graph is recorded; the fast reductions equal the plain ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fromscratch.ops import _xp


def test_no_overwriting_while_torch_records_a_graph():
    a = torch.ones(3, 4)
    with torch.no_grad():
        assert _xp.may_overwrite(a)
        assert _xp.imul(a, 2.0) is a and float(a[0, 0]) == 2.0
    assert not _xp.may_overwrite(a)                 # grad mode on: a fresh array instead
    b = _xp.imul(a, 3.0)
    assert b is not a and float(a[0, 0]) == 2.0 and float(b[0, 0]) == 6.0
    assert _xp.may_overwrite(np.ones(3))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_addcmul_and_mul_into_out(kind):
    g = np.random.default_rng(0)
    c, a, b = g.standard_normal(5), g.standard_normal((4, 5)), g.standard_normal((4, 1))
    if kind == "torch":
        c, a, b = (torch.from_numpy(t) for t in (c, a, b))
    expected = np.asarray(c) + np.asarray(a) * np.asarray(b)
    with torch.no_grad():
        out = a * 0
        assert _xp.addcmul(c, a, b, out=out) is out
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-15)
        assert _xp.addcmul(out, a, b, out=out) is out          # out is c: accumulate
        np.testing.assert_allclose(np.asarray(out), expected + np.asarray(a) * np.asarray(b))
        spare = a * 0
        assert _xp.mul(a, b, out=spare) is spare
        np.testing.assert_allclose(np.asarray(spare), np.asarray(a) * np.asarray(b))
    fresh = _xp.addcmul(c, a, b)
    np.testing.assert_allclose(np.asarray(fresh), expected, rtol=1e-15)


@pytest.mark.parametrize("shape", [(4096, 7), (13, 5), (3, 4, 6), (0, 5), (1, 3)])
def test_sum_rows_equals_the_plain_column_sum(shape):
    x = torch.randn(shape, dtype=torch.float64)
    want = x.reshape(-1, shape[-1]).sum(0)
    torch.testing.assert_close(_xp.sum_rows(x), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_xp.sum_rows(x.numpy()), want.numpy(), rtol=1e-12, atol=1e-12)
    assert _xp.sum_rows(x).shape == (shape[-1],)


def test_sumsq_reads_once_without_a_graph_and_stays_differentiable_with_one():
    x = torch.randn(6, 9, dtype=torch.float64)
    want = (x * x).sum(-1, keepdim=True)
    torch.testing.assert_close(_xp.sumsq(x), want)
    np.testing.assert_allclose(_xp.sumsq(x.numpy()), want.numpy(), rtol=1e-12)
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)   # a constant row
    (g,) = torch.autograd.grad(_xp.sumsq(z).sum(), z, create_graph=True)
    assert torch.equal(g, torch.zeros_like(z))                      # d(sum x^2) = 2x, not NaN
