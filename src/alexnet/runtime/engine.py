"""The training step and the evaluation loop: plain PyTorch, readable top to bottom.

Data arrive as whole uint8 batches of the paper's 256x256 down-sampled images (section 2); the
random crops, flips, PCA lighting and normalisation run on the batch, on the training device, so the
workers only read and decode.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ..errors import TrainingDiverged, UserError
from .device import autocast_context as autocast

__all__ = ["train_one_epoch", "evaluate", "forward_loss", "backward_update", "normalize", "topk_correct", "Meter"]


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float ``(x / 255 - mean) / std``."""
    return (images.float().div_(255) - mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many targets are among the top-k predictions, for each k (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets.view(-1, 1))
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


@dataclass
class Meter:
    """Running sums for one pass over the data."""

    loss: float = 0.0
    top1: int = 0
    top5: int = 0
    images: int = 0
    skipped: int = 0
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)

    def update(self, loss: float, logits: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.numel()
        c1, c5 = topk_correct(logits.detach(), targets)
        self.loss += loss * n
        self.top1 += c1
        self.top5 += c5
        self.images += n
        self.steps += 1

    def reduce(self, total: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the counts by their ``total`` over all processes (a sum across data-parallel ranks)."""
        counts = torch.tensor([self.loss, self.top1, self.top5, self.images, self.skipped], dtype=torch.float64)
        loss, top1, top5, images, skipped = total(counts).tolist()
        self.loss, self.top1, self.top5, self.images, self.skipped = (  # fmt: skip
            loss,
            int(top1),
            int(top5),
            int(images),
            int(skipped),
        )

    def summary(self) -> dict[str, float]:
        n = max(self.images, 1)
        secs = time.perf_counter() - self.start
        return {
            "loss": self.loss / n,
            "top1": self.top1 / n,
            "top5": self.top5 / n,
            "images": self.images,
            "skipped": self.skipped,
            "seconds": secs,
            "images_per_s": self.images / secs if secs > 0 else 0.0,
        }


def _batches(loader: Iterable, meter: Meter, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, targets) on ``device``; counts the files each batch skipped, drops empty batches; a batch
    that carries an error (an unreadable file under ``strict``) raises it."""
    for batch in loader:
        images, targets, skipped = batch[:3]
        if len(batch) > 3 and batch[3]:
            raise UserError(batch[3])
        meter.skipped += skipped
        if targets.numel():
            yield images.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def forward_loss(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    device: torch.device,
    precision: str = "fp32",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of one batch; the cross-entropy is taken in fp32 whatever the precision."""
    with autocast(device, precision):
        logits = forward(x)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    return loss, logits


def backward_update(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float = 0.0,
) -> float | None:
    """Gradients of ``loss`` and one optimiser step (with fp16 loss scaling when ``scaler`` is given).

    ``clip_grad_norm`` > 0 first rescales the gradients so that their global L2 norm is at most that value
    (``torch.nn.utils.clip_grad_norm_``) and returns the norm before clipping.
    """
    optimizer.zero_grad(set_to_none=True)
    norm = None
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad_norm > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
            norm = _clip(optimizer, clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad_norm > 0:
            norm = _clip(optimizer, clip_grad_norm)
        optimizer.step()
    return norm


def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return float(nn.utils.clip_grad_norm_(params, max_norm))


def recompute_bn_stats(
    model: nn.Module,
    loader: Iterable,
    augment: Callable[[torch.Tensor], torch.Tensor],
    *,
    batches: int,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
) -> int:
    """Replace every BatchNorm layer's running mean and variance by the plain average of the batch statistics
    over the first ``batches`` training batches, with the weights as they are now (PyTorch's
    ``swa_utils.update_bn``); returns how many batches it used (0: the model has no BatchNorm).

    A short run otherwise validates on exponential averages that still remember the weights of many steps ago
    (Keras' momentum of 0.99 averages over about 100 steps).
    """
    from torch.optim.swa_utils import update_bn

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return 0
    used = 0

    def inputs() -> Iterator[torch.Tensor]:
        nonlocal used
        for images, _ in itertools.islice(_batches(loader, Meter(), device), batches):
            used += 1
            x = augment(images)
            yield x.contiguous(memory_format=torch.channels_last) if channels_last else x

    with torch.no_grad(), autocast(device, precision):
        update_bn(inputs(), model)
    return used


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    augment: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    label_smoothing: float = 0.0,
    scheduler: Any = None,  # its step_update() runs after every optimiser step
    scaler: torch.amp.GradScaler | None = None,
    on_step: Callable[[Meter, float], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    clip_grad_norm: float = 0.0,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss, top-1/top-5 accuracy, images/s, skipped files, and with
    ``clip_grad_norm`` (see :func:`backward_update`) the largest gradient norm before clipping
    (``grad_norm_max``) and the fraction of steps that were clipped (``clipped``).

    A NaN or infinite loss raises :class:`TrainingDiverged` before it reaches the weights. With
    ``reduce`` (the sum over data-parallel processes) the numbers are those of all processes together,
    and a non-finite loss stops every process at the end of the epoch: the averaged gradient has carried
    it to all of them, and stopping one alone would leave the others waiting for it.
    """
    model.train()
    meter = Meter()
    norms: list[float] = []
    for images, targets in _batches(loader, meter, device):
        x = augment(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logits = forward_loss(
            model, x, targets, device=device, precision=precision, label_smoothing=label_smoothing
        )
        value = loss.item()
        if not math.isfinite(value) and reduce is None:
            raise TrainingDiverged(f"loss became {value} at step {meter.steps + 1}")
        norm = backward_update(loss, optimizer, scaler=scaler, clip_grad_norm=clip_grad_norm)
        if norm is not None:
            norms.append(norm)
        if scheduler is not None:
            scheduler.step_update()
        meter.update(value, logits, targets)
        if on_step is not None:
            on_step(meter, value)
    if reduce is not None:
        meter.reduce(reduce)
        if not math.isfinite(meter.loss):
            raise TrainingDiverged("the loss became non-finite on at least one process")
    summary = meter.summary()
    if norms:  # each process clips the same averaged gradients, so its own numbers are everyone's
        summary["grad_norm_max"] = max(norms)
        summary["clipped"] = sum(n > clip_grad_norm for n in norms) / len(norms)
    return summary


@torch.inference_mode()
def evaluate(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    *,
    crop: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    num_classes: int,
    precision: str = "fp32",
    channels_last: bool = False,
    ten_crop: bool = False,
    on_step: Callable[[Meter, float], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy, loss, per-class accuracy and the confusion matrix on ``loader``.

    ``model``: a module, or any callable from normalised float images to logits (a prepared
    :class:`~alexnet.runtime.modes.Predictor`, an ONNX session). Centre crop by default; ``ten_crop`` averages
    the softmax of the four corner and centre crops and their mirrors (section 4.1: the paper's
    test-time procedure), and also reports the centre crop alone (``result["center"]``), from the same
    forward passes. Targets outside ``[0, num_classes)`` are an error. With ``reduce`` (the sum over
    data-parallel processes, each holding a share of the data) the numbers are those of all of it.
    """
    if isinstance(model, nn.Module):
        model.eval()
    meter, center = Meter(), Meter()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    mean, std = mean.to(device), std.to(device)
    for images, targets in _batches(loader, meter, device):
        # ten_crop order: 4 corners, centre, then the same of the mirror image (index 4 is the centre).
        views = TF.ten_crop(images, [crop, crop]) if ten_crop else (TF.center_crop(images, [crop, crop]),)
        probs = torch.zeros(images.shape[0], num_classes, device=device)
        for i, view in enumerate(views):
            x = normalize(view, mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                p = model(x).float().softmax(dim=1).to(device)
            probs += p
            if ten_crop and i == 4:
                center.update(_nll(p, targets), p, targets)
        probs /= len(views)
        loss = _nll(probs, targets)
        meter.update(loss, probs, targets)
        confusion += torch.bincount(targets.cpu() * num_classes + probs.argmax(1).cpu(), minlength=num_classes**2).view(
            num_classes, num_classes
        )
        if on_step is not None:
            on_step(meter, loss)
    if reduce is not None:
        for m in (meter, center):
            m.reduce(reduce)
        confusion = reduce(confusion)
    result: dict[str, Any] = _with_errors(meter.summary())
    result["per_class_top1"] = (confusion.diag().float() / confusion.sum(1).clamp_min(1).float()).tolist()
    result["per_class_images"] = confusion.sum(1).tolist()
    result["confusion"] = confusion.tolist()
    result["ten_crop"] = ten_crop
    if ten_crop:
        result["center"] = _with_errors(center.summary())
    return result


def _nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    return F.nll_loss(probs.clamp_min(1e-12).log(), targets).item()


def _with_errors(summary: dict[str, float]) -> dict[str, float]:
    return {**summary, "top1_error": 1.0 - summary["top1"], "top5_error": 1.0 - summary["top5"]}
