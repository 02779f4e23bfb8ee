#!/usr/bin/env python3
"""What one step of our Triton front-ends costs the host, outside Triton's own launcher.

    python benchmarks/host_overhead.py            # prints a table (CPU, ~20 s)
    python benchmarks/host_overhead.py --write    # and writes it to benchmarks/RESULTS.md

On a GPU a forward+backward of a norm is a few hundred microseconds of device time; if the
host needs as long to issue it (argument checks, autograd, launch geometry, Triton's
dispatch), the device waits. This script measures the Python side that is ours: every
``*_kernel`` of ``fromscratch.kernels`` is replaced by a no-op launch (whose "compiled
launcher" does nothing, so ``kernels._launch``'s shortcut and the replay run as on a GPU),
and the functional front-ends (``backend="triton"``, CPU tensors, so Triton's interpreter is
switched on but never runs a kernel) are timed per step, forward and forward+backward
through ``torch.autograd.grad``. Beside it, torch.nn.functional on a 2x8 CPU tensor: its host
path in C++, plus a negligible kernel. On a GPU the driver's launch calls and CUDA
allocations come on top of ours; ``gpu_diagnose.py`` measures the whole on the card.
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
from _results import RESULTS, machine, write_section  # noqa: E402

OPS = ("layer_norm", "rms_norm", "fused_add_rms_norm", "dropout", "batch_norm")


class _Compiled:
    """What the launch wrappers read from a compiled kernel; its launcher does nothing."""
    n_regs = 64
    metadata = None
    function = packed_metadata = None

    @staticmethod
    def run(*args: Any) -> None:
        pass


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
    let ``kernels._launch`` take its shortcut (and the backward its replay) on CPU tensors as
    on CUDA ones (so a step costs here what it costs there, less the driver calls)."""
    from fromscratch.kernels import (_launch, _reduce, _row_backward, batch_norm, dropout,
                                     layer_norm, rms_norm)
    saved = [(m, name, getattr(m, name)) for m in (_reduce, _row_backward, batch_norm, dropout,
                                                   layer_norm, rms_norm)
             for name in dir(m) if name.endswith("_kernel")]
    shortcut = ("_SUPPORTED", "_eligible", "_stream", "_hooks_idle", "replayable")
    saved += [(_launch, name, getattr(_launch, name)) for name in shortcut]
    for m, name, k in saved[:-len(shortcut)]:
        setattr(m, name, _NoLaunch(k))
    _launch._SUPPORTED, _launch._eligible = [True], lambda t: True
    _launch._stream, _launch._hooks_idle = lambda index: 0, lambda: True
    _launch.replayable = lambda index: True
    try:
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


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rows = []
    with no_launches():
        for op in args.ops:
            cells = []
            for impl, (fwd, params, grads) in steps(op, args.rows, args.cols).items():
                def both(fwd=fwd, params=params, grads=grads):
                    out = fwd()
                    return torch.autograd.grad(out if isinstance(out, tuple) else (out,),
                                               params, grads)
                cells += [per_step_us(fwd, args.steps, args.rounds),
                          per_step_us(both, args.steps, args.rounds)]
            rows.append(f"| {op} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["## Host cost of one step (benchmarks/host_overhead.py)", "",
             f"- machine: {machine()}; torch {torch.__version__}, Python "
             f"{sys.version.split()[0]}",
             f"- date: {time.strftime('%Y-%m-%d')}; command: "
             f"`python benchmarks/host_overhead.py {argv_text}`",
             f"- ours: the functional front-ends with backend='triton' on {args.rows}x{args.cols} "
             "bf16, every compiled launcher replaced by a no-op, the launch shortcut and the "
             "replay on as on a GPU (so: our Python and autograd, not the driver); torch: "
             "torch.nn.functional on 2x8 bf16 CPU tensors; "
             f"median of {args.rounds} rounds of {args.steps} steps, microseconds per step", "",
             "| op | ours fwd | ours fwd+bwd | torch fwd | torch fwd+bwd |",
             "|---|---:|---:|---:|---:|", *rows]
    print("\n".join(lines))
    if args.write:
        write_section("host_overhead", lines, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
