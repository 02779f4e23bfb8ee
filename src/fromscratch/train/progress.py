"""A rich progress bar for training, shown only in a terminal and only on rank 0."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

Update = Callable[[float], None]


@contextmanager
def progress_bar(total: int | None, enabled: bool | None = None,
                 completed: int = 0, description: str = "training") -> Iterator[Update]:
    """Yields ``update(loss)``, called once per optimizer step.

    ``enabled=None`` shows the bar when stdout is a terminal; ``completed`` steps are
    already done (a resumed run).
    """
    if enabled is None:
        enabled = sys.stdout.isatty()
    if not enabled:
        yield lambda loss: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, completed=completed, loss="-")
        yield lambda loss: bar.update(task, advance=1, loss=f"{loss:.4g}")
