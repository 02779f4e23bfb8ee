#!/usr/bin/env python3
"""Where a forward+backward's time goes on the GPU: kernels, launches, or the host.

    PYTHONPATH=src python3 benchmarks/gpu_diagnose.py --out $OUT/diagnose.md   # ~1 minute
    PYTHONPATH=src python3 benchmarks/gpu_diagnose.py --smoke                  # CPU, interpreter

gpu_kernels.py measured our norms' kernels near the copy bandwidth when timed alone, but
their forward+backward through autograd far below it. This script takes one shape
(``--shape``, default 32768x4096, bf16) and, for ours and torch eager, splits the
forward+backward step (``torch.autograd.grad(f(x), params, dy)``, as gpu_kernels.py times it):

- ``do_bench``: the benchmark's own timing (CUDA events, L2 flushed before each call, median);
- ``1 thread``: do_bench again with autograd's multithreading off, so the backward runs on
  the calling thread instead of autograd's per-device worker (a thread handoff, and the
  GIL, fewer per step);
- ``graph``: the same step captured once in a CUDA graph and replayed, timed the same way:
  the device time with no host in the way;
- ``kernels``: ours only, the forward and backward kernel wrappers called directly, no
  autograd (what the launch tuner times);
- ``fwd`` and ``bwd only``: the forward alone, and the backward alone through autograd (one
  graph kept with ``retain_graph``), raw milliseconds: which half holds the gap;
- ``host``: wall time per step on the host, 50 steps enqueued back to back, no sync inside:
  what it costs the CPU to issue one step (and again with the backward on the calling thread);
- ``host / GPU``: host us per step over the GPU's us per step under do_bench (the graph's
  time plus do_bench's L2 flush, timed alone): below 1 the host runs ahead and work piles
  up in the queue, so do_bench times device work only; above 1 the queue drains every step
  and do_bench's time includes the GPU's wait for the host (docs/kernels.md, "When does
  the GPU wait?");
- the host's timeline of one step, ours and the floor, with the backward on autograd's
  worker and on the calling thread: median us of each phase between the step's start, the
  Function's forward, its first launch, its return, the backward's entry, its launches and
  the step's end (``_timeline.py``): which phase holds the host's time;
- the CUDA kernels one step launches (torch.profiler): name, count and device time;
- with ``--compiled``, a table of ours and torch eager's functions compiled with
  ``torch.compile(mode="reduce-overhead")`` (ours as custom ops, both steps replayed as CUDA
  graphs by Inductor), timed as ``do_bench``: what a compiled model gets.

Rows: ours; ours with every kernel launched through Triton's ``kernel[grid]`` instead of
``kernels._fast_path``'s shortcut; torch eager; and a floor, an autograd Function that
allocates its output and launches nothing (what the harness, autograd and its thread
handoff cost by themselves: no implementation's host time can go below it).

If ``graph`` is near ``kernels`` and ``do_bench`` is not, the gap is the host (and if
``1 thread`` closes it, the handoff to autograd's worker thread); if ``graph`` is slow too,
look at the kernel list for launches that should not be there.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _floor import floor_step, grad_step  # noqa: E402
import _timeline  # noqa: E402
from gpu_kernels import Bench, log  # noqa: E402

OPS = ("layer_norm", "rms_norm", "batch_norm")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="32768x4096", help="M x N")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--out", default="gpu_diagnose.md")
    ap.add_argument("--smoke", action="store_true", help="CPU under TRITON_INTERPRET=1, 64x96")
    ap.add_argument("--compiled", action="store_true",
                    help="also time ours and torch compiled with mode='reduce-overhead' (CUDA)")
    ap.add_argument("--trace", default=None, metavar="DIR",
                    help="also write a Chrome trace (CPU and GPU timelines) of 5 steps of ours, "
                         "one .json.gz per op, into DIR (open in chrome://tracing or Perfetto)")
    args = ap.parse_args(argv)
    # what gpu_kernels.Bench reads
    args.no_compile, args.quick, args.runs = True, True, 1
    return args


def direct(op: str, d: dict[str, Any]) -> Callable[[], Any]:
    """Ours' forward and backward kernel wrappers, called without autograd."""
    from fromscratch.kernels import batch_norm, layer_norm, rms_norm
    x, dy, w = d["x"].detach(), d["dy"], d["w"].detach()
    if op == "layer_norm":
        b = d["b"].detach()

        def step() -> Any:
            y, mean, rstd, _ = layer_norm.forward(x, w, b, 1e-5)
            return layer_norm.backward(dy, x, w, True, mean, rstd, b.dtype)
    elif op == "rms_norm":
        def step() -> Any:
            y, rstd, _, _ = rms_norm.forward(x, w, 1e-6)
            return rms_norm.backward(dy, x, w, rstd)
    else:
        b, rm, rv = d["b"].detach(), d["rm"], d["rv"]

        def step() -> Any:
            y, mean, _, rstd, _ = batch_norm.forward(x, w, b, 1e-5, True, rm, rv, 0.1)
            return batch_norm.backward(dy, x, w, True, mean, rstd, True, b.dtype)
    return step


