"""The dtypes of the Functions: fp16/bf16 computed in float32 and cast back once.

The ops choose no dtype themselves; the Functions hand them ``up(x)`` (float32 for fp16 and
bf16, the tensor's own otherwise) and cast what comes back to the input's (``down``,
``output``), with autocast off (``own_dtypes``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch


def _autocasting(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:                       # a device autocast does not know (meta)
        return False


def own_dtypes(fn: Callable) -> Callable:
    """Run a Function's forward or backward with autocast off on its tensors' device.

    The ops choose their dtypes themselves (float32 maths for fp16/bf16, the input's dtype
    out). Under ``torch.autocast`` their row dots, a matmul, would be cast to bf16/fp16:
    a backward run inside an autocast region (on the CPU it runs in the caller's thread)
    would lose dx's digits to half-precision statistics."""
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if t is None or not _autocasting(t.device.type):
            return fn(*args)
        with torch.autocast(t.device.type, enabled=False):
            return fn(*args)
    return wrapper


def up(t: torch.Tensor | None) -> torch.Tensor | None:
    """The compute dtype: float32 for fp16/bf16, the tensor's own otherwise."""
    if t is not None and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def down(t: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    """t in ``like``'s dtype; None where either is None (a parameter that is not there)."""
    return None if t is None or like is None else t.to(like.dtype)


def cast(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A forward's output y in ``dtype``, with no ``.to`` where y has it already. Not only
    thrift: under torch 2.11's torch.compile a Function whose forward returned
    ``y.to(y.dtype)`` (a no-op that returns y itself) got all-zero gradients."""
    return y if y.dtype == dtype else y.to(dtype)


def output(y: torch.Tensor, dtype: torch.dtype, saved: torch.Tensor) -> torch.Tensor:
    """y in ``dtype``, never the saved tensor itself: RMSNorm without a weight returns
    xhat, which its backward keeps, and an in-place op on the output (ReLU(inplace=True))
    would corrupt it. (LayerNorm and BatchNorm keep x, mean and rstd: y is never saved.)"""
    out = cast(y, dtype)
    return out.clone() if out is saved else out
