"""Where the host's time goes inside one forward+backward step, phase by phase.

``timeline(step)`` runs the step many times with marks at its phase boundaries: the step's
start and end, each autograd Function's forward and backward entry and return (our
``kernels.autograd`` Functions and the floor's), and every launch of ours
(``_fast_path.launch`` and a replay's ``RecordedLaunch``; the floor's backward "launches"
where it has allocated its gradient).
It returns the median microseconds of each phase:

    to forward          start -> Function.forward entered: the front-end's checks, dispatch
                        and Function.apply's bookkeeping
    forward to launch   -> the forward's first launch (allocations, the replay's lookup)
    forward rest        -> forward returned (the remaining launches, the hand-over)
    to backward         -> Function.backward entered: apply's work after the forward, the
                        harness's torch.autograd.grad, the engine and, for CUDA tensors, the
                        handoff to autograd's worker thread
    backward to launch  -> the backward's first launch: what the GPU, done with the forward,
                        may be waiting for
    backward launches   -> the backward's last launch
    after backward      -> the step's end: the engine, the handoff back, grad's return

and which thread ran the backward; beside them, the time spent inside our launch calls in
the step (the phases hold it too). Nothing here launches or synchronises anything itself; on
a GPU, run the steps in short rounds with a sync between (``sync``) so that a full launch
queue never blocks a launch and lands in a phase. The marks cost time themselves (about
0.4 us each on the 2-core CPU of RESULTS.md: a marked LayerNorm step, with 10 marks, took
47.4 us where the unmarked one took 43.4), so compare phases with phases, not the total
with an unmarked step's time.
"""
from __future__ import annotations

import contextlib
import statistics
import threading
import time
from typing import Any, Callable, Iterator

from _floor import Floor

PHASES = ("to forward", "forward to launch", "forward rest", "to backward",
          "backward to launch", "backward launches", "after backward")
#: beside the phases: the time spent inside our launch calls (the shortcut's compiled
#: launcher, or Triton's ``kernel[grid]``; on a GPU the driver's launch is in it), summed
IN_LAUNCHES = "in launch calls"
#: what ``timeline`` returns and a table ``row`` shows, in order
COLUMNS = (*PHASES, "total", IN_LAUNCHES)

_clock = time.perf_counter_ns
#: (label, ns, thread ident) of the current step, appended from any thread (list.append is
#: atomic under the GIL)
_events: list[tuple[str, int, int]] = []


def _mark(label: str) -> None:
    _events.append((label, _clock(), threading.get_ident()))


def _wrapped(fn: Callable, before: str, after: str) -> staticmethod:
    def inner(*args: Any) -> Any:
        _mark(before)
        out = fn(*args)
        _mark(after)
        return out
    return staticmethod(inner)


@contextlib.contextmanager
def marked() -> Iterator[None]:
    """Marks in every autograd Function of ``kernels.autograd`` and the floor, and at every
    launch of ours, for the duration (everything is put back after)."""
    import torch

    from fromscratch.kernels import _fast_path, autograd
    classes = [c for c in vars(autograd).values()
               if isinstance(c, type) and issubclass(c, torch.autograd.Function)
               and c.__module__.startswith("fromscratch.kernels.")] + [Floor]
    saved: list[tuple[Any, str, Any]] = []
    for c in classes:
        for name, before, after in (("forward", "forward", "forward end"),
                                    ("backward", "backward", "backward end")):
            saved.append((c, name, vars(c)[name]))
            setattr(c, name, _wrapped(getattr(c, name), before, after))
    run, call = _fast_path.launch, _fast_path.RecordedLaunch.__call__
    saved += [(_fast_path, "launch", run), (_fast_path.RecordedLaunch, "__call__", call)]

    def marked_run(*args: Any, **kwargs: Any) -> Any:
        _mark("launch")
        out = run(*args, **kwargs)
        _mark("launched")
        return out

    def marked_call(self: Any, *args: Any) -> None:
        _mark("launch")
        call(self, *args)
        _mark("launched")
    _fast_path.launch, _fast_path.RecordedLaunch.__call__ = marked_run, marked_call
    on_backward = Floor.on_backward
    saved.append((Floor, "on_backward", on_backward))
    Floor.on_backward = lambda dx: _mark("launch")
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _phases(events: list[tuple[str, int, int]], start: int, end: int,
            caller: int) -> tuple[dict[str, float], bool] | None:
    """One step's phase lengths in us, and whether the backward ran on another thread; None
    when a mark is missing (the step did not go through a marked Function)."""
    at: dict[str, int] = {}
    launches: dict[str, list[int]] = {"forward": [], "backward": []}
    inside = None
    worker = False
    in_launches, began = 0, None
    for label, t, thread in events:
        if label == "launch":
            began = t
        elif label == "launched" and began is not None:
            in_launches, began = in_launches + t - began, None
        if label in ("forward", "backward") and label not in at:
            at[label], inside = t, label
            worker |= label == "backward" and thread != caller
        elif label.endswith(" end") and label not in at:
            at[label], inside = t, None
        elif label == "launch" and inside is not None:
            launches[inside].append(t)
    if len(at) < 4 or not launches["backward"]:
        return None
    fl = launches["forward"][0] if launches["forward"] else None
    bl = launches["backward"]
    us = lambda a, b: None if a is None or b is None else (b - a) / 1e3      # noqa: E731
    return {"to forward": us(start, at["forward"]),
            "forward to launch": us(at["forward"], fl),
            "forward rest": us(fl, at["forward end"]) if fl else us(at["forward"],
                                                                    at["forward end"]),
            "to backward": us(at["forward end"], at["backward"]),
            "backward to launch": us(at["backward"], bl[0]),
            "backward launches": us(bl[0], bl[-1]),
            "after backward": us(bl[-1], end),
            "total": us(start, end), IN_LAUNCHES: in_launches / 1e3}, worker


def timeline(step: Callable[[], Any], sync: Callable[[], None], steps: int = 200,
             round_steps: int = 20) -> tuple[dict[str, float | None], str]:
    """Median us of each of ``COLUMNS`` over ``steps`` steps run in rounds of ``round_steps``
    with ``sync()`` between, after a warm-up round; and the thread the backward ran on
    ("worker" or "caller")."""
    caller = threading.get_ident()
    rows: list[dict[str, float]] = []
    workers = 0
    with marked():
        for i in range(round_steps + steps):
            if i % round_steps == 0:
                sync()
            _events.clear()
            start = _clock()
            step()
            end = _clock()
            got = _phases(list(_events), start, end, caller)
            if i >= round_steps and got is not None:
                rows.append(got[0])
                workers += got[1]
        sync()
    _events.clear()
    if not rows:
        raise RuntimeError("no step went through a marked autograd Function")
    med = {k: (None if any(r[k] is None for r in rows)
               else statistics.median(r[k] for r in rows)) for k in COLUMNS}
    return med, "worker" if workers > len(rows) // 2 else "caller"


def header(title: str) -> list[str]:
    """A markdown table's title and column heads for ``row``s."""
    return ["", title, "", "| op | impl | backward on | " + " | ".join(COLUMNS) + " |",
            "|---|---|---|" + "---:|" * len(COLUMNS)]


def row(op: str, impl: str, med: dict[str, float | None], thread: str) -> str:
    cells = " | ".join("-" if med[k] is None else f"{med[k]:.1f}" for k in COLUMNS)
    return f"| {op} | {impl} | {thread} | {cells} |"