def _launch_shortcut(on: bool) -> None:
    """Our kernels launched through ``kernels._fast_path``'s shortcut and replays, or through
    Triton's ``kernel[grid]`` every time (the row "ours, Triton's launch")."""
    from fromscratch.kernels import _fast_path
    _fast_path.set_enabled(on)


def timeline_lines(op: str, impl: str, step: Callable[[], Any], bench: Bench,
                   steps: int = 200) -> list[str]:
    """Rows of the timeline table for one step: autograd's worker thread (as benchmarked),
    then the calling thread (multithreading off)."""
    out = []
    for threads in (True, False):
        with torch.autograd.set_multithreading_enabled(threads):
            med, thread = _timeline.timeline(step, bench.sync, steps, min(20, steps))
        out.append(_timeline.row(op, impl, med, thread))
    return out


def reduce_overhead_ms(fwd: Callable[[], Any], params: list, grads: list,
                       bench: Bench) -> float | None:
    """do_bench ms of the forward+backward with ``fwd`` compiled by
    ``torch.compile(mode="reduce-overhead")``; None (and a log line) where that fails."""
    try:
        step = grad_step(torch.compile(fwd, mode="reduce-overhead", fullgraph=True), params,
                         grads)
        for _ in range(3):                      # compile, warm up, record the CUDA graphs
            step()
        bench.sync()
        return bench.time_ms(step)
    except Exception as e:                      # noqa: BLE001 - report, go on
        log(f"  reduce-overhead failed: {type(e).__name__}: {str(e)[:300]}")
        return None


def flush_us(bench: Bench) -> float | None:
    """Device us of the L2 flush do_bench issues before every timed call (None off CUDA)."""
    if bench.device.type != "cuda":
        return None
    from triton import runtime
    driver = runtime.driver.active
    if not hasattr(driver, "clear_cache"):          # a Triton older than do_bench's flush API
        return None
    cache = driver.get_empty_cache_for_benchmark()
    return bench.time_ms(lambda: driver.clear_cache(cache)) * 1e3


