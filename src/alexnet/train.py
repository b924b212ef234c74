"""``fit``: a whole training run, from a folder of images to a run directory.

RUN_DIR/
  config.yaml            the resolved config (recipe -> config file -> flags)
  metrics.jsonl          one JSON line per epoch
  curves.png             loss / top-1 / lr per epoch
  pca.json               the training set's RGB eigen-decomposition (fancy PCA, section 4.1)
  tb/                    TensorBoard event files
  checkpoints/last.safetensors   weights + metadata + training state (resumable)
  checkpoints/best.safetensors   weights + metadata of the best validation top-1
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data
from .checkpoint import (
    capture_rng,
    load_training_state,
    model_state,
    read_checkpoint,
    read_metadata,
    restore_rng,
    save_checkpoint,
)
from .engine import TrainingDiverged, evaluate, train_one_epoch
from .errors import UserError
from .fast import default_precision, sgd_kwargs, tune_cpu_allocator
from .plots import plot_curves
from .progress import Reporter
from .recipes import TrainConfig, config_from_dict, config_to_dict, save_config
from .registry import create_model, get_spec

__all__ = ["fit", "resolve_device", "resolve_precision", "RunResult"]

RunResult = dict[str, Any]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> the fast mode accepted for this device (see fast.py); explicit choices are checked."""
    if requested == "auto":
        return default_precision(device, training=True)
    if requested == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return requested


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_meta(cfg: TrainConfig, classes: list[str]) -> dict[str, Any]:
    """The data contract stored with every checkpoint: what predict/evaluate/export need."""
    spec = get_spec(cfg.model)
    return {
        "model": cfg.model,
        "num_classes": len(classes),
        "classes": classes,
        "input_size": cfg.input_size or spec.data.input_size,
        "resize_size": cfg.resize_size or spec.data.resize_size,
        "mean": list(spec.data.mean),
        "std": list(spec.data.std),
        "recipe": cfg.recipe,
        "config": config_to_dict(cfg),
    }


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    lrs = torch.optim.lr_scheduler
    if cfg.schedule == "plateau":
        # Section 5: divide the lr by 10 when the validation error stops improving.
        return lrs.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    if cfg.schedule == "step":
        return lrs.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.step_gamma)
    if cfg.schedule == "onecycle":
        total = max(cfg.epochs * steps_per_epoch, 1)
        return lrs.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup_pct)
    return None


