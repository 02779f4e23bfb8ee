"""The few array functions the ops need, for NumPy arrays and torch tensors alike.

NumPy 2 and torch both follow the array API for what the ops use (``mean``, ``sum``,
``sqrt``, ``where`` with ``axis=`` / ``keepdims=``, in-place operators), so ``namespace``
returns the module itself. Only the spellings that differ live here.
"""
from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any

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


# --- writing into buffers the op made itself ------------------------------------------------
#
# On a CPU, what a norm costs is mostly how many full-size arrays it allocates and walks
# through: a fresh 16 MB array costs page faults, an in-place pass over one that is already
# there costs a fraction of that. So the ops update their *own* temporaries in place. Never
# the caller's arrays, and never while torch records a graph: under
# ``backward(create_graph=True)`` grad mode is on and autograd may have saved the buffer for
# the double backward, so there every helper below falls back to a fresh array.

def may_overwrite(a: Array) -> bool:
    """May an op write into ``a``, a buffer it created itself? Always for NumPy; for torch
    only while autograd is not recording, never under torch.compile (a graph of pure array
    expressions is what the compiler fuses into one loop, ``nn._compile``) and never inside
    a torch.func transform (its batched tensors take no ``out=``)."""
    return not is_torch(a) or not (torch.is_grad_enabled() or _compiling() or transforming())


_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
_peek = getattr(getattr(getattr(torch, "_C", None), "_functorch", None), "peek_interpreter_stack",
                lambda: None)


def transforming() -> bool:
    """Inside torch.func.vmap / grad / jacrev (a functorch interpreter is on the stack)."""
    return _peek() is not None


def imul(a: Array, b: Array) -> Array:
    """a * b, written into ``a`` where allowed."""
    if may_overwrite(a):
        a *= b
        return a
    return a * b


def iadd(a: Array, b: Array) -> Array:
    """a + b, written into ``a`` where allowed."""
    if may_overwrite(a):
        a += b
        return a
    return a + b


def isub(a: Array, b: Array) -> Array:
    """a - b, written into ``a`` where allowed."""
    if may_overwrite(a):
        a -= b
        return a
    return a - b


def sub(a: Array, b: Array, out: Array | None = None) -> Array:
    """a - b, written into ``out`` (an op's own buffer) where allowed."""
    if out is not None and may_overwrite(out):
        return namespace(a).subtract(a, b, out=out)
    return a - b


def mul(a: Array, b: Array, out: Array | None = None) -> Array:
    """a * b, written into ``out`` (an op's own buffer) where allowed."""
    if out is not None and may_overwrite(out):
        return namespace(a).multiply(a, b, out=out)
    return a * b


def addcmul(c: Array, a: Array, b: Array, out: Array | None = None) -> Array:
    """c + a * b in one pass, written into ``out`` (an op's own buffer) where allowed.

    ``out`` may be ``c`` itself; it must not be ``a`` or ``b`` unless they have its shape."""
    if is_torch(a):
        if out is not None and may_overwrite(out):
            if out is c:
                return out.addcmul_(a, b)
            return torch.addcmul(c, a, b, out=out)
        return torch.addcmul(c, a, b)
    if out is None:
        out = a * b
    elif out is c:
        out += a * b
        return out
    else:
        np.multiply(a, b, out=out)
    out += c
    return out


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
    n = a.shape[axis]
    if ms is None:
        with overflow_ok(a):
            ms = sumsq(a) / n if axis == -1 else sum_rows(a * a) / n
    rstd = 1.0 / xp.sqrt(ms + eps)
    over = xp.isinf(ms)
    if not _always(a) and not bool(over.any()):
        return rstd
    keep = axis == -1
    big = xp.abs(a.detach() if is_torch(a) else a)          # s is a constant for autograd
    s = big.amax(axis, keepdim=keep) if is_torch(a) else big.max(axis, keepdims=keep)
    inv = 1.0 / xp.where(s > 0, s, xp.ones_like(s))        # (rows of zeros never overflow)
    t = a * inv
    ms_s = sumsq(t) / n if keep else sum_rows(t * t) / n
    return xp.where(over & (s < float("inf")), inv / xp.sqrt(ms_s + eps * inv * inv), rstd)


def _always(a: Array) -> bool:
    """Must ``inv_rms`` compute the scaled r without looking whether a row overflowed?"""
    return is_torch(a) and (a.device.type != "cpu" or _compiling() or transforming())


# An array-at-a-time op is bound by memory traffic: each pass over an array larger than the
# cache streams it from DRAM again. Splitting the rows into blocks that fit in the cache
# (x, dy and the output together) lets the passes over a block hit the cache. Measured for
# LayerNorm forward + backward at 4096 x 1024 float32 on a 2-core EPYC (32 MB L3): 8.2 ms
# in one block, 7.0 ms in 8 MB blocks; smaller blocks lose it again to per-call overhead.
BLOCK_BYTES = 8 << 20


def row_blocks(a: Array, block_bytes: int | None = None) -> list[slice]:
    """Slices of the rows of ``a`` (M, n), each about ``block_bytes`` (default
    ``BLOCK_BYTES``) large, in order; one slice (all of them) where the op may not write
    into its own buffers."""
    m = a.shape[0]
    row_bytes = max(1, a.shape[-1] * a.dtype.itemsize)
    step = max(1, (BLOCK_BYTES if block_bytes is None else block_bytes) // row_bytes)
    if m <= step or not may_overwrite(a):
        return [slice(0, m)]
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]


def empty_like(a: Array) -> Array:
    return namespace(a).empty_like(a)


def concat(parts: list[Array]) -> Array:
    """Join arrays along axis 0; the one array itself if there is one."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts) if is_torch(parts[0]) else np.concatenate(parts)


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
