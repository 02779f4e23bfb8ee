"""The NumPy engine against the seed notebook's NumPy network and against torch eager (CPU).

    python benchmarks/numpy_engine.py            # print the tables
    python benchmarks/numpy_engine.py --write    # and update benchmarks/RESULTS.md

One process. Two measurements:

1. The notebook's sine experiment in the notebook's configuration: [1, 25, 1] sigmoid
   network, 100 points, 4000 full-batch epochs of gradient descent, recording the loss of
   every epoch. "notebook" is its ``NeuralNetwork.train`` (the class copied verbatim in
   tests/fixtures/seed_notebook_nn.py); "ours" is the same loop on ``fromscratch.numpy_nn``
   (``fromscratch demo sine --seed-config``), from the same initial weights.
   Target: ours <= 1.0x the notebook's time.
2. One training step of an MLP [784, 256, 256, 10] with ReLU, batch 256, float32, softmax
   cross-entropy and SGD: ours (NumPy) against the same maths in torch eager on the CPU,
   from the same weights.

Contenders run interleaved (one run of each, in rotating order, per repeat) so that a busy
neighbour slows them alike; the tables show medians over the repeats.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("MPLBACKEND", "Agg")             # the notebook's module imports pyplot

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fromscratch  # noqa: E402
from _results import RESULTS, machine, write_section  # noqa: E402
from fromscratch import numpy_nn as nn  # noqa: E402
from fromscratch.demos import sine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load_notebook():
    path = ROOT / "tests" / "fixtures" / "seed_notebook_nn.py"
    spec = importlib.util.spec_from_file_location("seed_notebook_nn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- 1. the sine experiment ----------------------------------------------------------------

def sine_runs(notebook, seed: int, epochs: int) -> dict[str, Callable[[], tuple[float, float]]]:
    """contender -> run(): (seconds for the training loop, final loss)."""
    x_cols, y_cols = notebook.generate_sine_data()     # (1, 100): the notebook's layout

    def run_notebook() -> tuple[float, float]:
        np.random.seed(seed)
        net = notebook.NeuralNetwork([1, 25, 1], learning_rate=0.3)
        with contextlib.redirect_stdout(io.StringIO()):    # it prints epoch 1 regardless
            start = time.perf_counter()
            net.train(x_cols, y_cols, epochs, log_interval=epochs + 1)
            seconds = time.perf_counter() - start
        return seconds, float(net.loss_history[-1])

    x, y = sine.data()                                 # (100, 1): ours

    def run_ours() -> tuple[float, float]:
        model, opt = sine.build(sine.NOTEBOOK, seed)
        loss_fn = nn.MSELoss()
        history = []
        start = time.perf_counter()
        for _ in range(epochs):
            pred = model.forward(x)
            loss = loss_fn.forward(pred, y)
            history.append(loss)
            model.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
        seconds = time.perf_counter() - start
        return seconds, float(history[-1])

    return {"notebook": run_notebook, "ours": run_ours}


# --- 2. the MLP step ---------------------------------------------------------------------

SIZES = [784, 256, 256, 10]


def mlp_runs(batch: int, steps: int,
             lr: float = 0.01) -> dict[str, Callable[[], tuple[float, float]]]:
    """contender -> run(): (seconds per training step, loss of the last step)."""
    torch.manual_seed(0)
    pairs = list(zip(SIZES[:-1], SIZES[1:]))
    theirs_layers: list[torch.nn.Module] = []
    ours_layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairs):
        theirs_layers.append(torch.nn.Linear(a, b))
        ours_layers.append(nn.Linear(a, b, dtype=np.float32))
        if i < len(pairs) - 1:
            theirs_layers.append(torch.nn.ReLU())
            ours_layers.append(nn.ReLU())
    theirs, ours = torch.nn.Sequential(*theirs_layers), nn.Sequential(*ours_layers)
    ours.load_state_dict(theirs.state_dict())
    ours.input_grad = False            # x is data: torch computes no dL/dx for it either
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
    labels = rng.integers(0, SIZES[-1], batch)
    xt, lt = torch.from_numpy(x), torch.from_numpy(labels)
    topt = torch.optim.SGD(theirs.parameters(), lr=lr)
    opt, loss_fn = nn.SGD(ours, lr=lr), nn.CrossEntropyLoss()

    def run_torch() -> tuple[float, float]:
        start = time.perf_counter()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(theirs(xt), lt)
            loss.backward()
            topt.step()
            topt.zero_grad()
        return (time.perf_counter() - start) / steps, loss.item()

    def run_ours() -> tuple[float, float]:
        start = time.perf_counter()
        for _ in range(steps):
            loss = loss_fn.forward(ours.forward(x), labels)
            ours.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
        return (time.perf_counter() - start) / steps, float(loss)

    return {"torch": run_torch, "ours": run_ours}


# --- timing and reporting ----------------------------------------------------------------

def interleaved(runs: dict[str, Callable[[], tuple[float, float]]], repeats: int,
                warmup: int) -> dict[str, tuple[float, float]]:
    """contender -> (median seconds, last loss), one run of each per repeat, rotating."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, float] = {}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, losses[name] = runs[name]()
            times[name].append(seconds)
    return {n: (statistics.median(times[n]), losses[n]) for n in names}




