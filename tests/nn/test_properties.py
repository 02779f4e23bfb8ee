"""Hypothesis over shapes (non-powers of two, 1-3 leading dims), mean-shifted rows, constant
rows and non-contiguous inputs (transposed and strided views), against torch in float64.

fp32 LayerNorm / BatchNorm on rows with a large mean and a small spread lose digits in any
implementation, so there the tolerance is the condition-aware one of docs/conventions.md:
1e-5 + c eps32 max|x| / sqrt(var + eps) per row (c = 8; two-pass statistics need about 2,
E[x^2] - E[x]^2 would need ~1/eps32)."""
from __future__ import annotations

import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fromscratch.nn import BatchNorm, LayerNorm, RMSNorm
from tests._compare import EPS32, TOL, assert_close

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
C = 8.0

leading = st.lists(st.integers(1, 6), min_size=1, max_size=3)
width = st.integers(1, 70)
layouts = st.sampled_from(["contiguous", "transposed", "strided"])
seeds = st.integers(0, 2**31 - 1)
shifts = st.sampled_from([0.0, 1.0, 1e2, 1e4])       # |row mean| up to this
scales = st.sampled_from([1e-2, 1.0, 1e2])           # row spread down/up to this


def rows_data(m, n, seed, shift, scale, constant_rows=False):
    """(m, n) float64 rows: each its own mean (up to +-shift) and spread (scale / 10^k);
    with constant_rows, every third row is a single repeated value."""
    g = torch.Generator().manual_seed(seed)
    means = shift * (2 * torch.rand(m, 1, generator=g, dtype=torch.float64) - 1)
    spreads = scale * 10.0 ** -torch.randint(0, 2, (m, 1), generator=g).double()
    v = torch.randn(m, n, generator=g, dtype=torch.float64) * spreads + means
    if constant_rows:
        v[::3] = means[::3]
    return v


def as_layout(v: torch.Tensor, layout: str):
    """A leaf ``base`` and a view ``x`` of it equal to v, with the requested memory layout."""
    if layout == "contiguous":
        base = v.clone()
        return base.requires_grad_(), lambda b: b
    if layout == "transposed":                          # every stride reversed
        dims = tuple(range(v.dim()))[::-1]
        base = v.permute(dims).contiguous()
        return base.requires_grad_(), lambda b: b.permute(dims)
    base = torch.zeros(*v.shape[:-1], 2 * v.shape[-1], dtype=v.dtype)     # strided last dim
    base[..., ::2] = v
    return base.requires_grad_(), lambda b: b[..., ::2]


def run(fn, base, view, dy, params=()):
    x = view(base)
    assert x.shape == dy.shape
    for p in params:
        p.grad = None
    base.grad = None
    y = fn(x)
    y.backward(dy)
    return y.detach(), view(base.grad), [p.grad for p in params]


def row_condition(x64: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """max|x| / sqrt(var + eps) over the trailing k dims, kept for broadcasting."""
    dims = tuple(range(x64.dim() - k, x64.dim()))
    var = x64.var(dim=dims, unbiased=False, keepdim=True)
    return x64.abs().amax(dim=dims, keepdim=True) / torch.sqrt(var + eps), torch.sqrt(var + eps)


@SETTINGS
@given(leading, width, st.integers(1, 2), layouts, seeds, shifts, scales, st.booleans())
def test_layer_norm_float64(lead, n, k, layout, seed, shift, scale, constant):
    shape = (*lead, n)
    ns = shape[-k:]
    m_rows = int(torch.tensor(shape[:-k]).prod())
    v = rows_data(m_rows, int(torch.tensor(ns).prod()), seed, shift, scale, constant).reshape(shape)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ours = LayerNorm(ns, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.normal_(1, 0.3, generator=torch.Generator().manual_seed(seed + 2))
        ours.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 3))
    w = ours.weight.detach().clone().requires_grad_()
    b = ours.bias.detach().clone().requires_grad_()
    base, view = as_layout(v, layout)
    y, dx, (dw, db) = run(ours, base, view, dy, [ours.weight, ours.bias])
    vb, vview = as_layout(v, "contiguous")
    y_r, dx_r, (dw_r, db_r) = run(lambda x: TF.layer_norm(x, ns, w, b, 1e-5), vb, vview, dy, [w, b])
    kappa, den = row_condition(v, k, 1e-5)
    rtol, atol = TOL[torch.float64]
    cond = atol + C * torch.finfo(torch.float64).eps * kappa
    assert_close(y, y_r, f"{layout} y", rtol, cond * 2)
    assert_close(dx, dx_r, f"{layout} dx", rtol, cond / den * 4 * dy.abs().amax())
    rows = max(m_rows, 1)
    per_column = (cond * dy.abs()).reshape(rows, *ns).sum(0)         # dweight sums over rows
    assert_close(dw, dw_r, "dweight", rtol, atol * (1 + rows ** 0.5) + per_column)
    assert_close(db, db_r, "dbias", rtol, atol * (1 + rows ** 0.5))
    if constant:
        const = y.reshape(rows, -1)[::3]
        assert_close(const, b.detach().reshape(1, -1).expand_as(const), "constant row = bias",
                     0, float(cond.max()) * 2 + 1e-6)
        assert torch.isfinite(dx).all() and torch.isfinite(dw).all()


