"""Is the run learning? Chance-level tests shared by the plateau schedule and the chance warning.

A fresh classifier starts at loss ln(classes) and top-1 1/classes and moves away from both. Two ways a
run fails early: it blows up (the loss far above ln(classes) after the first steps), or it learns nothing
(loss and top-1 stay at chance, typically because the ReLUs died in a blow-up).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["above_chance", "chance_warning", "BLOWUP", "CHANCE_BAND", "STALLED"]

# An epoch whose mean training loss is above BLOWUP x ln(classes) blew up; healthy first epochs measured
# on the bundled photos sit at 1.0x, the paper's init at 4.5x.
BLOWUP = 1.5
# Within CHANCE_BAND of ln(classes) with top-1 not clearly above chance, an epoch learned nothing. One such
# epoch is normal at the start of a run on small data, so the warning needs two in a row.
CHANCE_BAND = 0.03
# ...and a loss that still falls by STALLED x ln(classes) from one to the next is a network starting to learn
# (measured on photos: the paper's dead network moves its validation loss by 0.1%, a starting one by 2%).
STALLED = 0.01
# What keeps a fresh alexnet2012 from blowing up at lr 0.01 (the paper2012 recipe's two departures).
_STABLE_START = "--init kaiming with --clip-grad-norm 5"


def above_chance(top1: float, num_classes: int, images: int, z: float = 3.0) -> bool:
    """Whether a top-1 accuracy measured on ``images`` images is clearly above chance (1 / classes): by more
    than ``z`` binomial standard errors of a guessing classifier's. The same test means the same thing on a
    small validation set (12 classes, 360 images: above 12.7%) and a large one (1000 and 50,000: 0.14%)."""
    p = 1.0 / max(num_classes, 1)
    return top1 > p + z * math.sqrt(p * (1 - p) / max(images, 1))


def _watched(line: dict[str, Any]) -> str:
    return "val" if line.get("val_loss") is not None else "train"


def _at_chance(line: dict[str, Any], num_classes: int, images: int) -> bool:
    split = _watched(line)
    chance = math.log(num_classes)
    loss, top1 = line[f"{split}_loss"], line[f"{split}_top1"]
    return abs(loss - chance) < CHANCE_BAND * chance and not above_chance(top1, num_classes, images)


def chance_warning(history: list[dict[str, Any]], num_classes: int, images: int) -> str | None:
    """A warning when the last epoch of ``history`` (metrics.jsonl lines) blew up, or the last two sat at
    chance with the loss no longer falling; ``images``: how many images the watched numbers (validation, else
    training) were measured on."""
    if num_classes < 2 or not history:
        return None
    chance, last = math.log(num_classes), history[-1]
    if last["train_loss"] > BLOWUP * chance:
        return (
            f"the training loss {last['train_loss']:.3g} is {last['train_loss'] / chance:.1f}x the chance level "
            f"ln({num_classes}) = {chance:.3g}: the first steps blew up (try {_STABLE_START}, --warmup-epochs or "
            "a lower --lr)"
        )
    split = _watched(last)
    stalled = len(history) >= 2 and history[-2][f"{split}_loss"] - last[f"{split}_loss"] < STALLED * chance
    if stalled and all(_at_chance(h, num_classes, images) for h in history[-2:]):
        if any(h["train_loss"] > BLOWUP * chance for h in history):
            cause = f"ReLUs killed by the blow-up of the first steps: try {_STABLE_START}"
        else:  # measured: torchvision's init at batch 256 on 1200 images moves the loss 0.1% an epoch
            cause = "too few or too small steps so far: try a smaller --batch-size, a higher --lr or more epochs"
        return (
            f"the network has been at chance for two epochs: {split} loss {last[f'{split}_loss']:.3g} ~ "
            f"ln({num_classes}) = {chance:.3g}, top-1 {last[f'{split}_top1']:.1%} "
            f"(chance {1 / num_classes:.1%}); likely {cause}"
        )
    return None
