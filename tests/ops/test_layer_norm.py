"""ops.layer_norm on NumPy arrays and on torch tensors, against torch autograd in float64.

The op normalises over the last axis only (callers flatten ``normalized_shape``), so the
reference is ``torch.nn.functional.layer_norm(x, (n,), ...)`` differentiated by autograd.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from fromscratch.ops import _xp
from fromscratch.ops import layer_norm as ln
from tests._compare import as64, assert_close, assert_same, randn, upstream

TIGHT = {"rtol": 1e-10, "atol": 1e-12}     # float64, well-conditioned rows
AFFINE = {"weight+bias": (True, True), "weight": (True, False), "bias": (False, True),
          "none": (False, False)}
SHAPES = [(6, 37), (2, 3, 10), (5, 1)]


def inputs(shape, affine, eps_row=True):
    n = shape[-1]
    x = randn(*shape, seed=0, shift=0.5)
    if eps_row and x.shape[0] > 1:
        x[0] *= 1e-3                       # a row whose variance is below eps: eps matters
    w = randn(n, seed=2, shift=1.0) if affine[0] else None
    b = randn(n, seed=3) if affine[1] else None
    return x, w, b, upstream(shape, torch.float64)


def reference(x, w, b, dy, eps):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = TF.layer_norm(leaves[0], (x.shape[-1],), leaves[1], leaves[2], eps)
    y.backward(dy)
    return y.detach(), *(t.grad if t is not None else None for t in leaves)


def to_kind(t, kind):
    if t is None:
        return None
    return t.numpy().copy() if kind == "numpy" else t.clone()


def run(kind, x, w, b, dy, eps):
    y, cache = ln.forward(to_kind(x, kind), to_kind(w, kind), to_kind(b, kind), eps)
    dx, dw, db = ln.backward(to_kind(dy, kind), cache)
    return y, dx, dw, db


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("affine", AFFINE.values(), ids=AFFINE.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch_autograd_float64(kind, affine, shape):
    x, w, b, dy = inputs(shape, affine)
    mine = run(kind, x, w, b, dy, 1e-5)
    ref = reference(x, w, b, dy, 1e-5)
    for name, m, r in zip(("y", "dx", "dweight", "dbias"), mine, ref):
        if r is None:
            assert m is None, f"{name}: expected None without the parameter, got an array"
            continue
        assert type(m) is (np.ndarray if kind == "numpy" else torch.Tensor)
        assert_close(m, r, f"{kind} {name}", **TIGHT)


@pytest.mark.parametrize("affine", AFFINE.values(), ids=AFFINE.keys())
def test_numpy_and_torch_give_the_same_numbers(affine):
    x, w, b, dy = inputs((7, 23), affine)
    for name, a, t in zip(("y", "dx", "dweight", "dbias"), run("numpy", x, w, b, dy, 1e-5),
                          run("torch", x, w, b, dy, 1e-5)):
        if a is None:
            assert t is None
            continue
        assert_same(a, t, name)


@pytest.mark.parametrize("eps", [1e-5, 1e-2, 0.0])
def test_eps_is_the_one_given(eps):
    x, w, b, dy = inputs((4, 9), (True, True))
    for name, m, r in zip(("y", "dx", "dw", "db"), run("torch", x, w, b, dy, eps),
                          reference(x, w, b, dy, eps)):
        assert_close(m, r, f"eps={eps} {name}", rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nothing_passed_in_is_modified(kind):
    """forward leaves x, w, b alone; backward leaves dy and the cache alone (it works in
    place on buffers it made itself, which a fast version is tempted to get wrong)."""
    x, w, b, dy = (to_kind(t, kind) for t in inputs((5, 8), (True, True)))
    for wb in ((w, b), (None, None)):
        before = [as64(t).copy() for t in (x, *wb, dy) if t is not None]
        y, cache = ln.forward(x, *wb, 1e-5)
        kept = {name: as64(getattr(cache, name)).copy() for name in ("x", "mean", "rstd")}
        ln.backward(dy, cache)
        after = [as64(t) for t in (x, *wb, dy) if t is not None]
        for i, (p, q) in enumerate(zip(before, after)):
            np.testing.assert_array_equal(p, q, err_msg=f"argument {i} was modified")
        for name, value in kept.items():
            np.testing.assert_array_equal(value, as64(getattr(cache, name)),
                                          err_msg=f"cache.{name} modified")


def test_float32_stays_float32_and_is_accurate():
    x, w, b, dy = inputs((6, 37), (True, True))
    x32, w32, b32, dy32 = (t.numpy().astype(np.float32) for t in (x, w, b, dy))
    y, cache = ln.forward(x32, w32, b32, 1e-5)
    dx, dw, db = ln.backward(dy32, cache)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float32
    ref = reference(*(torch.from_numpy(t).double() for t in (x32, w32, b32, dy32)), eps=1e-5)
    for name, m, r, atol in zip(("y", "dx", "dw", "db"), (y, dx, dw, db), ref,
                                (1e-5, 1e-5, 1e-4, 1e-4)):
        assert_close(m, r, f"float32 {name}", rtol=1.3e-6, atol=atol)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_zero_rows(kind):
    x = to_kind(torch.zeros(0, 5, dtype=torch.float64), kind)
    w = to_kind(torch.ones(5, dtype=torch.float64), kind)
    b = to_kind(torch.zeros(5, dtype=torch.float64), kind)
    y, cache = ln.forward(x, w, b)
    dx, dw, db = ln.backward(to_kind(torch.zeros(0, 5, dtype=torch.float64), kind), cache)
    assert tuple(y.shape) == tuple(dx.shape) == (0, 5)
    np.testing.assert_array_equal(as64(dw), np.zeros(5))
    np.testing.assert_array_equal(as64(db), np.zeros(5))


@pytest.mark.parametrize("affine", AFFINE.values(), ids=AFFINE.keys())
def test_writing_over_its_own_arrays_gives_the_new_array_numbers(affine):
    """Outside a graph the op writes each step over its own arrays (``_xp.reuse``); while
    autograd records, every step makes a new array. Both give the same numbers, and
    neither modifies what was passed in."""
    x, w, b, dy = inputs((13, 6), affine)

    def run_here():
        y, cache = ln.forward(x, w, b, 1e-5)
        return (y, *ln.backward(dy, cache))

    before = [t.clone() for t in (x, w, b, dy) if t is not None]
    with torch.no_grad():
        assert _xp.reuse(x) is x
        reused = run_here()
    assert _xp.reuse(x) is None
    fresh = run_here()
    for name, one, other in zip(("y", "dx", "dw", "db"), reused, fresh):
        if one is None:
            assert other is None, name
        else:
            assert_same(one, other, f"reused vs new arrays: {name}")
    for i, (p, t) in enumerate(zip(before, (t for t in (x, w, b, dy) if t is not None))):
        assert torch.equal(p, t), f"argument {i} was modified"


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("affine", AFFINE.values(), ids=AFFINE.keys())
@pytest.mark.parametrize("rows", [13, 12], ids=["short-last-block", "even-blocks"])
def test_row_blocks_give_the_one_block_numbers(kind, affine, rows, monkeypatch):
    """Blocks of 3 rows (3, 3, 3, 3, 1 of 13, or four of 12; ``_xp.in_cache_blocks``)
    equal one pass over all rows, and nothing passed in is modified."""
    x, w, b, dy = (to_kind(t, kind) for t in inputs((rows, 6), affine))

    def run_here():
        y, cache = ln.forward(x, w, b, 1e-5)
        return (y, *ln.backward(dy, cache))

    before = [as64(t).copy() for t in (x, w, b, dy) if t is not None]
    with torch.no_grad():
        whole = run_here()
        monkeypatch.setattr(_xp, "BLOCK_BYTES", 3 * 6 * 8)       # three float64 rows of 6
        seen = []
        real = ln._forward
        monkeypatch.setattr(ln, "_forward", lambda x, *a: seen.append(len(x)) or real(x, *a))
        blocked = run_here()
    assert seen[:2] == [3, 3]                                      # it did block
    for name, one, many in zip(("y", "dx", "dw", "db"), whole, blocked):
        if one is None:
            assert many is None, name
        else:
            assert_close(many, one, f"{kind} blocked {name}", rtol=1e-12, atol=1e-13)
    for i, (p, t) in enumerate(zip(before, (t for t in (x, w, b, dy) if t is not None))):
        np.testing.assert_array_equal(p, as64(t), err_msg=f"argument {i} was modified")
