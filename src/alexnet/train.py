"""``fit``: a whole training run, from a folder of images to a run folder (see :mod:`alexnet.rundir`).

Split by what each part builds, like torchvision's reference script: :func:`load_data` (datasets,
loaders, the batch augmentation), :func:`build_model` and :func:`build_optimizer`, then the loop in
:func:`fit`, which leaves every file to the :class:`~alexnet.rundir.RunWriter` and every learning-rate
decision to the :class:`~alexnet.schedule.Schedule`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import data, prepared
from .card import ModelCard
from .checkpoint import capture_rng, load_training_state, model_state, read_checkpoint, read_metadata, restore_rng
from .device import resolve_device, resolve_precision, sgd_kwargs, tune_cpu_allocator
from .engine import evaluate, train_one_epoch
from .errors import TrainingDiverged, UserError
from .models import min_input_size
from .progress import Reporter
from .recipes import TrainConfig, config_from_dict, config_to_dict
from .registry import create_model, get_spec
from .rundir import RunWriter, last_checkpoint
from .schedule import make_schedule

__all__ = ["fit", "load_data", "build_model", "build_optimizer", "continue_config", "TrainData", "RunResult"]

RunResult = dict[str, Any]


@dataclass
class TrainData:
    train: DataLoader | prepared.DeviceDecodeLoader
    val: DataLoader | prepared.DeviceDecodeLoader | None
    card: ModelCard  # the model's data contract: classes, sizes, mean/std
    augment: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> augmented, normalised float batch
    generator: torch.Generator  # the training loader's shuffling state (part of exact resume)
    skipped: int  # files found unreadable when the folders were scanned
    root: Path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(data_root: str | Path, run_dir: Path, cfg: TrainConfig, device: torch.device) -> TrainData:
    """Datasets and loaders of ``data_root`` (an image folder or a prepared dataset); the model card; the
    batch augmentation on ``device``.

    Workers decode and down-sample to resize x resize uint8 (section 2), or read a prepared dataset's
    stored images; the random crops, flips, PCA lighting and normalisation run on whole batches on the
    device.
    """
    spec = get_spec(cfg.model)
    resize, crop = cfg.resize_size or spec.card.resize_size, cfg.input_size or spec.card.input_size
    if crop > resize:
        raise UserError(f"the input size {crop} is larger than the resize size {resize} (--input-size, --resize-size)")
    if crop < min_input_size(spec):
        raise UserError(f"{cfg.model} needs inputs of at least {min_input_size(spec)} pixels, not --input-size {crop}")
    card = spec.card.trained(cfg.model, [], crop, resize)
    if prepared.is_prepared(data_root):  # read from its manifest: no scan of the images
        train_ds, val_ds, classes = prepared.make_datasets(
            data_root, resize=card.resize_size, val_split=cfg.val_split or None, seed=cfg.seed
        )
        make_loader = functools.partial(prepared.make_loader, device=device)
    else:
        prepared.refuse_split_folder(data_root)
        decode = data.decode_transform(card.resize_size)
        train_ds, val_ds, classes = data.make_datasets(
            data_root, val_split=cfg.val_split or None, seed=cfg.seed, strict=cfg.strict,
            train_transform=decode, eval_transform=decode,
        )  # fmt: skip
        make_loader = data.make_loader
    if len(classes) < 2:
        raise UserError(
            f"{data_root} has a single class folder ({classes[0]}): a classifier needs at least two classes "
            "(DATA/<class>/<images> with one folder per class)"
        )
    card = card.trained(cfg.model, classes)
    generator = torch.Generator().manual_seed(cfg.seed)
    train = make_loader(train_ds, cfg.batch_size, shuffle=True, workers=cfg.workers, generator=generator)
    val = None
    if val_ds is not None:
        val = make_loader(val_ds, max(cfg.batch_size, 64), shuffle=False, workers=cfg.workers, seed=cfg.seed)

    pca = None
    if cfg.pca_std > 0:
        pca = data.IMAGENET_PCA if cfg.pca == "imagenet" else data.load_or_compute_pca(run_dir, train_ds, seed=cfg.seed)
        pca = tuple(torch.as_tensor(t, dtype=torch.float32, device=device) for t in pca)
    mean, std = torch.tensor(card.mean, device=device), torch.tensor(card.std, device=device)

    def augment(images: torch.Tensor) -> torch.Tensor:
        return data.batch_augment(
            images, crop=card.input_size, flip=cfg.flip, pca=pca, pca_std=cfg.pca_std, mean=mean, std=std
        )

    skipped = len(train_ds.skipped) + (len(val_ds.skipped) if val_ds is not None else 0)
    return TrainData(train, val, card, augment, generator, skipped, Path(data_root).resolve())


def build_model(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    dropout = None if cfg.dropout < 0 else cfg.dropout
    model = create_model(cfg.model, num_classes, init=cfg.init or None, dropout=dropout).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def build_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The paper's update rule (section 5) is torch's SGD with momentum and L2 decay; the fused kernel
    does the same update in one pass over the weights."""
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov, **sgd_kwargs(device),
    )  # fmt: skip


