"""Where a CPU layer's time goes: its torch ops one by one, beside torch.nn's fused kernel.

    python benchmarks/cpu_passes.py                    # LayerNorm, print the tables
    python benchmarks/cpu_passes.py --layer BatchNorm
    python benchmarks/cpu_passes.py --write            # and update benchmarks/RESULTS.md

One forward + backward step (as in cpu_layers.py: float32, 4096 x 1024, ``layer(x).backward(dy)``)
of ours (eager, and with ``backend="compile"``) and of torch.nn, ``--steps`` steps each after
a warm-up (one contender after the other): step, forward and backward times and the minor
page faults per step. Then each torch call that ours' ops make (forward, then backward, as
its autograd.Function runs them) on a full-size array or a row block of one: how often it
runs per step and its time per step, i.e. the passes over memory.

By default glibc is asked to keep freed memory (mallopt), so that page faults stay out of
the op times: otherwise glibc decides per process whether a freed 16 MB array is recycled
or unmapped, and a fresh one takes ~4096 page faults, in whichever contender allocates it.
torch.nn's LayerNorm and BatchNorm are one fused C++ kernel per direction.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections import defaultdict

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile workers left running
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.overrides import TorchFunctionMode

import fromscratch
from _results import keep_freed_memory, machine, minor_faults, warm_up, write_section
from cpu_layers import step_fn
from fromscratch import nn as ours
from fromscratch.ops import batch_norm, layer_norm

LAYERS = {"LayerNorm": (ours.LayerNorm, nn.LayerNorm),
          "BatchNorm": (ours.BatchNorm, nn.BatchNorm1d)}


def ops_step(layer: str, x: torch.Tensor, dy: torch.Tensor, module: nn.Module):
    """What ours' autograd.Function runs in one step: the ops' forward, then backward."""
    x, w, b = x.detach(), module.weight.detach(), module.bias.detach()

    def step() -> None:
        with torch.no_grad():
            if layer == "LayerNorm":
                layer_norm.backward(dy, layer_norm.forward(x, w, b, module.eps)[1])
            else:
                batch_norm.backward(dy, batch_norm.forward(x, w, b, module.eps)[1])
    return step


def timed(module: nn.Module, x: torch.Tensor, dy: torch.Tensor, steps: int
          ) -> tuple[float, float, float, float]:
    """Median ms per step, per forward and per backward, and page faults per step."""
    params = list(module.parameters())
    times, f0 = [], minor_faults()
    for _ in range(steps):
        x.grad = None
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        y = module(x)
        t1 = time.perf_counter()
        y.backward(dy)
        t2 = time.perf_counter()
        del y
        times.append((t2 - t0, t1 - t0, t2 - t1))
    return (*(statistics.median(t) * 1e3 for t in zip(*times)), (minor_faults() - f0) / steps)


class OpTimer(TorchFunctionMode):
    """Times every torch call made from Python (ours are all Python: the forward and the
    hand-written backward) that reads an array of at least ``big`` elements and does work:
    not a view, not an allocation, not a call that hands its input back (``.to`` a dtype
    it already has)."""

    def __init__(self, big: int, full: int):
        super().__init__()
        self.big, self.full = big, full
        self.rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        start = time.perf_counter()
        out = func(*args, **kwargs)
        elapsed = time.perf_counter() - start
        name = getattr(func, "__name__", repr(func))
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        largest = max((a.numel() for a in inputs), default=0)
        if largest >= self.big and _does_work(name, out, inputs, kwargs):
            r = self.rows[(name, str([list(a.shape) for a in inputs]))]
            r[0] += 1
            r[1] += elapsed
            r[2] += largest / self.full           # a row block is a fraction of a pass
        return out


def _does_work(name: str, out, inputs: list[torch.Tensor], kwargs: dict) -> bool:
    if not isinstance(out, torch.Tensor) or name.startswith(("empty", "new_empty")):
        return False
    in_place = name.startswith("__i") or (name.endswith("_") and not name.startswith("__"))
    if in_place or "out" in kwargs:                   # x *= y, x.mul_(y), or into out=
        return True
    return not out._is_view() and not any(out is a for a in inputs)


def op_table(step, steps: int, big: int, full: int
             ) -> list[tuple[str, str, float, float, float]]:
    """(op, input shapes, calls per step, passes per step, ms per step) of the torch calls of
    one step that read >= ``big`` elements and do work (``OpTimer``); a pass is one call
    over ``full`` elements. Costliest first."""
    timer = OpTimer(big, full)
    with timer:
        for _ in range(steps):
            step()
    rows = [(k, s, c / steps, p / steps, t / steps * 1e3)
            for (k, s), (c, t, p) in timer.rows.items()]
    return sorted(rows, key=lambda r: -r[4])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", choices=sorted(LAYERS), default="LayerNorm")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--allocator", choices=["keep", "default"], default="keep",
                   help="keep: glibc keeps freed memory (no page faults in the profile); "
                        "default: as the process would be")
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    kept = args.allocator == "keep" and keep_freed_memory()
    torch.manual_seed(0)
    x = (torch.randn(args.rows, args.cols) + 3.0).requires_grad_()
    dy = torch.randn(args.rows, args.cols)
    mine, theirs = (cls(args.cols) for cls in LAYERS[args.layer])
    modules = {"ours": mine, "ours, compile": LAYERS[args.layer][0](args.cols, backend="compile"),
               "torch.nn": theirs}
    warmed = warm_up({name: step_fn(m, x, dy) for name, m in modules.items()}, 5,
                     optional="ours, compile")
    modules = {name: m for name, m in modules.items() if name in warmed}
    plain = {name: timed(module, x, dy, args.steps) for name, module in modules.items()}
    full = args.rows * args.cols
    table = op_table(ops_step(args.layer, x, dy, mine), args.steps, big=full // 16, full=full)

    lines = [f"{args.layer}, forward + backward, float32, {args.rows}x{args.cols}; "
             f"{args.steps} steps each; allocator: "
             + ("glibc keeps freed memory (mallopt), no page faults in the op times."
                if kept else "as is (freed 16 MB arrays may be unmapped and fault again)."),
             "",
             "| contender | fwd+bwd (ms) | forward (ms) | backward (ms) | page faults / step "
             "| passes over x-sized data / step |", "|---|---:|---:|---:|---:|---:|"]
    passes = {"ours": f"{sum(p for *_, p, _ in table):.1f}",
              "ours, compile": "the same ops fused by torch.compile",
              "torch.nn": "1 fused kernel per direction"}
    for name, (ms, fwd, bwd, flt) in plain.items():
        lines.append(f"| {name} | {ms:.2f} | {fwd:.2f} | {bwd:.2f} | {flt:.0f} | {passes[name]} |")
    total = sum(ms for *_, ms in table)
    lines += ["", f"ours, the ops' forward then backward, call by call ({total:.2f} ms together; "
              "the rest of ours' step is Python, autograd and the small per-row/per-column "
              "ops):", "",
              "| torch call | input shapes | calls / step | passes / step | ms / step |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| {op} | `{shapes}` | {calls:.0f} | {p:.1f} | {ms:.3f} |"
              for op, shapes, calls, p, ms in table]
    print("\n".join(lines))
    if args.write:
        argv_text = " ".join(sys.argv[1:] if argv is None else argv)
        write_section(f"cpu_passes_{args.layer}", [
            f"## Where the time goes: {args.layer} on the CPU (benchmarks/cpu_passes.py)", "",
            f"- machine: {machine()}",
            f"- torch {torch.__version__} ({torch.get_num_threads()} threads), fromscratch "
            f"{fromscratch.__version__}, Python {platform.python_version()}",
            f"- date: {datetime.date.today().isoformat()}",
            f"- command: `python benchmarks/cpu_passes.py {argv_text}`",
            "", *lines])
        print("wrote benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
