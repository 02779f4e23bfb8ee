"""``fromscratch demo sine``: the seed notebook's experiment on the NumPy engine.

100 points of y = 20 sin(2 pi x) on [0, 1], a [1, 25, 1] network with a sigmoid hidden
layer, 4000 full-batch epochs of mean squared error.

``--seed-config`` is the notebook exactly: Xavier-uniform weights drawn from
``np.random.seed(seed)``'s stream in the notebook's order, zero biases, raw x, plain
gradient descent. The notebook reports mean((out - y)^2) but steps along (out - y)/m, the
gradient of *half* of it, with lr 0.3; on our MSELoss (gradient 2 (out - y)/m) the same
steps are lr 0.15.

The default configuration keeps the network, the data, the Xavier init and the 4000
epochs, and changes how it is trained (docs/numpy_engine.md says why):
x standardised to mean 0 and variance 1, Adam with lr 0.2, cosine decay of the rate to 0.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import numpy_nn as nn
from ..argtypes import output_folder, positive_int


@dataclass(frozen=True)
class Config:
    name: str
    optimizer: str          # "sgd" | "adam"
    lr: float
    cosine: bool            # decay lr to 0 over the epochs
    standardize_x: bool
    init: str = "xavier"
    rng: str = "Generator"  # "RandomState" draws as np.random.seed(seed) + np.random.uniform


NOTEBOOK = Config("notebook", "sgd", 0.15, cosine=False, standardize_x=False, rng="RandomState")
DEFAULT = Config("default", "adam", 0.2, cosine=True, standardize_x=True)
EPOCHS = 4000
TARGET = 0.01           # the default configuration's final MSE, every seed 0..9, at most


def data(n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """x (n, 1) evenly on [0, 1], y = 20 sin(2 pi x): the notebook's generate_sine_data,
    in our (samples, features) layout."""
    x = np.linspace(0, 1, n).reshape(-1, 1)
    return x, 20 * np.sin(2 * np.pi * x)


def build(config: Config, seed: int) -> tuple[nn.Sequential, nn.Optimizer]:
    rng = (np.random.RandomState(seed) if config.rng == "RandomState"
           else np.random.default_rng(seed))
    model = nn.Sequential(nn.Linear(1, 25, init=config.init, rng=rng), nn.Sigmoid(),
                          nn.Linear(25, 1, init=config.init, rng=rng))
    model.input_grad = False                           # x is data: no dL/dx needed
    opt: nn.Optimizer = (nn.Adam(model, lr=config.lr) if config.optimizer == "adam"
                         else nn.SGD(model, lr=config.lr))
    return model, opt


def inputs(config: Config, x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std() if config.standardize_x else x


@dataclass
class Run:
    config: Config
    seed: int
    epochs: int
    losses: list[float]                 # MSE at each epoch, before its update (as the notebook)
    final_loss: float                   # MSE of the trained network
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)
    model: nn.Sequential | None = None
    seconds: float = 0.0


def train(config: Config = DEFAULT, seed: int = 0, epochs: int = EPOCHS,
          snapshot_at: tuple[int, ...] = (), on_progress=None) -> Run:
    """Train one network; ``snapshot_at`` lists epochs whose predictions to keep."""
    x, y = data()
    xin = inputs(config, x)
    model, opt = build(config, seed)
    sched = nn.CosineAnnealingLR(opt, T_max=epochs) if config.cosine else None
    loss_fn = nn.MSELoss()
    losses, snaps, keep = [], {}, set(snapshot_at)
    start = time.perf_counter()
    for epoch in range(epochs):
        pred = model.forward(xin)
        loss = loss_fn.forward(pred, y)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
        losses.append(float(loss))
        if epoch in keep:
            snaps[epoch] = pred.copy()
        if on_progress is not None and (epoch + 1) % 50 == 0:
            on_progress(epoch + 1, losses[-1])
    seconds = time.perf_counter() - start
    pred = model.forward(xin)
    snaps[epochs] = pred
    final = float(loss_fn.forward(pred, y))
    return Run(config, seed, epochs, losses, final, snaps, model, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fromscratch demo sine", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    p.add_argument("--seed-config", action="store_true",
                   help="the notebook's configuration, reproduced exactly")
    p.add_argument("--epochs", type=positive_int, default=EPOCHS)
    p.add_argument("--frames", type=positive_int, default=16, help="frames in the GIF")
    p.add_argument("--out", default="demo-output/sine")
    args = p.parse_args(argv)

    out = output_folder(p, args.out)
    from . import _engine_demo as demo
    config = NOTEBOOK if args.seed_config else DEFAULT
    shots = demo.snapshot_epochs(args.epochs, args.frames)
    print(f"sine: [1, 25, 1] sigmoid network, {args.epochs} epochs, {config.name} "
          f"configuration ({config.optimizer}, lr {config.lr}), seed {args.seed}")
    with demo.progress("training", args.epochs) as update:
        run = train(config, args.seed, args.epochs, tuple(shots), on_progress=update)
    print(f"final MSE {run.final_loss:.6f} (first epoch {run.losses[0]:.2f}), "
          f"training {run.seconds:.2f} s")
    baseline = None
    if config is DEFAULT:                              # the notebook's run, for comparison
        baseline = train(NOTEBOOK, args.seed, args.epochs)
        print(f"the notebook's configuration from the same seed ends at "
              f"{baseline.final_loss:.6f}")

    files = demo.output_files(out, "fit", "fit")
    demo.write_json(files["metrics"], {
        "demo": "sine", "config": asdict(config), "seed": args.seed, "epochs": args.epochs,
        "final_loss": run.final_loss, "first_loss": run.losses[0],
        "target_final_loss": TARGET if config is DEFAULT else None,
        "notebook_config_final_loss": None if baseline is None else baseline.final_loss,
        "training_seconds": run.seconds,
        "loss_every_100_epochs": run.losses[::100],
    })
    _plots(run, files, demo, baseline)
    demo.print_files("sine: files", files)
    return 0


def _plots(run: Run, files: dict[str, str], demo, baseline: Run | None = None) -> None:
    import matplotlib.pyplot as plt
    x, y = data()
    title = f"{run.config.name} configuration, seed {run.seed}"

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = np.arange(1, len(run.losses) + 1)
    ax.semilogy(epochs, run.losses, lw=1.2, label=f"{run.config.name} configuration")
    if baseline is not None:
        ax.semilogy(epochs, baseline.losses, lw=1.0, color="tab:gray",
                    label="the notebook's configuration")
    if run.config is DEFAULT:
        ax.axhline(TARGET, color="gray", ls="--", lw=0.8, label=f"target {TARGET}")
    ax.legend(fontsize=8)
    ax.set(xlabel="epoch", ylabel="MSE", title=f"loss, {title}")
    ax.grid(True, which="both", alpha=0.3)
    demo.save_figure(fig, files["loss curve"])

    def draw_fit(ax, pred, label):
        ax.scatter(x[:, 0], y[:, 0], s=10, color="tab:blue", alpha=0.6, label="y = 20 sin(2 pi x)")
        ax.plot(x[:, 0], pred[:, 0], color="tab:red", lw=2, label=label)
        ax.set(xlim=(-0.02, 1.02), ylim=(-26, 26), xlabel="x", ylabel="y")
        ax.legend(loc="upper right", fontsize=8)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    draw_fit(ax, run.snapshots[run.epochs], f"network, MSE {run.final_loss:.4g}")
    ax.set_title(title)
    demo.save_figure(fig, files["fit"])

    epochs = sorted(run.snapshots)
    fig, ax = plt.subplots(figsize=(5, 3))
    draw_fit(ax, run.snapshots[epochs[0]], "network")
    ax.set_title(title, fontsize=9)
    line = ax.lines[0]
    label = ax.text(0.02, 0.04, "", transform=ax.transAxes, fontsize=9)

    def frame(i: int) -> None:                         # move the line, keep the axes
        e = epochs[i]
        mse = run.losses[e] if e < len(run.losses) else run.final_loss
        line.set_ydata(run.snapshots[e][:, 0])
        label.set_text(f"epoch {e}, MSE {mse:.3g}")

    demo.save_gif(fig, frame, len(epochs), files["animation"])


if __name__ == "__main__":
    raise SystemExit(main())