def fit(
    data_root: str | Path | None, run_dir: str | Path, cfg: TrainConfig, *, resume: bool = False, quiet: bool = False
) -> RunResult:
    """Train ``cfg.model`` on ``data_root`` into ``run_dir``; ``resume`` continues its ``last`` checkpoint
    (on the data it was trained on when ``data_root`` is None)."""
    run_dir, report = Path(run_dir), Reporter(quiet)
    tensors, saved = read_checkpoint(last_checkpoint(run_dir)) if resume else (None, {})
    if not resume and last_checkpoint(run_dir).exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it or pick a new --output")
    data_root = data_root if data_root is not None else saved.get("data")
    if data_root is None:
        raise UserError("no data folder given")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cpu":
        tune_cpu_allocator()
    seed_everything(cfg.seed)
    writer = RunWriter(run_dir, saved)
    ds = load_data(data_root, run_dir, cfg, device)
    if resume and saved["classes"] != list(ds.card.classes):
        raise UserError(f"{writer.last} was trained on classes {saved['classes'][:5]}..., not this data's")
    model = build_model(cfg, ds.card.num_classes, device)
    optimizer = build_optimizer(cfg, model, device)
    schedule = make_schedule(cfg, optimizer, len(ds.train))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if tensors is not None:
        model.load_state_dict(model_state(tensors), strict=True)
        restore_rng(load_training_state(tensors, saved, optimizer, schedule), ds.generator)
    meta = {**ds.card.to_json(), "recipe": cfg.recipe, "config": config_to_dict(cfg), "data": str(ds.root)}
    writer.write_config(cfg)
    start = saved.get("epoch", 0)
    report.start(cfg, ds, model, device, precision, run_dir, start)
    for epoch in range(start, cfg.epochs):
        lr = optimizer.param_groups[0]["lr"]
        try:
            with report.bar(epoch, cfg.epochs, "train", len(ds.train), estimate=epoch == start) as on_step:
                tr = train_one_epoch(
                    model, ds.train, optimizer, ds.augment, device=device, precision=precision,
                    channels_last=cfg.channels_last, label_smoothing=cfg.label_smoothing,
                    scheduler=schedule, scaler=scaler, on_step=on_step,
                )  # fmt: skip
            va: dict[str, Any] = {}
            if ds.val is not None:
                with report.bar(epoch, cfg.epochs, "val", len(ds.val)) as on_step:
                    va = evaluate(
                        model, ds.val, crop=ds.card.input_size, mean=torch.tensor(ds.card.mean),
                        std=torch.tensor(ds.card.std), device=device, num_classes=ds.card.num_classes,
                        precision=precision, channels_last=cfg.channels_last, on_step=on_step,
                    )  # fmt: skip
            schedule.step(1.0 - va["top1"] if va else tr["loss"])
            line = _epoch_line(epoch + 1, lr, tr, va, ds.skipped)
            state = {"optimizer": optimizer, "scheduler": schedule, "rng": capture_rng(ds.generator)}
            is_best = writer.end_epoch(line, model, meta, **state)
        except TrainingDiverged as e:
            kept = f"; the last good checkpoint is {writer.last}" if writer.last.exists() else ""
            raise TrainingDiverged(
                f"{e} in epoch {epoch + 1} (lr {lr:g}): training stopped{kept}. Try a lower --lr."
            ) from None
        except KeyboardInterrupt:
            report.interrupted(epoch, writer, run_dir)
            raise
        report.epoch(line, cfg.epochs, is_best)
    writer.close()
    return {"run_dir": str(run_dir), "history": writer.history, "best_top1": writer.best_top1, "card": ds.card}


def _epoch_line(epoch: int, lr: float, tr: dict[str, Any], va: dict[str, Any], skipped_at_scan: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": tr["loss"],
        "train_top1": tr["top1"],
        "train_top5": tr["top5"],
        "val_loss": va.get("loss"),
        "val_top1": va.get("top1"),
        "val_top5": va.get("top5"),
        "images_per_s": tr["images_per_s"],
        "seconds": tr["seconds"] + va.get("seconds", 0.0),
        "skipped_files": skipped_at_scan + tr["skipped"] + va.get("skipped", 0),
    }


def continue_config(run_dir: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config a resumed run continues with: the saved one, plus flags given now (e.g. more --epochs)."""
    saved = config_from_dict(read_metadata(last_checkpoint(run_dir))["config"])
    cfg = config_from_dict(overrides, base=saved) if overrides else saved
    for name in ("model", "schedule"):
        if getattr(cfg, name) != getattr(saved, name):
            raise UserError(f"a resumed run keeps its {name} ({getattr(saved, name)}); start a new run to change it")
    if cfg.schedule == "onecycle":
        for name in ("epochs", "batch_size", "val_split"):
            if getattr(cfg, name) != getattr(saved, name):
                raise UserError(
                    f"the onecycle schedule spans the run's {saved.epochs} epochs of {saved.batch_size}-image batches "
                    f"and cannot change its {name.replace('_', '-')} ({getattr(saved, name)}) on resume; start a new "
                    "run (or use --schedule step or plateau for runs you want to change)"
                )
    return cfg
