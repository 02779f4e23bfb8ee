"""Forward + backward of the four layers on this CPU: ours, torch.nn, and the notebook's formulas.

    python benchmarks/cpu_layers.py            # print the table
    python benchmarks/cpu_layers.py --write    # and update benchmarks/RESULTS.md

One process, float32, a (4096, 1024) input and a random upstream gradient. Each step is
``y = layer(x); y.backward(dy)`` with fresh gradients. After a warm-up, each contender runs
head to head with torch.nn: the two interleaved, one step of each per repeat in an order
shuffled per repeat, so that a busy neighbour slows both alike; each ratio is the medians'
ratio within one pair (the torch.nn column shows torch.nn in the pair with ours). All
contenders in one interleave would make a step's time depend on what ran between: the
notebook's temporaries, for one, leave the caches full.

"compile" is ours with ``backend="compile"``: the same ops, fused by torch.compile (its first
call per layer compiles, inside the warm-up). "notebook" is the seed notebook's formula with
its typos fixed (``/`` for ``//``, ``torch.rand`` for ``torch.randn``, the biased variance in
BatchNorm's normalisation, ``self.training`` for ``self.train``, running statistics updated
outside the graph), differentiated by autograd.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile workers left running
import torch  # noqa: E402
from torch import nn  # noqa: E402

import fromscratch
from _results import (RESULTS, keep_freed_memory, machine, minor_faults, warm_up,
                      write_section)
from fromscratch import nn as ours

# the bounds for ours / torch.nn on the eager path: torch's CPU RMSNorm and Dropout are slow
# paths, its LayerNorm and BatchNorm fused kernels that ops/, one formula a line, cannot
# match (benchmarks/cpu_passes.py shows why); speed on the CPU comes from backend="compile",
# which fuses ours too
TARGET = {"LayerNorm": 3.0, "RMSNorm": 1.0, "BatchNorm": 3.0, "Dropout(p=0.1)": 1.0}


# --- the notebook's formulas, typos fixed --------------------------------------------------

class NotebookLayerNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(hidden_size))
        self.beta = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        variance = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.gamma * ((x - mean) / torch.sqrt(variance + self.eps)) + self.beta


class NotebookRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.sqrt(torch.mean(x.pow(2), dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x / rms)                       # was x // rms


class NotebookBatchNorm(nn.Module):
    """Channels-last: statistics over every dim but the last."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(hidden_size))
        self.beta = nn.Parameter(torch.zeros(hidden_size))
        self.register_buffer("running_mean", torch.zeros(hidden_size))
        self.register_buffer("running_var", torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(x.dim() - 1))
        if self.training:                                   # was `if self.train:`
            mean = x.mean(dim=dims)
            variance = x.var(dim=dims, unbiased=False)      # was the unbiased variance
            with torch.no_grad():                           # was a graph-dragging tensor
                n = x.numel() // x.shape[-1]
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(variance * n / (n - 1), self.momentum)
        else:
            mean, variance = self.running_mean, self.running_var
        return self.gamma * ((x - mean) / torch.sqrt(variance + self.eps)) + self.beta


class NotebookDropout(nn.Module):
    def __init__(self, dropout_prob: float = 0.1):
        super().__init__()
        self.dropout_prob = dropout_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mask = (torch.rand(x.shape) > self.dropout_prob).float()    # was torch.randn
            return mask * x / (1.0 - self.dropout_prob)
        return x


# --- timing --------------------------------------------------------------------------------

def layers(n: int) -> dict[str, dict[str, nn.Module]]:
    """layer name -> {contender: module}; 'ours' and 'torch' come first and second;
    'compiled' is ours with backend="compile" (the same ops, fused by torch.compile)."""
    return {
        "LayerNorm": {"ours": ours.LayerNorm(n), "torch": nn.LayerNorm(n),
                      "notebook": NotebookLayerNorm(n),
                      "compiled": ours.LayerNorm(n, backend="compile")},
        "RMSNorm": {"ours": ours.RMSNorm(n), "torch": nn.RMSNorm(n),
                    "notebook": NotebookRMSNorm(n),
                    "compiled": ours.RMSNorm(n, backend="compile")},
        "BatchNorm": {"ours": ours.BatchNorm(n), "torch": nn.BatchNorm1d(n),
                      "notebook": NotebookBatchNorm(n),
                      "compiled": ours.BatchNorm(n, backend="compile")},
        "Dropout(p=0.1)": {"ours": ours.Dropout(0.1), "torch": nn.Dropout(0.1),
                           "notebook": NotebookDropout(0.1)},
    }


def step_fn(module: nn.Module, x: torch.Tensor, dy: torch.Tensor
            ) -> Callable[[], tuple[float, int]]:
    """One timed forward + backward, gradients reset (not timed) before it; returns
    (seconds, minor page faults)."""
    params = list(module.parameters())

    def step() -> tuple[float, int]:
        x.grad = None
        for p in params:
            p.grad = None
        faults = minor_faults()
        start = time.perf_counter()
        module(x).backward(dy)
        return time.perf_counter() - start, minor_faults() - faults

    return step


