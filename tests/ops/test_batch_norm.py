"""ops.batch_norm (channels-last, x is (M, C)) on NumPy arrays and torch tensors, against
torch autograd in float64; moments, Chan's combination, the distributed backward and the
running-average update."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from fromscratch.ops import batch_norm as bn
from tests._compare import as64, assert_close, assert_same, randn, upstream

TIGHT = {"rtol": 1e-10, "atol": 1e-12}
AFFINE = {"weight+bias": (True, True), "weight": (True, False), "none": (False, False)}


def inputs(m=13, c=6, affine=(True, True)):
    x = randn(m, c, seed=0, scale=2.0, shift=3.0)
    x[:, 0] *= 1e-3                       # a channel whose variance is below eps
    w = randn(c, seed=2, shift=1.0) if affine[0] else None
    b = randn(c, seed=3) if affine[1] else None
    return x, w, b, upstream((m, c), torch.float64)


def to_kind(t, kind):
    if t is None:
        return None
    return t.numpy().copy() if kind == "numpy" else t.clone()


def reference(x, w, b, dy, eps, mean=None, var=None):
    """torch's batch_norm on (M, C), differentiated by autograd; batch statistics unless
    mean/var are given (then they are constants, as in eval)."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = TF.batch_norm(leaves[0], mean, var, leaves[1], leaves[2], training=mean is None, eps=eps)
    y.backward(dy)
    return y.detach(), *(t.grad if t is not None else None for t in leaves)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("affine", AFFINE.values(), ids=AFFINE.keys())
def test_training_matches_torch_autograd_float64(kind, affine):
    x, w, b, dy = inputs(affine=affine)
    y, cache, mean, var = bn.forward(to_kind(x, kind), to_kind(w, kind), to_kind(b, kind), 1e-5)
    grads = bn.backward(to_kind(dy, kind), cache)
    assert_close(mean, x.mean(0), "batch mean", **TIGHT)
    assert_close(var, x.var(0, unbiased=False), "batch var (biased)", **TIGHT)
    ref = reference(x, w, b, dy, 1e-5)
    for name, m, r in zip(("y", "dx", "dweight", "dbias"), (y, *grads), ref):
        if r is None:
            assert m is None, f"{name}: expected None without the parameter"
            continue
        assert_close(m, r, f"{kind} {name}", **TIGHT)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("affine", AFFINE.values(), ids=AFFINE.keys())
def test_fixed_statistics_match_torch_eval_float64(kind, affine):
    x, w, b, dy = inputs(affine=affine)
    mean, var = randn(6, seed=5), randn(6, seed=6).abs() + 0.1
    y, cache, m_used, v_used = bn.forward(to_kind(x, kind), to_kind(w, kind), to_kind(b, kind),
                                          1e-5, to_kind(mean, kind), to_kind(var, kind),
                                          batch_stats=False)
    assert_same(m_used, mean, "mean used")
    assert_same(v_used, var, "var used")
    grads = bn.backward(to_kind(dy, kind), cache)
    for name, m, r in zip(("y", "dx", "dweight", "dbias"), (y, *grads),
                          reference(x, w, b, dy, 1e-5, mean, var)):
        if r is None:
            assert m is None
            continue
        assert_close(m, r, f"{kind} eval {name}", **TIGHT)


def test_numpy_and_torch_give_the_same_numbers():
    x, w, b, dy = inputs()
    out = {}
    for kind in ("numpy", "torch"):
        y, cache, mean, var = bn.forward(to_kind(x, kind), to_kind(w, kind), to_kind(b, kind))
        out[kind] = (y, *bn.backward(to_kind(dy, kind), cache), mean, var)
    for name, a, t in zip(("y", "dx", "dw", "db", "mean", "var"), out["numpy"], out["torch"]):
        assert_same(a, t, name)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_moments_are_mean_and_sum_of_squared_deviations(kind):
    x = to_kind(randn(11, 4, seed=7, shift=1e3), kind)        # large mean: two-pass matters
    mean, m2 = bn.moments(x)
    x64 = as64(x)
    assert_close(mean, x64.mean(0), "mean", **TIGHT)
    assert_close(m2, ((x64 - x64.mean(0)) ** 2).sum(0), "M2", rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("sizes", [(5, 0, 8), (0, 13), (1, 1, 11), (4, 9)], ids=str)
def test_combine_moments_equals_whole_batch(kind, sizes):
    """Chan's combination of per-part (count, mean, M2) equals the moments of the whole
    batch, also when a part is empty (its moments() mean is 0/0 = NaN)."""
    x = randn(sum(sizes), 3, seed=8, shift=2.0)
    parts = torch.split(x, list(sizes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)            # numpy: mean of empty slice
        stats = [bn.moments(to_kind(p, kind)) for p in parts]
    xp = np if kind == "numpy" else torch
    counts = to_kind(torch.tensor([float(s) for s in sizes], dtype=torch.float64), kind)
    n, mu, m2 = bn.combine_moments(counts, xp.stack([s[0] for s in stats]),
                                   xp.stack([s[1] for s in stats]))
    whole_mean, whole_m2 = bn.moments(x)
    assert float(n) == x.shape[0]
    assert_close(mu, whole_mean, "combined mean", **TIGHT)
    assert_close(m2, whole_m2, "combined M2", rtol=1e-10, atol=1e-10)


def test_backward_from_global_sums_equals_whole_batch():
    """The distributed backward: each part computes its sums, they are added (all-reduce),
    and each part's dx from the global sums is that part's rows of the whole batch's dx."""
    x, w, b, dy = inputs(m=12)
    y, cache, mean, var = bn.forward(x, w, b)
    dx_whole, _, _ = bn.backward(dy, cache)
    rows = [slice(0, 5), slice(5, 12)]
    caches = [bn.Cache(cache.x[r], cache.mean, cache.rstd, w, True, True) for r in rows]
    sums = [bn.sums(dy[r], c) for r, c in zip(rows, caches)]
    sum_dy = sums[0][0] + sums[1][0]
    sum_dy_xhat = sums[0][1] + sums[1][1]
    for r, c in zip(rows, caches):
        dx = bn.dx_from_sums(dy[r], c, sum_dy, sum_dy_xhat, 12)
        assert_close(dx, dx_whole[r], f"dx rows {r}", **TIGHT)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0, 0.37])
