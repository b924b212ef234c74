"""The files of one training run, owned by one object (:class:`RunWriter`).

RUN_DIR/
  config.yaml            the resolved config (recipe -> config file -> flags)
  metrics.jsonl          one JSON line per epoch
  curves.png             loss / top-1 / lr per epoch
  pca.json               the training set's RGB eigen-decomposition (fancy PCA, section 4.1)
  tb/                    TensorBoard event files
  checkpoints/last.safetensors   weights + model card + training state (what --resume reads)
  checkpoints/best.safetensors   weights + model card of the best validation top-1

Crash safety: every file is written to a temporary file and renamed, and at the end of an epoch the
metrics and the best checkpoint are written before ``last``, so a run killed at any moment resumes
from a ``last`` whose epoch the metrics already hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UserError
from ..files import atomic_write_bytes, check_writable, clean_stale_temp_files
from ..models.checkpoint import save_checkpoint
from .plots import plot_curves
from .recipes import TrainConfig, save_config

__all__ = ["RunWriter", "last_checkpoint", "best_checkpoint"]


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.safetensors"


def best_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / "best.safetensors"


class RunWriter:
    """Metrics, checkpoints, TensorBoard and curves of a run folder; keeps the best score.

    ``resumed``: the metadata of the ``last`` checkpoint a run continues from; its metrics up to that
    epoch are kept, later ones (written after the ``last`` checkpoint a crash left behind) are dropped.
    """

    def __init__(self, run_dir: str | Path, resumed: dict[str, Any] | None = None, *, enabled: bool = True) -> None:
        resumed = resumed or {}
        start_epoch = resumed.get("epoch", 0)
        self.dir, self.enabled = Path(run_dir), enabled  # only one process of a data-parallel group writes
        self.last, self.best = last_checkpoint(self.dir), best_checkpoint(self.dir)
        if enabled:
            check_writable(self.dir / "config.yaml")
            for folder in (self.dir, self.dir / "checkpoints"):
                clean_stale_temp_files(folder)  # left by a process killed mid-write
        self.history = self._read_history(start_epoch)
        self.best_top1, self.best_loss = resumed.get("best_top1", -1.0), resumed.get("best_loss", float("inf"))
        self.start_epoch, self.tensorboard = start_epoch, None

    def _read_history(self, upto_epoch: int) -> list[dict[str, Any]]:
        path = self.dir / "metrics.jsonl"
        if upto_epoch == 0 or not path.exists():
            return []
        try:
            lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
            return [h for h in lines if h["epoch"] <= upto_epoch]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read {path} ({e}); it is not the metrics file alexnet train wrote") from e

    def write_config(self, cfg: TrainConfig) -> None:
        if self.enabled:
            save_config(cfg, self.dir / "config.yaml")

    def is_best(self, top1: float, loss: float) -> bool:
        """Best top-1 so far; a tie goes to the lower loss (on small validation sets top-1 often plateaus
        at a value the later, better-calibrated epochs share)."""
        return top1 > self.best_top1 or (top1 == self.best_top1 and loss < self.best_loss)

    def end_epoch(self, line: dict[str, Any], model: nn.Module, meta: dict[str, Any], **train_state: Any) -> bool:
        """Record an epoch: metrics, then the best checkpoint (if it is), then ``last`` with
        ``train_state`` (optimizer, scheduler); then TensorBoard and the curves. Returns is_best."""
        score, loss = (line["val_top1"], line["val_loss"]) if line["val_top1"] is not None else (
            line["train_top1"], line["train_loss"])  # fmt: skip
        is_best = self.is_best(score, loss)
        if is_best:
            self.best_top1, self.best_loss = score, loss
        self.history.append(line)
        meta = {
            **meta,
            "epoch": line["epoch"],
            "metrics": line,
            "best_top1": self.best_top1,
            "best_loss": self.best_loss,
        }
        if not self.enabled:
            return is_best
        atomic_write_bytes(self.dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history).encode())
        if is_best:
            save_checkpoint(self.best, model, meta)
        save_checkpoint(self.last, model, meta, **train_state)
        if self.tensorboard is None:
            self.tensorboard = _tensorboard(self.dir, purge_step=self.start_epoch)
        _log_tensorboard(self.tensorboard, line)
        plot_curves(self.history, self.dir / "curves.png")
        return is_best

    def close(self) -> None:
        if self.enabled and self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard(run_dir: Path, purge_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a stripped install still trains
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step or None)


def _log_tensorboard(writer: Any, line: dict[str, Any]) -> None:
    if writer is None:
        return
    for key, value in line.items():
        if key != "epoch" and value is not None:
            group = "train" if key.startswith("train_") else "val" if key.startswith("val_") else "misc"
            writer.add_scalar(f"{group}/{key.split('_', 1)[-1] if group != 'misc' else key}", value, line["epoch"])
    writer.flush()
