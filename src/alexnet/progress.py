"""Progress bars (rich) with loss, images/s and ETA; ``quiet`` keeps only the log lines."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .engine import Meter

__all__ = ["Reporter"]


class Reporter:
    """Prints log lines to stderr and, unless quiet, shows one progress bar per pass over the data."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def log(self, message: str) -> None:
        if self.quiet:
            print(message, file=sys.stderr, flush=True)
        else:
            self.console.print(message, markup=False)

    @contextlib.contextmanager
    def bar(self, description: str, total: int | None) -> Iterator[Callable[[Meter, float], None]]:
        """Yield an ``on_step(meter, loss)`` callback that advances a bar (a no-op when quiet)."""
        if self.quiet:
            yield lambda meter, loss: None
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total, loss=float("nan"), ips=0.0)

            def on_step(meter: Meter, loss: float) -> None:
                ips = meter.summary()["images_per_s"]
                progress.update(task, advance=1, loss=loss, ips=ips)

            yield on_step