def test_update_running_matches_torch_batchnorm1d(kind, momentum):
    x = randn(9, 5, seed=9, scale=3.0, shift=-1.0)
    theirs = torch.nn.BatchNorm1d(5, momentum=momentum, dtype=torch.float64)
    theirs.running_mean.copy_(randn(5, seed=10))
    theirs.running_var.copy_(randn(5, seed=11).abs() + 0.5)
    rm, rv = to_kind(theirs.running_mean, kind), to_kind(theirs.running_var, kind)
    rm0, rv0 = as64(rm).copy(), as64(rv).copy()
    theirs(x)
    _, _, mean, var = bn.forward(to_kind(x, kind))
    new_mean, new_var = bn.update_running(rm, rv, mean, var, 9, momentum)
    assert_close(new_mean, theirs.running_mean, "running_mean", **TIGHT)
    assert_close(new_var, theirs.running_var, "running_var (unbiased)", **TIGHT)
    np.testing.assert_array_equal(as64(rm), rm0, err_msg="running_mean argument modified")
    np.testing.assert_array_equal(as64(rv), rv0, err_msg="running_var argument modified")


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nothing_passed_in_is_modified(kind):
    x, w, b, dy = (to_kind(t, kind) for t in inputs())
    before = [as64(t).copy() for t in (x, w, b, dy)]
    _, cache, _, _ = bn.forward(x, w, b)
    kept = {name: as64(getattr(cache, name)).copy() for name in ("x", "mean", "rstd")}
    bn.backward(dy, cache)
    for i, (p, t) in enumerate(zip(before, (x, w, b, dy))):
        np.testing.assert_array_equal(p, as64(t), err_msg=f"argument {i} was modified")
    for name, value in kept.items():
        np.testing.assert_array_equal(value, as64(getattr(cache, name)),
                                      err_msg=f"cache.{name} modified")



@pytest.mark.parametrize("batch_stats", [True, False], ids=["batch", "fixed"])
def test_writing_over_its_own_arrays_gives_the_new_array_numbers(batch_stats):
    """Outside a graph the op writes each step over its own arrays (``_xp.reuse``); while
    autograd records, every step makes a new array. Both give the same numbers, for the
    forward, the backward and the distributed pieces; nothing passed in is modified."""
    x, w, b, dy = inputs()
    stats = {} if batch_stats else {"mean": randn(6, seed=5), "var": randn(6, seed=6).abs() + 0.1}
    before = [t.clone() for t in (x, w, b, dy)]

    def run():
        y, cache, mean, var = bn.forward(x, w, b, 1e-5, batch_stats=batch_stats, **stats)
        part = bn.Cache(cache.x[4:], cache.mean, cache.rstd, w, True, batch_stats)
        sum_dy, sum_dy_xhat = bn.sums(dy[4:], part)
        dx_part = bn.dx_from_sums(dy[4:], part, sum_dy, sum_dy_xhat, 9)
        return (y, *bn.backward(dy, cache), mean, var, *bn.moments(x), sum_dy, sum_dy_xhat,
                dx_part)

    with torch.no_grad():
        reused = run()
    fresh = run()
    names = ("y", "dx", "dw", "db", "mean", "var", "moments mean", "M2", "sum(dy)",
             "sum(dy xhat)", "dx from sums")
    for name, one, other in zip(names, reused, fresh):
        assert_same(one, other, f"reused vs new arrays: {name}")
    for i, (p, t) in enumerate(zip(before, (x, w, b, dy))):
        assert torch.equal(p, t), f"argument {i} was modified"
