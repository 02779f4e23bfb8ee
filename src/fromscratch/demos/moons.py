"""``fromscratch demo moons``: a NumPy-engine classifier with softmax cross-entropy.

Two interleaving half circles (generated here, as scikit-learn's ``make_moons``: 400
points, Gaussian noise 0.15), an MLP [2, 32, 32, 2] with ReLU and He initialisation,
Adam (lr 0.01, weight decay 1e-3 to keep the boundary smooth), 600 full-batch epochs.
Writes the loss and accuracy curves, the decision boundary, and an animation of the
boundary taking shape.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from .. import numpy_nn as nn
from ..argtypes import output_folder, positive_int

EPOCHS = 600
NOISE = 0.15
LR = 0.01
WEIGHT_DECAY = 1e-3
TARGET_ACCURACY = 0.97


def make_moons(n: int = 400, noise: float = NOISE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x (n, 2), labels (n,): class 0 on the upper arc (cos t, sin t), class 1 on the lower
    arc (1 - cos t, 1/2 - sin t), t evenly on [0, pi], plus N(0, noise^2) on each coordinate."""
    rng = np.random.default_rng(seed)
    n0, n1 = n // 2, n - n // 2
    t0, t1 = np.linspace(0, np.pi, n0), np.linspace(0, np.pi, n1)
    x = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], axis=1),
                        np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)])
    x += noise * rng.standard_normal(x.shape)
    return x, np.concatenate([np.zeros(n0, dtype=np.int64), np.ones(n1, dtype=np.int64)])


def build(seed: int, hidden: int = 32) -> nn.Sequential:
    rng = np.random.default_rng(seed + 1000)           # the weights' stream, not the data's
    model = nn.Sequential(nn.Linear(2, hidden, init="he", rng=rng), nn.ReLU(),
                          nn.Linear(hidden, hidden, init="he", rng=rng), nn.ReLU(),
                          nn.Linear(hidden, 2, init="he", rng=rng))
    model.input_grad = False                           # the points are data: no dL/dx
    return model


@dataclass
class Run:
    seed: int
    epochs: int
    losses: list[float]
    accuracies: list[float]
    final_loss: float
    accuracy: float
    model: nn.Sequential
    x: np.ndarray
    labels: np.ndarray
    grid: tuple[np.ndarray, np.ndarray] | None = None
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)   # epoch -> P(class 1) on grid
    seconds: float = 0.0


def grid_for(x: np.ndarray, steps: int = 120) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = x.min(axis=0) - 0.5, x.max(axis=0) + 0.5
    return np.meshgrid(np.linspace(lo[0], hi[0], steps), np.linspace(lo[1], hi[1], steps))


def prob_class1(model: nn.Module, points: np.ndarray) -> np.ndarray:
    logits = model.forward(points)
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p[:, 1] / p.sum(axis=1)


def train(seed: int = 0, epochs: int = EPOCHS, lr: float = LR,
          weight_decay: float = WEIGHT_DECAY, snapshot_at: tuple[int, ...] = (),
          on_progress=None) -> Run:
    x, labels = make_moons(seed=seed)
    model = build(seed)
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.Adam(model, lr=lr, weight_decay=weight_decay)
    grid = grid_for(x) if snapshot_at else None
    points = None if grid is None else np.stack([grid[0].ravel(), grid[1].ravel()], axis=1)
    run = Run(seed, epochs, [], [], 0.0, 0.0, model, x, labels, grid)
    keep = set(snapshot_at)
    start = time.perf_counter()
    for epoch in range(epochs):
        if epoch in keep:
            run.snapshots[epoch] = prob_class1(model, points).reshape(grid[0].shape)
        logits = model.forward(x)
        loss = loss_fn.forward(logits, labels)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
        run.losses.append(float(loss))
        run.accuracies.append(float(np.mean(logits.argmax(axis=1) == labels)))
        if on_progress is not None and (epoch + 1) % 20 == 0:
            on_progress(epoch + 1, run.losses[-1])
    run.seconds = time.perf_counter() - start
    logits = model.forward(x)
    run.final_loss = float(loss_fn.forward(logits, labels))
    run.accuracy = float(np.mean(logits.argmax(axis=1) == labels))
    if points is not None:
        run.snapshots[epochs] = prob_class1(model, points).reshape(grid[0].shape)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fromscratch demo moons", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    p.add_argument("--epochs", type=positive_int, default=EPOCHS)
    p.add_argument("--frames", type=positive_int, default=14, help="frames in the GIF")
    p.add_argument("--out", default="demo-output/moons")
    args = p.parse_args(argv)

    out = output_folder(p, args.out)
    from . import _engine_demo as demo
    shots = demo.snapshot_epochs(args.epochs, args.frames)
    print(f"moons: MLP [2, 32, 32, 2] with ReLU, cross-entropy, Adam, {args.epochs} epochs, "
          f"seed {args.seed}")
    with demo.progress("training", args.epochs) as update:
        run = train(args.seed, args.epochs, snapshot_at=tuple(shots), on_progress=update)
    print(f"final cross-entropy {run.final_loss:.4f}, training accuracy {run.accuracy:.1%}, "
          f"training {run.seconds:.2f} s")

    files = demo.output_files(out, "decision boundary", "boundary")
    demo.write_json(files["metrics"], {
        "demo": "moons", "seed": args.seed, "epochs": args.epochs, "points": len(run.labels),
        "noise": NOISE, "optimizer": "adam", "lr": LR, "weight_decay": WEIGHT_DECAY,
        "final_loss": run.final_loss, "accuracy": run.accuracy,
        "target_accuracy": TARGET_ACCURACY, "training_seconds": run.seconds,
        "loss_every_20_epochs": run.losses[::20],
    })
    _plots(run, files, demo)
    demo.print_files("moons: files", files)
    return 0


def _plots(run: Run, files: dict[str, str], demo) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(run.losses, color="tab:blue", label="cross-entropy")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title=f"training, seed {run.seed}")
    ax2 = ax.twinx()
    ax2.plot(run.accuracies, color="tab:orange", label="accuracy")
    ax2.axhline(TARGET_ACCURACY, color="gray", ls="--", lw=0.8)
    ax2.set(ylabel="training accuracy", ylim=(0.4, 1.01))
    fig.legend(loc="center right", bbox_to_anchor=(0.85, 0.5), fontsize=8)
    demo.save_figure(fig, files["loss curve"])

    xx, yy = run.grid

    def draw(ax, prob, text):
        ax.contourf(xx, yy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
        ax.contour(xx, yy, prob, levels=[0.5], colors="k", linewidths=1)
        ax.scatter(run.x[:, 0], run.x[:, 1], c=run.labels, cmap="RdBu_r", s=8,
                   edgecolors="k", linewidths=0.3)
        ax.set(xticks=[], yticks=[])
        ax.set_title(text, fontsize=9)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    draw(ax, run.snapshots[run.epochs],
         f"decision boundary, accuracy {run.accuracy:.1%}, seed {run.seed}")
    demo.save_figure(fig, files["decision boundary"])

    epochs = sorted(run.snapshots)
    fig, ax = plt.subplots(figsize=(4, 2.9))

    def frame(i: int) -> None:
        e = epochs[i]
        ax.clear()
        acc = run.accuracies[e] if e < len(run.accuracies) else run.accuracy
        draw(ax, run.snapshots[e], f"epoch {e}, accuracy {acc:.1%}")

    demo.save_gif(fig, frame, len(epochs), files["animation"])


if __name__ == "__main__":
    raise SystemExit(main())
