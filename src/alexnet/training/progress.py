"""What a run tells its user: log lines, progress bars (rich) with loss, images/s and ETA; ``quiet``
keeps only the log lines."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..runtime.engine import Meter

__all__ = ["Reporter", "RunWarning"]


class RunWarning(UserWarning):
    """The run looks unhealthy (it blew up, or sits at chance): what to try is in the message."""


_ESTIMATE_AFTER_STEPS, _ESTIMATE_AFTER_S = 10, 20.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Reporter:
    """Prints log lines to stderr and, unless quiet, shows one progress bar per pass over the data."""

    def __init__(self, quiet: bool = False, *, silent: bool = False) -> None:
        self.quiet, self.silent = quiet or silent, silent  # silent: the other processes of a data-parallel group
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.epochs_left = 0

    def log(self, message: str) -> None:
        if self.silent:
            return
        if self.quiet:
            print(message, file=sys.stderr, flush=True)
        else:
            self.console.print(message, markup=False)

    def start(self, cfg: Any, ds: Any, model: Any, ctx: Any, precision: str, run_dir: Path, start: int) -> None:
        """What the run is about to do: model, data, epochs, device; or that it already finished."""
        if start >= cfg.epochs:
            self.log(f"{run_dir} already finished its {cfg.epochs} epochs; pass --epochs N (more than {cfg.epochs}) "
                     "to train it longer")  # fmt: skip
            return
        self.epochs_left = cfg.epochs - start
        params = sum(p.numel() for p in model.parameters())
        n_train, n_val = len(ds.train.dataset), len(ds.val.dataset) if ds.val is not None else 0
        where = f"{ctx.world} processes on {ctx.device.type}" if ctx.distributed else cfg.model_parallel or ctx.device
        verb = f"resuming {run_dir} after epoch {start}: " if start else ""
        self.log(
            f"{verb}training {cfg.model} ({params / 1e6:.1f}M parameters) for {cfg.epochs} epochs on {n_train} images, "
            f"{ds.card.num_classes} classes ({n_val} for validation) | batch {cfg.batch_size}, lr {cfg.lr:g}, "
            f"{cfg.schedule} schedule | {where}, {precision} | recipe {cfg.recipe} | run folder {run_dir}"
        )
        if ds.val is None:
            self.log(
                "no validation set (no val/ folder, no --val-split): the best checkpoint and the plateau schedule "
                "follow the training metrics"
            )

    @contextlib.contextmanager
    def bar(
        self, epoch: int, epochs: int, phase: str, total: int, *, estimate: bool = False
    ) -> Iterator[Callable[[Meter, float], None]]:
        """Yield an ``on_step(meter, loss)`` callback that advances a bar (none when quiet). With
        ``estimate``, log once, after the first steps, how long an epoch and the rest of the run take."""
        begin, said = time.perf_counter(), not estimate

        def tell(meter: Meter) -> None:
            nonlocal said
            elapsed = time.perf_counter() - begin
            if said or (meter.steps < _ESTIMATE_AFTER_STEPS and elapsed < _ESTIMATE_AFTER_S) or meter.steps >= total:
                return
            said = True
            per_epoch = elapsed / meter.steps * total
            self.log(
                f"about {_duration(per_epoch)} per training epoch ({meter.summary()['images_per_s']:.0f} img/s), "
                f"{_duration(per_epoch * self.epochs_left)} for the {self.epochs_left} epochs to go"
            )

        if self.quiet:
            yield lambda meter, loss: tell(meter)
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
            task = progress.add_task(f"epoch {epoch + 1}/{epochs} {phase}", total=total, loss=float("nan"), ips=0.0)

            def on_step(meter: Meter, loss: float) -> None:
                progress.update(task, advance=1, loss=loss, ips=meter.summary()["images_per_s"])
                tell(meter)

            yield on_step

    def epoch(self, line: dict[str, Any], epochs: int, is_best: bool) -> None:
        val = (
            f" | val loss {line['val_loss']:.4f} top-1 {line['val_top1']:.2%} top-5 {line['val_top5']:.2%}"
            if line["val_top1"] is not None
            else ""
        )
        self.log(
            f"epoch {line['epoch']}/{epochs} | train loss {line['train_loss']:.4f} top-1 {line['train_top1']:.2%} | "
            f"{line['images_per_s']:.0f} img/s{val} | lr {line['lr']:.3g}{' | best' if is_best else ''}"
        )

    def warn(self, message: str | None, epoch: int) -> None:
        """A warning about the run's health (printed as one line by the CLI, catchable as a UserWarning)."""
        if message and not self.silent:
            warnings.warn(f"epoch {epoch}: {message}", RunWarning, stacklevel=2)

    def interrupted(self, epoch: int, writer: Any, run_dir: Path) -> None:
        if writer.history:
            done = writer.history[-1]["epoch"]
            self.log(
                f"interrupted in epoch {epoch + 1}: {writer.last} holds epoch {done} (best: {writer.best}); "
                f"continue with: alexnet train --resume {run_dir}"
            )
        else:
            self.log(f"interrupted in epoch {epoch + 1}, before the first checkpoint: nothing to resume in {run_dir}")