def kernel_table(fn: Callable[[], Any], bench: Bench, steps: int = 5,
                 trace: str | None = None) -> list[tuple[str, float, float]]:
    """(kernel, launches per step, device us per step) of one step, from torch.profiler;
    with ``trace`` the CPU and GPU timelines are also written there (Chrome trace, gzipped)."""
    import gzip
    import shutil
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CUDA] if bench.device.type == "cuda" else [ProfilerActivity.CPU]
    if trace is not None:
        acts = list(dict.fromkeys([ProfilerActivity.CPU, *acts]))
    bench.sync()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        bench.sync()
    if trace is not None:
        raw = trace + ".tmp.json"
        prof.export_chrome_trace(raw)
        with open(raw, "rb") as src, gzip.open(trace + ".json.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(raw)
    rows = []
    for e in prof.key_averages():
        us = (e.device_time_total if bench.device.type == "cuda" else e.self_cpu_time_total)
        if us > 0 and (bench.device.type == "cuda" or e.key.startswith("aten::")):
            rows.append((e.key[:90], e.count / steps, us / steps))
    return sorted(rows, key=lambda r: -r[2])[:15]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU interpreter check", file=sys.stderr)
        return 2
    bench = Bench(args)
    m, n = (64, 96) if args.smoke else map(int, args.shape.lower().split("x"))
    copy = bench.copy_bandwidth()["GBps"]
    flush = flush_us(bench)
    dev = "CPU (Triton interpreter)" if args.smoke else torch.cuda.get_device_name()
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Forward+backward, where the time goes: {m}x{n} bf16 on {dev}", "",
             f"- torch {torch.__version__}; copy bandwidth {copy:.0f} GB/s; do_bench's L2 "
             f"flush {'-' if flush is None else f'{flush:.0f}'} us; "
             f"command: `python benchmarks/gpu_diagnose.py {argv_text}`",
             "", "| op | impl | do_bench ms (% copy) | 1 thread ms (% copy) | graph ms (% copy) "
             "| kernels ms (% copy) | fwd ms | bwd only ms | host us / step | host us, 1 thread "
             "| host / GPU |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    tables = []
    compiled_rows = []
    timeline_rows = []
    for op in [o.strip() for o in args.ops.split(",") if o.strip()]:
        d = bench.inputs(op, m, n)
        bytes_ = bench.bytes_moved(op, "fwd+bwd", m, n, 2)

        def cell(ms: float | None) -> str:
            if ms is None:
                return "-"
            return f"{ms:.3f} ({100 * bytes_ / (ms * 1e-3) / 1e9 / copy:.0f}%)"

        impls = {k: v for k, v in bench.impls(op, m, n, d).items() if k in ("ours", "torch")}
        impls["ours, Triton's launch"] = impls["ours"]
        impls["floor"] = (floor_step(d["x"]), [d["x"]], [d["dy"]])
        for impl, (fwd, params, grads) in impls.items():

            step = grad_step(fwd, params, grads)
            log(f"{op} {impl}")
            _launch_shortcut(impl != "ours, Triton's launch")
            step()
            bench.sync()
            kern = direct(op, d) if impl.startswith("ours") else None
            if kern is not None:
                kern()
            with torch.autograd.set_multithreading_enabled(False):
                one_thread = bench.time_ms(step)
                host_one_thread = bench.host_us(step)
            do_bench_ms, fwd_ms = bench.time_ms(step), bench.time_ms(fwd)
            out0 = fwd()                         # one graph, its backward timed again and again
            outs0 = out0 if isinstance(out0, tuple) else (out0,)

            def bwd_only(outs0=outs0, params=params, grads=grads) -> Any:
                return torch.autograd.grad(outs0, params, grads, retain_graph=True)
            bwd_ms = bench.time_ms(bwd_only)
            del out0, outs0, bwd_only            # a graph kept alive breaks a capture
            graph_ms, host = bench.graph_ms(step), bench.host_us(step)
            ratio = ("-" if graph_ms is None or flush is None
                     else f"{host / (graph_ms * 1e3 + flush):.2f}")
            lines.append(f"| {op} | {impl} | {cell(do_bench_ms)} | {cell(one_thread)} "
                         f"| {cell(graph_ms)} "
                         f"| {cell(None if kern is None else bench.time_ms(kern))} "
                         f"| {fwd_ms:.3f} | {bwd_ms:.3f} | {host:.0f} "
                         f"| {host_one_thread:.0f} | {ratio} |")
            _launch_shortcut(True)
            if impl in ("ours", "floor"):
                log(f"{op} {impl}, timeline")
                timeline_rows += timeline_lines(op, impl, step, bench, 5 if args.smoke else 200)
            if args.compiled and impl in ("ours", "torch") and bench.device.type == "cuda":
                log(f"{op} {impl}, reduce-overhead")
                compiled_rows.append(f"| {op} | {impl} | "
                                     f"{cell(reduce_overhead_ms(fwd, params, grads, bench))} |")
            if impl == "ours":
                trace = None
                if args.trace:
                    Path(args.trace).mkdir(parents=True, exist_ok=True)
                    trace = str(Path(args.trace) / f"trace-{op}-{m}x{n}")
                tables.append((op, kernel_table(step, bench, trace=trace)))
    if compiled_rows:
        lines += ["", "## Compiled with torch.compile(mode=\"reduce-overhead\"), do_bench", "",
                  "| op | impl | ms (% copy) |", "|---|---|---|", *compiled_rows]
    lines += _timeline.header(f"## The host's timeline of one step (us, median of "
                              f"{5 if args.smoke else 200} steps; benchmarks/_timeline.py)")
    lines += timeline_rows
    for op, rows in tables:
        lines += ["", f"## {op}, ours: kernels of one step", "",
                  "| kernel | launches / step | us / step |", "|---|---:|---:|"]
        lines += [f"| `{k}` | {c:.1f} | {us:.1f} |" for k, c, us in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