def blas() -> str:
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{info.get('name', '?')} {info.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 -- informative only
        return "unknown"


def tables(s: dict[str, tuple[float, float]], m: dict[str, tuple[float, float]]) -> list[str]:
    ratio = s["ours"][0] / s["notebook"][0]
    verdict = "met" if ratio <= 1.0 else "NOT met"
    return [
        f"Sine, notebook configuration, {ARGS.epochs} epochs, seed {ARGS.seed} "
        f"(median of {ARGS.repeats}):",
        "",
        "| contender | time (s) | final loss |",
        "|---|---:|---:|",
        f"| notebook's NeuralNetwork | {s['notebook'][0]:.3f} | {s['notebook'][1]:.6f} |",
        f"| fromscratch.numpy_nn | {s['ours'][0]:.3f} | {s['ours'][1]:.6f} |",
        "",
        f"ours / notebook: **{ratio:.2f}x** (target <= 1.0x: {verdict}); "
        f"{s['ours'][0] / ARGS.epochs * 1e6:.1f} us per epoch.",
        "",
        f"MLP {SIZES}, ReLU, batch {ARGS.batch}, float32, cross-entropy + SGD, one training "
        f"step (median of {ARGS.repeats} x {ARGS.steps} steps):",
        "",
        "| contender | ms / step | loss after the run |",
        "|---|---:|---:|",
        f"| torch eager (CPU) | {m['torch'][0] * 1e3:.2f} | {m['torch'][1]:.5f} |",
        f"| fromscratch.numpy_nn | {m['ours'][0] * 1e3:.2f} | {m['ours'][1]:.5f} |",
        "",
        f"ours / torch: **{m['ours'][0] / m['torch'][0]:.2f}x**.",
    ]


def write_results(lines: list[str], command: str) -> None:
    write_section("numpy_engine", [
        "## NumPy engine (benchmarks/numpy_engine.py)",
        "",
        f"- machine: {machine()}",
        f"- NumPy {np.__version__} ({blas()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), fromscratch {fromscratch.__version__}, "
        f"Python {platform.python_version()}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- command: `{command}`",
        "",
        *lines,
    ])


def main(argv: list[str] | None = None) -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4000, help="sine epochs")
    p.add_argument("--seed", type=int, default=0, help="sine seed")
    p.add_argument("--batch", type=int, default=256, help="MLP batch")
    p.add_argument("--steps", type=int, default=20, help="MLP steps per repeat")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    ARGS = p.parse_args(argv)
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    notebook = load_notebook()
    s = interleaved(sine_runs(notebook, ARGS.seed, ARGS.epochs), ARGS.repeats, ARGS.warmup)
    m = interleaved(mlp_runs(ARGS.batch, ARGS.steps), ARGS.repeats, ARGS.warmup)
    lines = tables(s, m)
    print("\n".join(lines))
    if ARGS.write:
        argv_text = " ".join(sys.argv[1:] if argv is None else argv)
        write_results(lines, f"python benchmarks/numpy_engine.py {argv_text}".strip())
        print(f"wrote {RESULTS}")
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
