"""``backend="compile"``: the ops' own forward and backward, fused by torch.compile.

The ops are formulas over whole arrays, one array at a time: LayerNorm's forward and
backward walk x-sized memory 17 times where torch's C++ kernel walks it once per direction
(``benchmarks/cpu_passes.py``), each array operation a pass of its own. torch.compile
(Inductor) turns the very same functions into fused loops: no second formula is written.
While it traces, the ops write no buffer in place (``ops._xp.may_overwrite``), so what it
sees is a graph of pure array expressions, the form it fuses.

The price: each new shape, dtype or parameter layout compiles on its first call (seconds),
and on a CPU Inductor needs a C++ compiler. The double-backward path (``create_graph=True``)
and SyncBatchNorm's distributed path run the eager ops.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable, NamedTuple

import torch

from ..ops import batch_norm, layer_norm, rms_norm


OPS: dict[str, ModuleType] = {"layer_norm": layer_norm, "rms_norm": rms_norm,
                             "batch_norm": batch_norm}


class Compiled(NamedTuple):
    """An op's forward and backward compiled, called as the ops module's own."""
    forward: Callable[..., Any]
    backward: Callable[..., Any]


Ops = ModuleType | Compiled   # what the autograd.Functions call .forward/.backward on


def ops(name: str, backend: str) -> Ops:
    """The ops module of ``name`` itself, or (``backend="compile"``) its compiled functions."""
    return compiled(name) if backend == "compile" else OPS[name]


@functools.lru_cache(maxsize=None)
def compiled(name: str) -> Compiled:
    module = OPS[name]
    return Compiled(*(_compile(f, f"ops.{name}.{f.__name__}")
                      for f in (module.forward, module.backward)))


def _compile(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    fused = torch.compile(fn, fullgraph=True)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fused(*args, **kwargs)
        except Exception as e:  # torch's compile errors come in many types
            raise RuntimeError(
                f"backend='compile': torch.compile failed on {name} ({type(e).__name__}; on a "
                "CPU it needs a working C++ compiler). backend='torch' runs the same formula "
                "uncompiled") from e
    return run