@SETTINGS
@given(st.integers(1, 12), width, seeds, shifts, scales, st.booleans())
def test_layer_norm_float32_mean_shifted_rows(m, n, seed, shift, scale, constant):
    """fp32 against float64 on the same rounded rows, condition-aware per row."""
    v = rows_data(m, n, seed, shift, scale, constant).float()
    dy = torch.randn(m, n, generator=torch.Generator().manual_seed(seed + 1))
    ours = LayerNorm(n)
    xl = v.clone().requires_grad_()
    y = ours(xl)
    y.backward(dy)
    x64 = v.double().requires_grad_()
    w64 = torch.ones(n, dtype=torch.float64, requires_grad=True)
    y_r = TF.layer_norm(x64, (n,), w64, None, 1e-5)
    y_r.backward(dy.double())
    kappa, den = row_condition(v.double(), 1, 1e-5)
    rtol, atol = TOL[torch.float32]
    cond = atol + C * EPS32 * kappa
    assert_close(y, y_r, "fp32 y", rtol, cond)
    assert_close(xl.grad, x64.grad, "fp32 dx", rtol, cond / den * dy.abs().amax(-1, keepdim=True))
    assert_close(ours.weight.grad, w64.grad, "fp32 dweight", rtol,
                 atol * (1 + m ** 0.5) + (cond * dy.double().abs()).sum(0))
    if constant:
        assert_close(y[::3], torch.zeros_like(y[::3]), "constant rows -> bias (0)", 0, cond[::3])
        assert torch.isfinite(xl.grad).all()


@SETTINGS
@given(leading, width, st.integers(1, 2), layouts, seeds, scales, st.booleans(),
       st.sampled_from([None, 1e-6]))
def test_rms_norm_float64(lead, n, k, layout, seed, scale, constant, eps):
    shape = (*lead, n)
    ns = shape[-k:]
    m_rows = int(torch.tensor(shape[:-k]).prod())
    v = rows_data(m_rows, int(torch.tensor(ns).prod()), seed, 1.0, scale, constant).reshape(shape)
    if constant:
        v.reshape(m_rows, -1)[1::3] = 0.0                   # all-zero rows too
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ours = RMSNorm(ns, eps=eps, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.normal_(1, 0.3, generator=torch.Generator().manual_seed(seed + 2))
    w = ours.weight.detach().clone().requires_grad_()
    base, view = as_layout(v, layout)
    y, dx, (dw,) = run(ours, base, view, dy, [ours.weight])
    vb, vview = as_layout(v, "contiguous")
    y_r, dx_r, (dw_r,) = run(lambda x: TF.rms_norm(x, ns, w, eps), vb, vview, dy, [w])
    rtol, atol = TOL[torch.float64]
    # r = 1/sqrt(mean(x^2) + eps) is up to 1/sqrt(eps) for zero rows: dx scales with it
    dims = tuple(range(v.dim() - k, v.dim()))
    r = 1 / torch.sqrt((v * v).mean(dim=dims, keepdim=True) + (eps or torch.finfo(v.dtype).eps))
    assert_close(y, y_r, f"{layout} y", rtol, atol)
    scale = r * dy.abs().amax() * w.detach().abs().max()                 # dx's size
    assert_close(dx, dx_r, f"{layout} dx", rtol, atol + C * torch.finfo(v.dtype).eps * scale)
    assert_close(dw, dw_r, "dweight", rtol, atol * (1 + m_rows ** 0.5))
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()


@SETTINGS
@given(st.integers(1, 12), width, seeds, scales)
def test_rms_norm_float32(m, n, seed, scale):
    v = rows_data(m, n, seed, 0.0, scale).float()
    dy = torch.randn(m, n, generator=torch.Generator().manual_seed(seed + 1))
    ours = RMSNorm(n)
    xl = v.clone().requires_grad_()
    ours(xl).backward(dy)
    x64 = v.double().requires_grad_()
    w64 = torch.ones(n, dtype=torch.float64, requires_grad=True)
    y_r = TF.rms_norm(x64, (n,), w64, EPS32)
    y_r.backward(dy.double())
    rtol, atol = TOL[torch.float32]
    assert_close(ours(v), y_r, "fp32 y", rtol, atol)
    r = 1 / torch.sqrt((v.double() ** 2).mean(-1, keepdim=True) + EPS32)
    # dx is of size r max|dy|; its error, relative to that, is the usual atol
    assert_close(xl.grad, x64.grad, "fp32 dx", rtol, atol * r * dy.abs().amax(-1, keepdim=True))
    assert_close(ours.weight.grad, w64.grad, "fp32 dweight", rtol, atol * (1 + m ** 0.5))


@SETTINGS
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.integers(1, 21), layouts, seeds,
       shifts, scales, st.booleans(), st.sampled_from([0.1, None]))
