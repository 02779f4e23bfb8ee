"""Which implementation runs: the Triton kernels, the ``ops`` reference through torch, or
the ``ops`` compiled by torch.compile.

``backend="auto"`` takes the kernels for CUDA tensors of float32/float16/bfloat16 when
triton imports, and the reference otherwise (CPU, float64, no triton). ``"triton"`` insists
on the kernels: on CPU tensors they run in Triton's interpreter, which has to be switched
on with ``TRITON_INTERPRET=1`` before the first import (that is how the tests run them).
``"torch"`` always runs the reference; ``"compile"`` runs the reference's own functions
through torch.compile, fused (``fromscratch.autograd.compiled``; Dropout runs its two eager passes).
This module imports nothing heavy: triton is only imported once a kernel is actually wanted.
"""
from __future__ import annotations

import torch


BACKENDS = ("auto", "triton", "torch", "compile")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")
    return backend


_triton: list[bool] = []     # filled on the first call (a plain list: torch.compile traces this)


def triton_available() -> bool:
    if not _triton:
        try:
            import triton  # noqa: F401
            _triton.append(True)
        except ImportError:
            _triton.append(False)
    return _triton[0]


_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def in_func_transform() -> bool:
    """Inside torch.func.vmap / grad / jacrev, asked as ``torch.autograd.Function.apply``
    asks it: false while torch.compile traces, so a compiled model still gets the kernels.
    (``ops._xp`` asks another question, whether functorch's interpreter stack holds
    anything, which torch.compile's tracing also makes true: there it decides whether an
    op may write in place.)"""
    return _active()


def _on_gpu(t: torch.Tensor) -> bool:
    """Whether ``t`` lives where "auto" takes the kernels (``benchmarks/host_overhead.py``
    swaps this to time the GPU's path with CPU tensors)."""
    return t.is_cuda


def use_kernels(op: str, backend: str, input: torch.Tensor, **params: torch.Tensor | None) -> bool:
    """True when ``op`` on ``input`` (with its named tensor ``params``) should run the kernels.

    ``"triton"`` raises a clear error instead of returning False when it cannot run. Inside
    a torch.func transform (vmap, grad) "auto" takes the reference, which supports them."""
    if backend == "auto" or backend == "triton":
        # the usual case, decided in a few checks (this runs on every call)
        fits = (_on_gpu(input) and input.dtype in _DTYPES and triton_available()
                and not in_func_transform()
                and all(t is None or (t.device == input.device and t.dtype in _DTYPES)
                        for t in params.values()))
        if fits or backend == "auto":
            return fits
    check_backend(backend)
    if backend in ("torch", "compile"):
        return False
    named = {"input": input, **{k: v for k, v in params.items() if v is not None}}
    if in_func_transform():
        raise RuntimeError(f"{op}: backend='triton' does not support torch.func transforms "
                           "(vmap, grad, jacrev); use backend='auto' or 'torch' there")
    if not triton_available():
        raise RuntimeError(f"{op}: backend='triton' needs the triton package "
                           "(pip install 'fromscratch[kernels]'); or use backend='torch'")
    from ._common import check_dtype, interpreting, same_device
    device = same_device(op, *named.values())
    for name, t in named.items():
        check_dtype(op, t, name)
    if device.type == "cpu" and not interpreting():
        raise RuntimeError(f"{op}: backend='triton' on CPU tensors runs Triton's interpreter, "
                           "which must be switched on before triton is first imported: set "
                           "TRITON_INTERPRET=1 in the environment")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{op}: backend='triton' runs on CUDA tensors (or CPU under "
                           f"TRITON_INTERPRET=1), got a tensor on {device}")
    return True
