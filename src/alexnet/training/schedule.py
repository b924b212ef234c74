"""Learning-rate schedules behind one interface, so the training loop never branches on their names.

``step_update()`` runs after every optimiser step, ``step(epoch, score)`` after every epoch. Each schedule
uses whichever of the two it needs; the loop calls both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError
from .health import above_chance
from .recipes import TrainConfig

__all__ = ["Schedule", "EpochScore", "make_schedule", "SCHEDULES"]

lrs = torch.optim.lr_scheduler


@dataclass(frozen=True)
class EpochScore:
    """What an epoch schedule sees: the error the plateau rule watches (validation top-1 error, else the
    training loss), and the top-1 behind it with how many images it was measured on."""

    error: float
    top1: float
    images: int


class Schedule:
    """A torch scheduler (or none) stepped per batch or per epoch, an optional linear warm-up, and the
    plateau rule's gates.

    - warm-up (Goyal et al. 2017): optimizer step k of the first ``warmup_steps`` uses ``lr * k / steps``;
    - ``min_epochs``: the epoch scheduler sees no epoch before this one (a noisy start sets no bar);
    - ``after_learning``: nor any epoch before the watched top-1 has once been clearly above chance (a
      network at chance has no plateau: cutting its lr only freezes it there).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        per_batch: bool = False,
        uses_metric: bool = False,
        warmup_steps: int = 0,
        min_epochs: int = 0,
        after_learning: bool = False,
        num_classes: int = 0,
    ) -> None:
        self.optimizer, self.scheduler, self.per_batch, self.uses_metric = optimizer, scheduler, per_batch, uses_metric
        self.warmup_steps, self.warmup_done = warmup_steps, 0
        self.min_epochs, self.after_learning, self.num_classes, self.learned = (
            min_epochs,
            after_learning,
            num_classes,
            False,
        )
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self._warm()

    def _warm(self) -> None:
        """The lr of the next optimizer step while warming up."""
        if self.warmup_done < self.warmup_steps:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * (self.warmup_done + 1) / self.warmup_steps

    def step_update(self) -> None:
        """After every optimizer step."""
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()
        if self.warmup_done < self.warmup_steps:
            self.warmup_done += 1
            self._warm()

    def step(self, epoch: int, score: EpochScore) -> None:
        """After every epoch (``epoch`` counts from 1)."""
        self.learned = self.learned or above_chance(score.top1, self.num_classes, score.images)
        if self.scheduler is None or self.per_batch:
            return
        if not self.uses_metric:
            self.scheduler.step()
        elif epoch > self.min_epochs and (self.learned or not self.after_learning):
            self.scheduler.step(score.error)

    def state_dict(self) -> dict[str, Any]:
        state = self.scheduler.state_dict() if self.scheduler is not None else {}
        return {**state, "warmup_done": self.warmup_done, "learned": self.learned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.warmup_done = state.pop("warmup_done", 0)
        self.learned = state.pop("learned", False)
        if self.scheduler is None:
            return
        total = getattr(self.scheduler, "total_steps", None)
        if total is not None and state.get("total_steps", total) != total:
            raise UserError(
                f"this run's schedule spans {state['total_steps']} optimiser steps, but with this data and batch "
                f"size it would span {total}: resume on the same data with the same --batch-size"
            )
        self.scheduler.load_state_dict(state)


def _plateau(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> tuple[Any, dict]:
    # Section 5: divide the lr by 10 when the validation error stops improving.
    scheduler = lrs.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    return scheduler, {"uses_metric": True}


def _step(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> tuple[Any, dict]:
    return lrs.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.step_gamma), {}


def _onecycle(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> tuple[Any, dict]:
    total = cfg.epochs * steps
    if total < 2:
        raise UserError(
            f"the onecycle schedule needs at least 2 optimiser steps; this run has {total} "
            f"({cfg.epochs} epochs x {steps} batches): train longer or use --schedule constant"
        )
    # torch's OneCycleLR ends its warm-up at step pct * total - 1 and divides by the lengths of both
    # phases: keep both positive on very short runs (a no-op from 8 steps on with the default 0.25).
    pct = max(cfg.warmup_pct, min(2 / total, 1 - 0.5 / total))
    return lrs.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct), {"per_batch": True}


def _poly(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> tuple[Any, dict]:
    # lr * (1 - t / T) ** power over the run's T optimiser steps, the large-batch LARS runs' policy.
    total = cfg.epochs * steps
    return lrs.PolynomialLR(optimizer, total_iters=total, power=cfg.poly_power), {"per_batch": True}


def _constant(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> tuple[Any, dict]:
    return None, {}


# Each builds the torch scheduler of a schedule and says how the Schedule steps it.
SCHEDULES: dict[str, Callable[[TrainConfig, torch.optim.Optimizer, int], tuple[Any, dict]]] = {
    "plateau": _plateau,
    "step": _step,
    "onecycle": _onecycle,
    "poly": _poly,
    "constant": _constant,
}


def make_schedule(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, num_classes: int
) -> Schedule:
    """The schedule ``cfg.schedule`` names, for ``steps_per_epoch`` optimiser steps per epoch, with the
    config's warm-up and plateau gates. Warm-up and the torch scheduler both start from ``cfg.lr``."""
    scheduler, how = SCHEDULES[cfg.schedule](cfg, optimizer, steps_per_epoch)
    warmup = math.ceil(cfg.warmup_epochs * steps_per_epoch) if cfg.warmup_epochs > 0 else 0
    return Schedule(
        optimizer, scheduler, **how, warmup_steps=warmup, min_epochs=cfg.plateau_min_epochs,
        after_learning=cfg.plateau_after_learning, num_classes=num_classes,
    )  # fmt: skip
