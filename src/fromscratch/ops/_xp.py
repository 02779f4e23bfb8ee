"""The few array functions the ops need, for NumPy arrays and torch tensors alike.

NumPy 2 and torch both follow the array API for what the ops use (``mean``, ``sum``,
``sqrt``, ``where``, ``subtract`` / ``multiply`` with ``out=``, ``axis=`` / ``keepdims=``),
so ``namespace`` returns the module itself. Here live the spellings that differ, the
reductions the formulas name (``row_mean``, ``mean_square``, ``inv_rms``, ``sum_rows``) and
the two memory tricks of the eager CPU path, each one helper: ``reuse`` (write a step's
result over an array the op no longer needs) and ``in_cache_blocks`` (LayerNorm's rows in
cache-sized blocks).
"""
from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any, Callable

import numpy as np

try:  # torch is optional for the NumPy engine
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

Array = Any  # numpy.ndarray | torch.Tensor


def is_torch(x: Array) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def namespace(x: Array) -> ModuleType:
    """``numpy`` or ``torch``: the module whose functions apply to ``x``."""
    return torch if is_torch(x) else np


def vecdot(a: Array, b: Array, axis: int = -1) -> Array:
    """sum(a * b) along ``axis`` without materialising the product."""
    if is_torch(a):
        return torch.linalg.vecdot(a, b, dim=axis)
    return np.vecdot(a, b, axis=axis)


def matvec(a: Array, v: Array) -> Array:
    """a @ v: each row of ``a`` dotted with ``v``. Eagerly a BLAS gemv; under torch.compile
    the same sum spelled as a reduction, which the compiler fuses with the pass that
    produced ``a`` (a library call would make it write ``a`` out first)."""
    if is_torch(a) and _compiling():
        return (a * v).sum(-1)
    return a @ v


def astype(a: Array, dtype: Any) -> Array:
    """``a`` in ``dtype`` (a NumPy dtype for arrays, a torch.dtype for tensors)."""
    return a.to(dtype) if is_torch(a) else a.astype(dtype)


def rows(x: Array, n: int) -> Array:
    """View ``x`` of shape (..., n) as (M, n)."""
    return x.reshape(-1, n)


def addcmul(c: Array, a: Array, b: Array | None, out: Array | None = None) -> Array:
    """c + a * b (c + a without ``b``), into ``out`` where given (which may be ``c``): one
    pass in torch (torch.addcmul), a product and a sum in NumPy."""
    if b is None:
        return namespace(a).add(c, a, out=out)
    if is_torch(a):
        return torch.addcmul(c, a, b) if out is None else torch.addcmul(c, a, b, out=out)
    return np.add(c, a * b, out=out)


# --- the first memory trick: writing over the op's own arrays ---------------------------------
#
# On a CPU what a norm costs is mostly how many full-size arrays it allocates and walks
# through: a fresh 16 MB array costs page faults and a pass through cold memory, a pass over
# one the op already has costs a fraction of that. So where a step's input is an array the
# op made itself and needs no more, the step writes its result over it: ``out=reuse(a)``.
# Never over the caller's arrays, and never while torch records a graph: under
# ``backward(create_graph=True)`` grad mode is on and autograd may have saved the array for
# the double backward.

def reuse(a: Array | None) -> Array | None:
    """``a``, an array the op made itself and needs no more, as the ``out=`` of the next step
    (NumPy's and torch's functions alike take ``out=``): the result is written over ``a``,
    which saves allocating (and faulting in) a new full-size array. None, a new array, where
    ``may_overwrite`` says no (or ``a`` is None)."""
    return a if a is not None and may_overwrite(a) else None


def may_overwrite(a: Array) -> bool:
    """May an op write into ``a``, an array it created itself? Always for NumPy; for torch
    only while autograd is not recording, never under torch.compile (a graph of pure array
    expressions is what the compiler fuses into one loop) and never inside a torch.func
    transform (its batched tensors take no ``out=``)."""
    return not is_torch(a) or not (torch.is_grad_enabled() or _compiling() or functorch_stack())


_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
_peek = getattr(getattr(getattr(torch, "_C", None), "_functorch", None), "peek_interpreter_stack",
                lambda: None)


def functorch_stack() -> bool:
    """A functorch interpreter is on the stack: inside torch.func.vmap / grad / jacrev, and
    also while torch.compile traces. Either way an op must not write in place, and the
    front-ends take the transform-ready form of their Functions. (``kernels.dispatch.
    in_func_transform`` asks as autograd.Function.apply does, false while compiling.)"""
    return _peek() is not None


# --- the second memory trick: rows in cache-sized blocks --------------------------------------
#
# A pass over an array larger than the cache streams it from memory again. The rows of
# LayerNorm are independent, so its formulas can run on a block of rows at a time: a block
# of x, of dy and of the op's one array fit in the cache together, and every pass after the
# first over a block hits the cache. Measured for LayerNorm forward + backward at
# 4096 x 1024 float32 on a 2-core EPYC (32 MB L3): 8.2 ms in one block, 7.0 ms in 8 MB
# blocks; smaller blocks lose it again to per-call overhead.
BLOCK_BYTES = 8 << 20


