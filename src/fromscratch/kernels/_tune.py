"""Choose a launch configuration by timing a few candidates, once per problem size.

The first call for a key (kernel, hidden size, dtypes, row-count bucket) launches every
candidate on the real tensors, times them with CUDA events (interleaved rounds, cold L2,
median) and keeps the fastest; later calls reuse it. This is what ``triton.autotune``
does, kept here in a few lines so the same code runs under the interpreter (where the
first candidate is used, untimed).

Only kernels that are pure functions of their inputs are tuned (running them several
times writes the same outputs). ``FROMSCRATCH_TUNE=0`` turns tuning off.
"""
from __future__ import annotations

import os
import statistics
from typing import Callable, Hashable, Sequence, TypeVar

import torch

from ._common import interpreting

C = TypeVar("C")

_chosen: dict[Hashable, object] = {}
_timings: dict[Hashable, list[float]] = {}
ENABLED = os.environ.get("FROMSCRATCH_TUNE", "1") != "0"


def _can_time(device: torch.device) -> bool:
    if not ENABLED or interpreting() or device.type != "cuda":
        return False
    if torch.cuda.is_current_stream_capturing():
        return False
    compiling = getattr(torch.compiler, "is_compiling", None)
    return not (compiling is not None and compiling())


_flush: dict[torch.device, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    """Overwrite 256 MiB (several times any L2) so every candidate starts from a cold cache,
    as ``triton.testing.do_bench`` does and as the kernels run in a real step."""
    buf = _flush.get(device)
    if buf is None:
        buf = _flush[device] = torch.empty(64 * 2**20, dtype=torch.int32, device=device)
    buf.zero_()


def choose(key: Hashable, candidates: Sequence[C], launch: Callable[[C], None],
           device: torch.device, reps: int = 7) -> C:
    """The candidate with the smallest median time for ``launch(candidate)`` (the first if
    untimed). Every candidate is compiled and run once first; then the candidates are timed
    in ``reps`` interleaved rounds, each launch after an L2 flush, so that a clock change or
    a burst of other work during the rounds falls on all of them alike, and the median
    ignores a few slow launches. A candidate wins only when it beats the first (the
    default) by more than 2 %: measurements closer than that are not told apart."""
    if key in _chosen:
        return _chosen[key]  # type: ignore[return-value]
    if len(candidates) == 1 or not _can_time(device):
        return candidates[0]
    for c in candidates:                      # compile and warm every candidate first
        launch(c)
    events = [[] for _ in candidates]
    for _ in range(reps):
        for i, c in enumerate(candidates):
            _flush_l2(device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            launch(c)
            end.record()
            events[i].append((start, end))
    torch.cuda.synchronize(device)
    medians = [statistics.median(s.elapsed_time(e) for s, e in ev) for ev in events]
    best = min(range(len(candidates)), key=medians.__getitem__)
    if medians[best] > 0.98 * medians[0]:
        best = 0
    _chosen[key] = candidates[best]
    _timings[key] = medians
    return candidates[best]


def timings() -> dict[Hashable, list[float]]:
    """The median milliseconds of every candidate, per key, as measured by ``choose``."""
    return dict(_timings)


def chosen() -> dict[Hashable, object]:
    """Every configuration picked so far (the benchmark prints them)."""
    return dict(_chosen)


def rows_bucket(m: int) -> int:
    """Row counts within a factor of two share a tuned configuration."""
    return int(m).bit_length()
