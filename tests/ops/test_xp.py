"""The ops' array helpers: an op writes over its own arrays only while no autograd graph
is recorded; the fast reductions equal the plain ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fromscratch.ops import _xp


def test_reuse_only_where_no_graph_is_recorded():
    a = torch.ones(3, 4)
    with torch.no_grad():
        assert _xp.reuse(a) is a
        assert torch.mul(a, 2.0, out=_xp.reuse(a)) is a and float(a[0, 0]) == 2.0
    assert _xp.reuse(a) is None                     # grad mode on: a new array instead
    b = torch.mul(a, 3.0, out=_xp.reuse(a))
    assert b is not a and float(a[0, 0]) == 2.0 and float(b[0, 0]) == 6.0
    n = np.ones(3)
    assert _xp.reuse(n) is n


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_addcmul_into_out_and_fresh(kind):
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
        assert _xp.addcmul(out, a, None, out=out) is out       # without b: c + a
    fresh = _xp.addcmul(c, a, b)
    np.testing.assert_allclose(np.asarray(fresh), expected, rtol=1e-15)


def row_parts(x, out=None):
    """A row-wise f with every kind of output: the one new array (x * 2, into ``out``), a
    per-row statistic (..., 1), a column sum and None."""
    xp = np if isinstance(x, np.ndarray) else torch
    return xp.multiply(x, 2.0, out=out), x[:, :1] + 1.0, x.sum(0), None


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("rows", [13, 12, 3, 1, 0])
def test_in_cache_blocks_give_the_one_block_numbers(kind, rows, monkeypatch):
    """Blocks of 3 rows: the first output written block by block into one array, per-row
    outputs joined, column sums added up, None kept; one call where the rows fit in one
    block."""
    x = np.random.default_rng(0).standard_normal((rows, 4))
    if kind == "torch":
        x = torch.from_numpy(x)
    seen = []

    def f(a, out):
        seen.append((a.shape[0], out is None))
        return row_parts(a, out)

    monkeypatch.setattr(_xp, "BLOCK_BYTES", 3 * 4 * 8)            # three float64 rows of 4
    with torch.no_grad():
        blocked = _xp.in_cache_blocks(f, x)
    if rows > 3:
        assert seen == [(3, False)] * (rows // 3) + [(rows % 3, False)] * (rows % 3 > 0)
    else:
        assert seen == [(rows, True)]
    for one, many in zip(row_parts(x), blocked):
        if one is None:
            assert many is None
        else:
            assert type(many) is type(x) and tuple(many.shape) == tuple(one.shape)
            np.testing.assert_allclose(np.asarray(many), np.asarray(one), rtol=1e-14, atol=1e-14)


def test_in_cache_blocks_make_one_call_while_torch_records_a_graph(monkeypatch):
    """Blocks write into one new array: not while autograd records (nor under
    torch.compile or torch.func), so there f runs once on all rows."""
    monkeypatch.setattr(_xp, "BLOCK_BYTES", 8)
    x = torch.ones(5, 2, requires_grad=True)
    calls = []
    y, = _xp.in_cache_blocks(lambda a, out: (calls.append(out) or a * 2.0,), x)
    assert calls == [None] and y.requires_grad


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_row_mean_with_and_without_a_weight(kind):
    g = np.random.default_rng(1)
    a, w = g.standard_normal((4, 5)), g.standard_normal(5)
    if kind == "torch":
        a, w = torch.from_numpy(a), torch.from_numpy(w)
    an, wn = np.asarray(a), np.asarray(w)
    np.testing.assert_allclose(np.asarray(_xp.row_mean(a)), an.mean(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(_xp.row_mean(a, w)), (an * wn).mean(-1, keepdims=True))


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
