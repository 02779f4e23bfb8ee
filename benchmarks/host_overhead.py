#!/usr/bin/env python3
"""What one step of our Triton front-ends costs the host, outside Triton's own launcher.

    python benchmarks/host_overhead.py            # prints a table (CPU, ~20 s)
    python benchmarks/host_overhead.py --write    # and writes it to benchmarks/RESULTS.md

On a GPU a forward+backward of a norm is a few hundred microseconds of device time; if the
host needs as long to issue it (argument checks, autograd, launch geometry, Triton's
dispatch), the device waits. This script measures the Python side that is ours: every
``*_kernel`` of ``fromscratch.kernels`` is replaced by a no-op launch (whose "compiled
launcher" does nothing, so ``kernels._fast_path``'s shortcut and replays run as on a GPU),
and the functional front-ends (``backend="triton"``, CPU tensors taking the path CUDA ones
take, so Triton's interpreter is switched on but never runs a kernel) are timed per step,
forward and forward+backward through ``torch.autograd.grad``. Beside it, torch.nn.functional
on a 2x8 CPU tensor: its host path in C++, plus a negligible kernel; and the floor, an
autograd Function that allocates and launches nothing (``_floor.py``).

The column that decides whether a GPU waits is "to the backward's launch": host time from the
start of a step to the backward's first kernel launch. The GPU runs the forward kernel
meanwhile; if the host needs longer than the forward kernel (plus the L2 flush do_bench issues
before each step) to get there, the GPU idles. On a GPU the driver's launch calls and CUDA
allocations come on top of ours, and the backward runs on autograd's worker thread (a thread
handoff); ``gpu_diagnose.py`` measures the whole on the card.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("TRITON_INTERPRET", "1")       # before anything imports triton

import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _floor import Floor, floor_step, grad_step  # noqa: E402
from _results import RESULTS, machine, write_section  # noqa: E402
import _timeline  # noqa: E402

OPS = ("layer_norm", "rms_norm", "fused_add_rms_norm", "dropout", "batch_norm")


#: the host clock at each launch of the current step (``time.perf_counter_ns``)
launch_times: list[int] = []


class _Compiled:
    """What the launch wrappers read from a compiled kernel; its launcher only notes the time."""
    n_regs = 64
    metadata = None
    function = packed_metadata = None

    @staticmethod
    def run(*args: Any) -> None:
        launch_times.append(time.perf_counter_ns())


class _NoLaunch:
    """Stands in for a ``@triton.jit`` kernel (same parameter names): ``kernel[grid](...)``
    does nothing and returns a ``_Compiled``."""

    def __init__(self, kernel: Any):
        self.arg_names = kernel.arg_names

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return lambda *args, **kwargs: _Compiled()


@contextlib.contextmanager
def no_launches() -> Iterator[None]:
    """Replace every ``*_kernel`` of the kernel modules by ``_NoLaunch`` for the duration, and
    let dispatch and ``kernels._fast_path`` take their CUDA paths (the launch shortcut, the
    replays) on CPU tensors (so a step costs here what it costs there, less the driver
    calls)."""
    from fromscratch.kernels import (_fast_path, _reduce, _row_backward, _triton_internals,
                                     batch_norm, dispatch, dropout, layer_norm, rms_norm)
    saved = [(m, name, getattr(m, name)) for m in (_reduce, _row_backward, batch_norm, dropout,
                                                   layer_norm, rms_norm)
             for name in dir(m) if name.endswith("_kernel")]
    for m, name, k in saved:
        setattr(m, name, _NoLaunch(k))
    saved += [(dispatch, "_on_gpu", dispatch._on_gpu),
              (_triton_internals, "hooks_idle", _triton_internals.hooks_idle)]
    dispatch._on_gpu = lambda t: True
    _triton_internals.hooks_idle = lambda: True     # as the figures before it (~0.2 us a call)
    try:
        with _fast_path.taken_by_cpu_tensors():
            yield
    finally:
        for m, name, k in saved:
            setattr(m, name, k)


def steps(op: str, m: int, n: int) -> dict[str, tuple[Callable[[], Any], list, list]]:
    """impl -> (forward thunk, inputs to differentiate, grad_outputs)."""
    from fromscratch import functional as FS

    def rnd(*shape: int, grad: bool = True) -> torch.Tensor:
        return torch.randn(*shape).to(torch.bfloat16).requires_grad_(grad)

    out = {}
    for impl, (rows, cols) in (("ours", (m, n)), ("torch", (2, 8))):
        x, dy, w, b = rnd(rows, cols), rnd(rows, cols, grad=False), rnd(cols), rnd(cols)
        mine = impl == "ours"
        if op == "layer_norm":
            f = ((lambda x=x, w=w, b=b, c=cols: FS.layer_norm(x, c, w, b, backend="triton"))
                 if mine else (lambda x=x, w=w, b=b, c=cols: TF.layer_norm(x, (c,), w, b)))
            out[impl] = (f, [x, w, b], [dy])
        elif op == "rms_norm":
            f = ((lambda x=x, w=w, c=cols: FS.rms_norm(x, c, w, 1e-6, backend="triton"))
                 if mine else (lambda x=x, w=w, c=cols: TF.rms_norm(x, (c,), w, 1e-6)))
            out[impl] = (f, [x, w], [dy])
        elif op == "fused_add_rms_norm":
            r, ds = rnd(rows, cols), rnd(rows, cols, grad=False)

            def two_steps(x=x, r=r, w=w, c=cols):
                s = x + r
                return s, TF.rms_norm(s, (c,), w, 1e-6)
            f = ((lambda x=x, r=r, w=w, c=cols:
                  FS.fused_add_rms_norm(x, r, c, w, 1e-6, backend="triton"))
                 if mine else two_steps)
            out[impl] = (f, [x, r, w], [ds, dy])
        elif op == "dropout":
            f = ((lambda x=x: FS.dropout(x, 0.1, backend="triton")) if mine
                 else (lambda x=x: TF.dropout(x, 0.1)))
            out[impl] = (f, [x], [dy])
        else:
            wf, bf = (t.detach().float().requires_grad_() for t in (w, b))
            rm, rv = torch.zeros(cols), torch.ones(cols)
            f = ((lambda x=x, wf=wf, bf=bf, rm=rm, rv=rv:
                  FS.batch_norm(x, rm, rv, wf, bf, True, 0.1, 1e-5, backend="triton"))
                 if mine else (lambda x=x, wf=wf, bf=bf, rm=rm, rv=rv:
                               TF.batch_norm(x, rm, rv, wf, bf, True, 0.1, 1e-5)))
            out[impl] = (f, [x, wf, bf], [dy])
    return out


def per_step_us(fn: Callable[[], Any], steps_per_round: int, rounds: int) -> float:
    for _ in range(max(10, steps_per_round // 10)):
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(steps_per_round):
            fn()
        times.append((time.perf_counter() - t) / steps_per_round * 1e6)
    return statistics.median(times)


def to_backward_us(fwd: Callable[[], Any], both: Callable[[], Any], steps: int) -> float:
    """Median host time from the start of a step (``both``) to the backward's first launch:
    the launch after the forward's own (``fwd``'s launches are counted first)."""
    launch_times.clear()
    fwd()
    n_fwd = len(launch_times)
    times = []
    for i in range(max(10, steps // 10) + steps):
        launch_times.clear()
        t = time.perf_counter_ns()
        both()
        if i >= steps // 10 and len(launch_times) > n_fwd:
            times.append((launch_times[n_fwd] - t) / 1e3)
    return statistics.median(times)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1000, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported")
    ap.add_argument("--write", action="store_true", help="write the table to RESULTS.md")
    ap.add_argument("--results", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def custom_op_row(args: argparse.Namespace, timed: Callable) -> list[float]:
    """fwd, fwd+bwd and to the backward's launch of LayerNorm through ``kernels.library``'s
    custom op instead of its autograd Function: why eager calls keep the Function."""
    from fromscratch.kernels import library
    x, w, b = (torch.randn(*s).to(torch.bfloat16).requires_grad_()
               for s in ((args.rows, args.cols), (args.cols,), (args.cols,)))
    dy = torch.randn(args.rows, args.cols).to(torch.bfloat16)
    fwd = lambda: library.layer_norm(x, w, b, 1e-5)                 # noqa: E731
    both = grad_step(fwd, [x, w, b], [dy])
    return [timed(fwd), timed(both), to_backward_us(fwd, both, args.steps)]


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rows, phases = [], []
    timed = lambda f: per_step_us(f, args.steps, args.rounds)    # noqa: E731
    phased = lambda op, impl, f: _timeline.row(op, impl, *_timeline.timeline(    # noqa: E731
        f, lambda: None, args.steps, max(1, args.steps // 10)))
    with no_launches():
        for op in args.ops:
            cells: list[float | None] = []
            for impl, (fwd, params, grads) in steps(op, args.rows, args.cols).items():
                both = grad_step(fwd, params, grads)
                cells += [timed(fwd), timed(both)]
                if impl == "ours":
                    cells.append(to_backward_us(fwd, both, args.steps))
                    phases.append(phased(op, impl, both))
            rows.append(f"| {op} | " + " | ".join(map(fmt, cells)) + " |")
        x = torch.randn(args.rows, args.cols).to(torch.bfloat16).requires_grad_()
        dy = torch.randn(args.rows, args.cols).to(torch.bfloat16)
        fwd = floor_step(x)
        both = grad_step(fwd, [x], [dy])
        Floor.on_backward = lambda dx: launch_times.append(time.perf_counter_ns())
        try:
            floor = [timed(fwd), timed(both), to_backward_us(fwd, both, args.steps)]
        finally:
            Floor.on_backward = None
        phases.append(phased("-", "floor", both))
        rows.append("| floor (autograd, nothing else) | " + " | ".join(map(fmt, floor))
                    + " | - | - |")
        if "layer_norm" in args.ops:            # what torch.compile's path would cost eagerly
            rows.append("| layer_norm through its custom op, called eagerly | "
                        + " | ".join(map(fmt, custom_op_row(args, timed))) + " | - | - |")
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["## Host cost of one step (benchmarks/host_overhead.py)", "",
             f"- machine: {machine()}; torch {torch.__version__}, Python "
             f"{sys.version.split()[0]}",
             f"- date: {time.strftime('%Y-%m-%d')}; command: "
             f"`python benchmarks/host_overhead.py {argv_text}`",
             f"- ours: the functional front-ends with backend='triton' on {args.rows}x{args.cols} "
             "bf16, every compiled launcher replaced by a no-op, the launch shortcut and the "
             "replay on as on a GPU (so: our Python and autograd, not the driver); torch: "
             "torch.nn.functional on 2x8 bf16 CPU tensors; floor: an autograd Function that "
             "allocates its output and gradient and launches nothing (benchmarks/_floor.py); "
             f"median of {args.rounds} rounds of {args.steps} steps, microseconds per step; "
             "to the backward's launch: from the start of a step to the backward's first "
             "launch (the floor: to its gradient's allocation), median of the steps", "",
             "| op | ours fwd | ours fwd+bwd | ours, to the backward's launch | torch fwd "
             "| torch fwd+bwd |",
             "|---|---:|---:|---:|---:|---:|", *rows]
    lines += _timeline.header("Where the step's host time goes, phase by phase (benchmarks/"
                              "_timeline.py; us, median of the steps; on a GPU, "
                              "gpu_diagnose.py prints the same table with the driver's calls "
                              "and autograd's worker thread in it):")
    lines += phases
    print("\n".join(lines))
    if args.write:
        write_section("host_overhead", lines, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