def test_batch_norm_float64(lead, c, layout, seed, shift, scale, constant, momentum):
    """Channels-last (N, ..., C) against BatchNorm1d on x.reshape(-1, C): a training step
    (output, grads, running statistics), then eval. Columns are the 'rows' here."""
    shape = (*lead, c)
    m_rows = int(torch.tensor(lead).prod())
    if m_rows < 2:
        shape, m_rows = (2, *shape), 2 * m_rows
    cols = rows_data(c, m_rows, seed, shift, scale, constant)           # (C, M): one per channel
    v = cols.t().reshape(shape)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ours = BatchNorm(c, momentum=momentum, dtype=torch.float64)
    theirs = torch.nn.BatchNorm1d(c, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.normal_(1, 0.3, generator=torch.Generator().manual_seed(seed + 2))
        theirs.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 3))
    ours.load_state_dict(theirs.state_dict())
    kappa, den = row_condition(cols, 1, 1e-5)
    rtol, atol = TOL[torch.float64]
    cond = (atol + C * torch.finfo(torch.float64).eps * kappa).reshape(c)
    for mode in ("train", "eval"):
        ours.train(mode == "train"), theirs.train(mode == "train")
        base, view = as_layout(v, layout)
        y, dx, (dw, db) = run(ours, base, view, dy, [ours.weight, ours.bias])
        vb, vview = as_layout(v, "contiguous")
        y_r, dx_r, (dw_r, db_r) = run(lambda x: theirs(x.reshape(-1, c)).reshape(shape), vb, vview,
                                      dy, [theirs.weight, theirs.bias])
        assert_close(y, y_r, f"{mode} {layout} y", rtol, cond * 2)
        assert_close(dx, dx_r, f"{mode} {layout} dx", rtol,
                     cond / den.reshape(c) * 4 * dy.abs().amax())
        assert_close(dw, dw_r, f"{mode} dweight", rtol,
                     atol * (1 + m_rows ** 0.5) + (cond * dy.abs().reshape(-1, c)).sum(0))
        assert_close(db, db_r, f"{mode} dbias", rtol, atol * (1 + m_rows ** 0.5))
        assert_close(ours.running_mean, theirs.running_mean, "running_mean", rtol, atol)
        assert_close(ours.running_var, theirs.running_var, "running_var", rtol,
                     atol + C * torch.finfo(torch.float64).eps * (cols ** 2).amax())
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)
        assert torch.isfinite(y).all() and torch.isfinite(dx).all()


@SETTINGS
@given(st.integers(2, 40), st.integers(1, 21), seeds, shifts, scales)
def test_batch_norm_float32_mean_shifted_channels(m, c, seed, shift, scale):
    cols = rows_data(c, m, seed, shift, scale).float()                   # (C, M)
    x = cols.t().contiguous()
    dy = torch.randn(m, c, generator=torch.Generator().manual_seed(seed + 1))
    ours = BatchNorm(c)
    xl = x.clone().requires_grad_()
    y = ours(xl)
    y.backward(dy)
    x64 = x.double().requires_grad_()
    ref = torch.nn.BatchNorm1d(c, dtype=torch.float64)
    y_r = ref(x64)
    y_r.backward(dy.double())
    kappa, den = row_condition(cols.double(), 1, 1e-5)
    kappa, den = kappa.reshape(c), den.reshape(c)
    rtol, atol = TOL[torch.float32]
    cond = atol + C * EPS32 * kappa
    assert_close(y, y_r, "fp32 y", rtol, cond)
    assert_close(xl.grad, x64.grad, "fp32 dx", rtol, cond / den * dy.abs().amax(0))
    assert_close(ours.weight.grad, ref.weight.grad, "fp32 dweight", rtol,
                 atol * (1 + m ** 0.5) + (cond * dy.double().abs()).sum(0))
    assert_close(ours.running_mean, ref.running_mean, "running_mean", rtol,
                 atol + C * EPS32 * x.double().abs().amax(0))
    assert_close(ours.running_var, ref.running_var, "running_var", rtol,
                 atol + C * EPS32 * (x.double() ** 2).amax(0))
    y_eval, y_eval_r = ours.eval()(x), ref.eval()(x.double())   # running statistics
    assert_close(y_eval, y_eval_r, "eval y", rtol,
                 atol + C * EPS32 * x.double().abs().amax(0) / torch.sqrt(ref.running_var + 1e-5))
