"""A training step of a small Llama and of a resnet18-shaped ResNet, swapped
(``fromscratch.nn.swap``) against untouched, on this CPU.

    python benchmarks/swap_models.py            # print the table
    python benchmarks/swap_models.py --write    # and update benchmarks/RESULTS.md

Both models are Hugging Face's, built from configs with random weights (torchvision's
resnet18 does not import next to this machine's CPU torch; transformers' ResNet with
resnet18's widths and depths stands in). One step: forward with a loss, backward, SGD step,
zero_grad. After a warm-up the two contenders run interleaved, one step each per repeat in
an order shuffled per repeat, so that a busy neighbour slows both alike; the ratio is the
medians' ratio. The swapped models use the default backend ("auto": ``ops/`` on the CPU).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import random
import statistics
import sys
import time
from typing import Callable

import torch

from _results import machine, write_section

try:
    import transformers
except ImportError:                      # a test dependency: `make test` installs it
    sys.exit("benchmarks/swap_models.py needs transformers (pip install -e '.[dev]')")

from fromscratch.nn import swap


def llama() -> tuple[torch.nn.Module, Callable[[], dict]]:
    config = transformers.LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688,
                                      num_hidden_layers=4, num_attention_heads=4,
                                      num_key_value_heads=4, max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 1000, (8, 128))
    return model, lambda: {"input_ids": ids, "labels": ids}


def resnet18() -> tuple[torch.nn.Module, Callable[[], dict]]:
    config = transformers.ResNetConfig(num_channels=3, embedding_size=64,
                                       hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                       layer_type="basic", num_labels=10)
    model = transformers.ResNetForImageClassification(config)
    x, labels = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
    return model, lambda: {"pixel_values": x, "labels": labels}


def step_of(model: torch.nn.Module, batch: Callable[[], dict]) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        model(**batch()).loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def race(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per step of each, interleaved in a shuffled order per repeat."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for _ in range(repeats):
        random.shuffle(order)
        for name in order:
            t = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    rows = []
    for name, build in (("Llama (4 layers, 256 wide, batch 8 x 128 tokens)", llama),
                        ("ResNet-18 shape (batch 16, 3x64x64)", resnet18)):
        untouched, batch = build()
        swapped = copy.deepcopy(untouched)
        report = swap(swapped)
        steps = {"untouched": step_of(untouched, batch), "swapped": step_of(swapped, batch)}
        for step in steps.values():                      # warm-up
            for _ in range(3):
                step()
        med = race(steps, args.repeats)
        kinds = sorted({r.new.split("(")[0].rsplit(".", 1)[1] for r in report.replaced})
        rows.append(f"| {name} | {len(report.replaced)} ({', '.join(kinds)}) | "
                    f"{med['untouched'] * 1e3:.1f} | {med['swapped'] * 1e3:.1f} | "
                    f"{med['swapped'] / med['untouched']:.2f}x |")
        print(rows[-1], flush=True)
    lines = [f"Training step (forward, loss, backward, SGD) of a model swapped with "
             f"`fromscratch.nn.swap` against the same model untouched, float32, median of "
             f"{args.repeats} interleaved steps. {machine()}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}, {os.cpu_count()} threads. "
             f"`python benchmarks/swap_models.py --write`, {datetime.date.today()}.",
             "",
             "| model | modules swapped | untouched ms | swapped ms | swapped / untouched |",
             "|---|---|---|---|---|", *rows]
    if args.write:
        write_section("swap_models", lines)


if __name__ == "__main__":
    main()
