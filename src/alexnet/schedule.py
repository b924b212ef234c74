"""Learning-rate schedules behind one interface, so the training loop never branches on their names.

``step_update()`` runs after every optimiser step, ``step(metric)`` after every epoch (``metric``: the
validation error, or the training loss without a validation set). Each schedule uses whichever of the
two it needs; the loop calls both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import UserError
from .recipes import TrainConfig

__all__ = ["Schedule", "make_schedule", "SCHEDULES"]

lrs = torch.optim.lr_scheduler


class Schedule:
    """A torch scheduler (or none) stepped per batch or per epoch, with or without the epoch's metric."""

    def __init__(self, scheduler: Any = None, *, per_batch: bool = False, uses_metric: bool = False) -> None:
        self.scheduler, self.per_batch, self.uses_metric = scheduler, per_batch, uses_metric

    def step_update(self) -> None:
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def step(self, metric: float) -> None:
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step(metric) if self.uses_metric else self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is None:
            return
        total = getattr(self.scheduler, "total_steps", None)
        if total is not None and state.get("total_steps", total) != total:
            raise UserError(
                f"this run's schedule spans {state['total_steps']} optimiser steps, but with this data and batch "
                f"size it would span {total}: resume on the same data with the same --batch-size"
            )
        self.scheduler.load_state_dict(state)


def _plateau(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> Schedule:
    # Section 5: divide the lr by 10 when the validation error stops improving.
    scheduler = lrs.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    return Schedule(scheduler, uses_metric=True)


def _step(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> Schedule:
    return Schedule(lrs.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.step_gamma))


def _onecycle(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> Schedule:
    total = cfg.epochs * steps
    if total < 2:
        raise UserError(
            f"the onecycle schedule needs at least 2 optimiser steps; this run has {total} "
            f"({cfg.epochs} epochs x {steps} batches): train longer or use --schedule constant"
        )
    # torch's OneCycleLR ends its warm-up at step pct * total - 1 and divides by the lengths of both
    # phases: keep both positive on very short runs (a no-op from 8 steps on with the default 0.25).
    pct = max(cfg.warmup_pct, min(2 / total, 1 - 0.5 / total))
    return Schedule(lrs.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct), per_batch=True)


def _poly(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> Schedule:
    # lr * (1 - t / T) ** power over the run's T optimiser steps, the large-batch LARS runs' policy.
    total = cfg.epochs * steps
    return Schedule(lrs.PolynomialLR(optimizer, total_iters=total, power=cfg.poly_power), per_batch=True)


def _constant(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> Schedule:
    return Schedule()


SCHEDULES: dict[str, Callable[[TrainConfig, torch.optim.Optimizer, int], Schedule]] = {
    "plateau": _plateau,
    "step": _step,
    "onecycle": _onecycle,
    "poly": _poly,
    "constant": _constant,
}


def make_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Schedule:
    """The schedule ``cfg.schedule`` names, for ``steps_per_epoch`` optimiser steps per epoch."""
    return SCHEDULES[cfg.schedule](cfg, optimizer, steps_per_epoch)
