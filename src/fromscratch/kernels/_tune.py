"""Choose a launch configuration by timing a few candidates, once per problem size.

The first call for a key (kernel, hidden size, dtypes, row-count bucket) launches every
candidate on the real tensors, times them with CUDA events and keeps the fastest; later
calls reuse it. This is what ``triton.autotune`` does, kept here in a dozen lines so the
same code runs under the interpreter (where the first candidate is used, untimed).

Only kernels that are pure functions of their inputs are tuned (running them several
times writes the same outputs). ``FROMSCRATCH_TUNE=0`` turns tuning off.
"""
from __future__ import annotations

import os
from typing import Callable, Hashable, Sequence, TypeVar

import torch

from ._common import interpreting

C = TypeVar("C")

_chosen: dict[Hashable, object] = {}
ENABLED = os.environ.get("FROMSCRATCH_TUNE", "1") != "0"


def _can_time(device: torch.device) -> bool:
    if not ENABLED or interpreting() or device.type != "cuda":
        return False
    if torch.cuda.is_current_stream_capturing():
        return False
    compiling = getattr(torch.compiler, "is_compiling", None)
    return not (compiling is not None and compiling())


def choose(key: Hashable, candidates: Sequence[C], launch: Callable[[C], None],
           device: torch.device, reps: int = 5) -> C:
    """The candidate with the smallest time for ``launch(candidate)`` (the first if untimed)."""
    if key in _chosen:
        return _chosen[key]  # type: ignore[return-value]
    if len(candidates) == 1 or not _can_time(device):
        return candidates[0]
    for c in candidates:                      # compile and warm every candidate first
        launch(c)
    best, best_ms = candidates[0], float("inf")
    for c in candidates:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(reps):
            start.record()
            launch(c)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        ms = min(times)
        if ms < best_ms:
            best, best_ms = c, ms
    _chosen[key] = best
    return best


def chosen() -> dict[Hashable, object]:
    """Every configuration picked so far (the benchmark prints them)."""
    return dict(_chosen)


def rows_bucket(m: int) -> int:
    """Row counts within a factor of two share a tuned configuration."""
    return int(m).bit_length()