def measure(contenders: dict[str, nn.Module], x: torch.Tensor, dy: torch.Tensor,
            repeats: int, warmup: int) -> dict[str, float]:
    """Each contender head to head with "torch": the two interleaved, one step of each per
    repeat in an order shuffled per repeat. Returns the median seconds per step of each
    contender, of torch in its pair (under "torch vs <name>") and the median page faults
    per step (under "<name> faults" and "torch faults vs <name>")."""
    steps = warm_up({name: step_fn(m.train(), x, dy) for name, m in contenders.items()},
                    warmup, optional="compiled")
    out: dict[str, float] = {}
    rng = random.Random(0)
    for name in steps:
        if name == "torch":
            continue
        pair = [name, "torch"]
        runs: dict[str, list[tuple[float, int]]] = {n: [] for n in pair}
        for _ in range(repeats):
            rng.shuffle(pair)
            for n in pair:
                runs[n].append(steps[n]())
        out[name] = statistics.median(t for t, _ in runs[name])
        out[f"torch vs {name}"] = statistics.median(t for t, _ in runs["torch"])
        out[f"{name} faults"] = statistics.median(f for _, f in runs[name])
        out[f"torch faults vs {name}"] = statistics.median(f for _, f in runs["torch"])
    return out


def table(results: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| layer, fwd+bwd | ours (ms) | ours, compile (ms) | torch.nn (ms) | notebook (ms) "
             "| ours / torch | compile / torch | target | notebook / torch "
             "| page faults / step: ours, compile, torch |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]

    def verdict(ratio: float | None, target: float) -> str:
        return "-" if ratio is None else "met" if ratio <= target else "**missed**"

    for layer, t in results.items():
        torch_ms = t["torch vs ours"]            # the torch.nn column: its pair with ours
        ratio = t["ours"] / torch_ms
        comp = t["compiled"] / t["torch vs compiled"] if "compiled" in t else None
        comp_ms = "-" if comp is None else f"{t['compiled'] * 1e3:.1f}"
        comp_ratio = "-" if comp is None else f"{comp:.2f}x"
        target = TARGET[layer]
        met = f"<= {target:.1f}x: {verdict(ratio, target)}" + (
            "" if comp is None else f" (compile: {verdict(comp, target)})")
        lines.append(f"| {layer} | {t['ours'] * 1e3:.1f} | {comp_ms} | {torch_ms * 1e3:.1f} "
                     f"| {t['notebook'] * 1e3:.1f} | {ratio:.2f}x | {comp_ratio} | {met} "
                     f"| {t['notebook'] / t['torch vs notebook']:.2f}x "
                     f"| {t['ours faults']:.0f}, "
                     + ("-" if comp is None else f"{t['compiled faults']:.0f}")
                     + f", {t['torch faults vs ours']:.0f} |")
    return lines


def write_results(lines: list[str], command: str, path: Path) -> None:
    write_section("cpu_layers" + ("_keep" if ARGS.kept else ""), [
        "## CPU layers (benchmarks/cpu_layers.py)" + (
            ", glibc keeping freed memory (no page faults)" if ARGS.kept else ""),
        "",
        f"Forward + backward, float32, {ARGS.rows}x{ARGS.cols}, random upstream gradient, "
        f"each contender head to head with torch.nn, median of {ARGS.repeats} interleaved "
        f"repeats (order shuffled) after {ARGS.warmup} warm-up steps; each ratio within its "
        "pair. "
        "ours: fromscratch.nn; notebook: the seed notebook's formulas with their typos fixed, "
        "differentiated by autograd; BatchNorm is channels-last, torch's peer BatchNorm1d. "
        + ("Allocator: glibc asked to keep freed memory (mallopt), so no contender pays "
           "page faults for a fresh output array." if ARGS.kept else
           "Allocator: glibc as it is (a fresh 16 MB output may cost ~4096 page faults, in "
           "whichever contender glibc hands unmapped memory)."),
        "",
        f"- machine: {machine()}",
        f"- torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"fromscratch {fromscratch.__version__}, Python {platform.python_version()}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- command: `{command}`",
        "",
        *lines,
    ], path)


def main(argv: list[str] | None = None) -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--only", nargs="*", help="layer names to run (default: all)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--allocator", choices=["default", "keep"], default="default",
                   help="default: glibc as it is; keep: glibc keeps freed memory, no page "
                        "faults in the timings (see _results.keep_freed_memory)")
    p.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    p.add_argument("--results", type=Path, default=RESULTS, help="the file --write updates")
    ARGS = p.parse_args(argv)
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    ARGS.kept = ARGS.allocator == "keep" and keep_freed_memory()
    torch.manual_seed(0)
    x = (torch.randn(ARGS.rows, ARGS.cols) + 3.0).requires_grad_()
    dy = torch.randn(ARGS.rows, ARGS.cols)
    results = {}
    for layer, contenders in layers(ARGS.cols).items():
        if ARGS.only and not any(o.lower() in layer.lower() for o in ARGS.only):
            continue
        results[layer] = measure(contenders, x, dy, ARGS.repeats, ARGS.warmup)
        print(f"{layer}: done", file=sys.stderr, flush=True)
    lines = table(results)
    print("\n".join(lines))
    if ARGS.write:
        argv_text = " ".join(sys.argv[1:] if argv is None else argv)
        write_results(lines, f"python benchmarks/cpu_layers.py {argv_text}".strip(), ARGS.results)
        print(f"wrote {ARGS.results}")
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