def in_cache_blocks(f: Callable[..., tuple[Array | None, ...]], *rows: Array
                    ) -> tuple[Array | None, ...]:
    """``f(*rows, out=...)``, a row-wise function, computed on blocks of about
    ``BLOCK_BYTES`` of rows (every array of ``rows`` cut along axis 0), which saves passes
    through memory. ``f`` writes its first output into ``out`` (a block of one new array
    shaped like ``rows[0]``); its other outputs are per-row (as many axes as ``rows[0]``:
    joined) or column sums (fewer axes: added up over the blocks) or None. One call with
    ``out=None`` where there is one block, or where the op may not write into its own
    arrays (``may_overwrite``)."""
    x = rows[0]
    if not may_overwrite(x):                    # (torch.compile: x's size may be symbolic)
        return f(*rows, out=None)
    m = x.shape[0] if x.ndim > 1 else 1
    step = max(1, BLOCK_BYTES * m // max(1, x.nbytes))
    if m <= step:
        return f(*rows, out=None)
    out = namespace(x).empty_like(x)
    parts = [f(*(a[i:i + step] for a in rows), out=out[i:i + step])[1:]
             for i in range(0, m, step)]
    return (out, *(_join(p, x.ndim) for p in zip(*parts)))


def _join(parts: tuple[Array | None, ...], ndim: int) -> Array | None:
    """The blocks' per-row outputs joined along axis 0, their column sums added up."""
    if parts[0] is None:
        return None
    if parts[0].ndim < ndim:
        return sum(parts[1:], parts[0])
    return torch.cat(parts) if is_torch(parts[0]) else np.concatenate(parts)


# --- the reductions the formulas name -------------------------------------------------------

def row_mean(a: Array, w: Array | None = None) -> Array:
    """mean(a * w) over the last axis, kept as (..., 1); mean(a) without ``w``. With ``w``
    it is (a @ w) / n, a matrix-vector product over all rows that never forms a * w
    (layer_norm.md, eq. 9)."""
    if w is None:
        return namespace(a).mean(a, axis=-1, keepdims=True)
    return matvec(a, w)[..., None] / a.shape[-1]


def mean_square(a: Array, axis: int = -1) -> Array:
    """mean(a^2) along ``axis``: -1 per row, kept as (..., 1); 0 per column of an (M, C)
    array, shape (C,). Where a square overflows the result is inf without NumPy's warning:
    ``inv_rms`` then scales the row."""
    with overflow_ok(a):
        return sumsq(a) / a.shape[-1] if axis == -1 else sum_rows(a * a) / a.shape[0]


def sumsq(a: Array) -> Array:
    """sum(a^2) over the last axis, keeping it, without materialising a^2 where the library
    can (torch's vector norm reads ``a`` once)."""
    if is_torch(a) and not (torch.is_grad_enabled() and a.requires_grad):
        return torch.linalg.vector_norm(a, dim=-1, keepdim=True).square()
    return vecdot(a, a)[..., None]          # differentiable twice, also where a = 0


def overflow_ok(a: Array) -> contextlib.AbstractContextManager[Any]:
    """Where squares may overflow and ``inv_rms`` then scales the row, the answer is right:
    NumPy's "overflow encountered" warning would only alarm the caller (torch never warns)."""
    return contextlib.nullcontext() if is_torch(a) else np.errstate(over="ignore")


def inv_rms(a: Array, eps: float, ms: Array | None = None, axis: int = -1) -> Array:
    r"""r = 1 / sqrt(mean(a^2) + eps) along ``axis`` (-1: per row, kept as (..., 1); 0: per
    column of an (M, C) array, shape (C,)); ``ms`` is mean(a^2) where the caller has it.

    A square overflows long before the normalised a r stops being representable (float32,
    and float16/bfloat16 computed in float32: |a| beyond 1.8e19). mean(a^2) is then inf, r
    is 0 and every output a plausible 0. Such rows are computed again with a scaled by
    s = max|a| (as LAPACK's nrm2 does), the same r in exact arithmetic:

        r = (1/s) / sqrt(mean((a/s)^2) + eps/s^2)          |a/s| <= 1: nothing overflows

    A row holding inf keeps r = 0, as torch's (LayerNorm's row is NaN anyway; RMSNorm's is
    NaN at the inf and 0 elsewhere, as torch.nn.RMSNorm), one holding NaN stays NaN. The
    second computation runs only when a row overflowed; where that check would need a host
    sync or cannot be taken (CUDA, torch.compile, torch.func transforms) both run and
    ``where`` picks, the same numbers.
    """
    xp = namespace(a)
    if ms is None:
        ms = mean_square(a, axis)
    rstd = 1.0 / xp.sqrt(ms + eps)
    over = xp.isinf(ms)
    if not _always(a) and not bool(over.any()):
        return rstd
    keep = axis == -1
    big = xp.abs(a.detach() if is_torch(a) else a)          # s is a constant for autograd
    s = big.amax(axis, keepdim=keep) if is_torch(a) else big.max(axis, keepdims=keep)
    inv = 1.0 / xp.where(s > 0, s, xp.ones_like(s))        # (rows of zeros never overflow)
    ms_s = mean_square(a * inv, axis)
    return xp.where(over & (s < float("inf")), inv / xp.sqrt(ms_s + eps * inv * inv), rstd)


def _always(a: Array) -> bool:
    """Must ``inv_rms`` compute the scaled r without looking whether a row overflowed?"""
    return is_torch(a) and (a.device.type != "cpu" or _compiling() or functorch_stack())


def sum_rows(a: Array) -> Array:
    """Sum over every axis but the last: (..., n) -> (n,), the reduction of dweight/dbias.

    torch sums it as k blocks of rows and then the k partial sums: on a CPU it reduces the
    middle axis of a (k, m/k, n) view faster than the first axis of (m, n) (measured at
    4096 x 1024 float32, 2 threads: about 0.5 ms against 0.65 ms for ``a.sum(0)`` and 0.7 ms
    for ``ones @ a``)."""
    a = rows(a, a.shape[-1])
    if not is_torch(a):
        return np.sum(a, axis=0)
    m = a.shape[0]
    k = next(k for k in (8, 4, 2, 1) if m % k == 0)
    return a.reshape(k, m // k, a.shape[-1]).sum(1).sum(0)
