"""What the demos share: a progress bar, metrics.json, figures and an animated GIF (each
written atomically: whole or not at all), and the closing list of files."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Callable, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import animation  # noqa: E402

from ..atomic import atomic_replace, atomic_write_text  # noqa: E402


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int, float], None]]:
    """Yields ``update(epoch, loss)``; shows a rich progress bar when stdout is a terminal."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.5g}"), TimeElapsedColumn(),
                   disable=not sys.stdout.isatty())
    with bar:
        task = bar.add_task(description, total=total, loss=float("nan"))
        yield lambda done, loss: bar.update(task, completed=done, loss=loss)


def write_json(path: str, data: dict[str, Any]) -> str:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def save_figure(fig: plt.Figure, path: str, dpi: int = 100) -> str:
    with atomic_replace(path) as tmp:       # the temporary name keeps the format's suffix
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def save_gif(fig: plt.Figure, draw: Callable[[int], Any], frames: int, path: str,
             fps: int = 5, dpi: int = 60) -> str:
    """Render ``draw(i)`` for i in range(frames) into an animated GIF (Pillow)."""
    anim = animation.FuncAnimation(fig, draw, frames=frames, blit=False)
    with atomic_replace(path) as tmp:
        anim.save(tmp, writer=animation.PillowWriter(fps=fps), dpi=dpi)
    plt.close(fig)
    return path


def snapshot_epochs(epochs: int, frames: int) -> list[int]:
    """About ``frames`` epochs to photograph, denser at the start where the fit moves most:
    0, then geometrically spaced up to ``epochs``."""
    import numpy as np
    pts = np.unique(np.round(np.geomspace(1, epochs, frames - 1)).astype(int))
    return [0, *(int(p) for p in pts)]


def output_files(out: str, picture: str, stem: str) -> dict[str, str]:
    """The files an engine demo writes into ``out``, keyed by what they show and in the order
    they are listed: metrics, loss curve, the final ``picture`` (stem.png) and its animation
    over training (stem.gif)."""
    return {
        "metrics": os.path.join(out, "metrics.json"),
        "loss curve": os.path.join(out, "loss.png"),
        picture: os.path.join(out, f"{stem}.png"),
        "animation": os.path.join(out, f"{stem}.gif"),
    }


def print_files(title: str, files: dict[str, str]) -> None:
    print(title)
    width = max(len(k) for k in files)
    for what, path in files.items():
        print(f"  {what:<{width}}  {path}")