def fit(
    data_root: str | Path | None,
    run_dir: str | Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Train ``cfg.model`` on ``data_root`` into ``run_dir``; ``resume`` continues its ``last`` checkpoint
    (on the data it was trained on when ``data_root`` is None)."""
    run_dir = Path(run_dir)
    report = Reporter(quiet)
    last_path = run_dir / "checkpoints" / "last.safetensors"
    best_path = run_dir / "checkpoints" / "best.safetensors"
    resume_tensors: dict[str, torch.Tensor] | None = None
    resume_meta: dict[str, Any] = {}
    if resume:
        resume_tensors, resume_meta = read_checkpoint(last_path)
        data_root = data_root if data_root is not None else resume_meta.get("data")
    elif last_path.exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it or pick a new --output")

    if data_root is None:
        raise UserError("no data folder given")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cpu":
        tune_cpu_allocator()  # keeps large freed blocks in the heap: no page faults every step (fast.py)
    seed_everything(cfg.seed)
    spec = get_spec(cfg.model)
    resize = cfg.resize_size or spec.data.resize_size
    crop = cfg.input_size or spec.data.input_size
    if crop > resize:
        raise UserError(f"--input-size {crop} is larger than --resize-size {resize}")

    # Workers decode and down-sample to resize x resize uint8 (section 2); crops happen on the batch.
    decode = data.decode_transform(resize)
    train_ds, val_ds, classes = data.make_datasets(
        data_root,
        val_split=cfg.val_split or None,
        seed=cfg.seed,
        strict=cfg.strict,
        train_transform=decode,
        eval_transform=decode,
    )
    if resume and resume_meta["classes"] != classes:
        raise UserError(f"{last_path} was trained on classes {resume_meta['classes'][:5]}..., not this data's")
    meta = {**model_meta(cfg, classes), "data": str(Path(data_root).resolve())}
    mean, std = torch.tensor(meta["mean"], device=device), torch.tensor(meta["std"], device=device)

    dropout = None if cfg.dropout < 0 else cfg.dropout
    model = create_model(cfg.model, len(classes), init=cfg.init or None, dropout=dropout)
    if resume_tensors is not None:
        model.load_state_dict(model_state(resume_tensors), strict=True)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = data.make_loader(
        train_ds, cfg.batch_size, shuffle=True, workers=cfg.workers, seed=cfg.seed, generator=generator
    )
    val_loader = (
        data.make_loader(val_ds, max(cfg.batch_size, 64), shuffle=False, workers=cfg.workers, seed=cfg.seed)
        if val_ds is not None
        else None
    )

    pca = None
    if cfg.pca_std > 0:
        pca = data.IMAGENET_PCA if cfg.pca == "imagenet" else data.load_or_compute_pca(run_dir, train_ds, seed=cfg.seed)
        pca = tuple(torch.as_tensor(t, dtype=torch.float32, device=device) for t in pca)

    def augment(images: torch.Tensor) -> torch.Tensor:
        return data.batch_augment(images, crop=crop, flip=cfg.flip, pca=pca, pca_std=cfg.pca_std, mean=mean, std=std)

    # The paper's update rule (section 5) is torch's SGD with momentum and L2 decay; the fused kernel
    # does the same update in one pass over the weights (fast.sgd_kwargs).
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
        **sgd_kwargs(device),
    )
    scheduler = _scheduler(cfg, optimizer, len(train_loader))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    start_epoch, best_top1, best_loss = 0, -1.0, float("inf")
    if resume_tensors is not None:
        rng = load_training_state(resume_tensors, resume_meta, optimizer, scheduler)
        restore_rng(rng, generator)
        start_epoch, best_top1 = resume_meta["epoch"], resume_meta.get("best_top1", -1.0)
        best_loss = resume_meta.get("best_loss", float("inf"))
        report.log(f"resuming {run_dir} after epoch {start_epoch}")

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    history = _read_history(run_dir / "metrics.jsonl", start_epoch)
    writer = _tensorboard(run_dir, purge_step=start_epoch)
    skipped_at_scan = len(train_ds.skipped) + (len(val_ds.skipped) if val_ds is not None else 0)
    report.log(
        f"training {cfg.model} on {len(train_ds)} images, {len(classes)} classes "
        f"({len(val_ds) if val_ds is not None else 0} for validation) | device {device}, {precision}, "
        f"recipe {cfg.recipe} | run dir {run_dir}"
    )

    if val_ds is None:
        report.log(
            "no validation set (no val/ folder, no --val-split): the best checkpoint and the plateau schedule "
            "follow the training metrics"
        )
    for epoch in range(start_epoch, cfg.epochs):
        lr = optimizer.param_groups[0]["lr"]
        per_batch = scheduler if cfg.schedule == "onecycle" else None
        try:
            with report.bar(f"epoch {epoch + 1}/{cfg.epochs} train", len(train_loader)) as on_step:
                tr = train_one_epoch(
                    model, train_loader, optimizer, augment, device=device, precision=precision,
                    channels_last=cfg.channels_last, label_smoothing=cfg.label_smoothing,
                    scheduler=per_batch, scaler=scaler, on_step=on_step,
                )  # fmt: skip
        except TrainingDiverged as e:
            kept = f"; the last good checkpoint is {last_path}" if last_path.exists() else ""
            message = f"{e} in epoch {epoch + 1} (lr {lr:g}): training stopped{kept}. Try a lower --lr."
            raise TrainingDiverged(message) from None
        va: dict[str, Any] = {}
        if val_loader is not None:
            with report.bar(f"epoch {epoch + 1}/{cfg.epochs} val", len(val_loader)) as on_step:
                va = evaluate(
                    model, val_loader, crop=crop, mean=mean, std=std, device=device, num_classes=len(classes),
                    precision=precision, channels_last=cfg.channels_last, on_step=on_step,
                )  # fmt: skip
        if cfg.schedule == "plateau":
            scheduler.step(1.0 - va["top1"] if va else tr["loss"])
        elif cfg.schedule == "step":
            scheduler.step()

        line = {
            "epoch": epoch + 1,
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
        history.append(line)
        score = va["top1"] if va else tr["top1"]
        # Best validation top-1; a tie goes to the lower validation loss (on small validation sets
        # top-1 often plateaus at a value the later, better-calibrated epochs share).
        loss = va["loss"] if va else tr["loss"]
        is_best = score > best_top1 or (score == best_top1 and loss < best_loss)
        if is_best:
            best_top1, best_loss = score, loss
        ckpt_meta = {**meta, "epoch": epoch + 1, "metrics": line, "best_top1": best_top1, "best_loss": best_loss}
        # Order matters for crash safety: metrics and best first, then last (what --resume reads).
        _write_history(run_dir / "metrics.jsonl", history)
        if is_best:
            save_checkpoint(best_path, model, ckpt_meta)
        state = {"optimizer": optimizer, "scheduler": scheduler, "rng": capture_rng(generator)}
        save_checkpoint(last_path, model, ckpt_meta, **state)
        _log_tensorboard(writer, line)
        plot_curves(history, run_dir / "curves.png")
        val_text = (
            f" | val loss {line['val_loss']:.4f} top-1 {line['val_top1']:.2%} top-5 {line['val_top5']:.2%}"
            if va
            else ""
        )
        report.log(
            f"epoch {epoch + 1}/{cfg.epochs} | train loss {tr['loss']:.4f} top-1 {tr['top1']:.2%} | "
            f"{tr['images_per_s']:.0f} img/s{val_text} | lr {lr:.3g}{' | best' if is_best else ''}"
        )
    if writer is not None:
        writer.close()
    return {"run_dir": str(run_dir), "history": history, "best_top1": best_top1, "classes": classes}


def _read_history(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if upto_epoch == 0 or not path.exists():
        return []
    lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    return [h for h in lines if h["epoch"] <= upto_epoch]


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    from .files import atomic_write_bytes

    atomic_write_bytes(path, "".join(json.dumps(h) + "\n" for h in history).encode())


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


def continue_config(run_dir: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config a resumed run continues with: the saved one, plus flags given now (e.g. more --epochs)."""
    saved = config_from_dict(read_metadata(Path(run_dir) / "checkpoints" / "last.safetensors")["config"])
    cfg = config_from_dict(overrides, base=saved) if overrides else saved
    for name in ("model", "schedule"):
        if getattr(cfg, name) != getattr(saved, name):
            raise UserError(f"a resumed run keeps its {name} ({getattr(saved, name)}); start a new run to change it")
    if cfg.schedule == "onecycle" and cfg.epochs != saved.epochs:
        raise UserError(
            f"the onecycle schedule spans the run's {saved.epochs} epochs and cannot be extended; "
            "start a new run (or use --schedule step or plateau for runs you want to extend)"
        )
    return cfg
