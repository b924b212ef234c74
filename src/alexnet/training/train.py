"""``fit``: a whole training run, from a folder of images to a run folder (see :mod:`alexnet.training.rundir`).

Split by what each part builds, like torchvision's reference script: :func:`load_data` (datasets,
loaders, the batch augmentation), :func:`build_model` and :func:`build_optimizer`, then the loop in
:func:`fit`, which leaves every file to the :class:`~alexnet.training.rundir.RunWriter` and every learning-rate
decision to the :class:`~alexnet.training.schedule.Schedule`.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import loaders, prepared
from ..data.datasets import resolve_dataset
from ..data.imagenet import class_words
from ..errors import FlagError, TrainingDiverged, UserError
from ..models.alexnet import min_input_size
from ..models.card import ModelCard
from ..models.checkpoint import load_training_state, model_state, read_checkpoint, read_metadata
from ..models.columns import to_columns, to_grouped
from ..models.registry import create_model, get_spec
from ..runtime.device import resolve_precision, sgd_kwargs, tune_cpu_allocator
from ..runtime.engine import evaluate, recompute_bn_stats, train_one_epoch
from ..runtime.modes import TRAINING_MODES, compile_in_place, resolve_training_mode
from . import distributed
from .distributed import Context, ShardSampler, parse_devices, place_columns
from .health import chance_warning
from .optim import LARS, lars_param_groups
from .progress import Reporter
from .recipes import TrainConfig, config_from_dict, config_to_dict, resolve_config
from .rundir import RunWriter, last_checkpoint
from .schedule import EpochScore, make_schedule

__all__ = [
    "fit",
    "load_data",
    "build_model",
    "build_optimizer",
    "continue_config",
    "resolve_run",
    "TrainData",
    "RunResult",
]

RunResult = dict[str, Any]


@dataclass
class TrainData:
    train: DataLoader | prepared.DeviceDecodeLoader
    val: DataLoader | prepared.DeviceDecodeLoader | None
    card: ModelCard  # the model's data contract: classes, sizes, mean/std
    augment: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> augmented, normalised float batch
    skipped: int  # files found unreadable when the folders were scanned
    root: Path

    def set_epoch(self, epoch: int) -> None:
        """Each epoch's shuffle is a function of (seed, epoch): the same on every process and after a resume."""
        for loader in (self.train, self.val):
            if loader is not None:
                loader.sampler.set_epoch(epoch)


def model_card(cfg: TrainConfig, classes: list[str], words: tuple[str, ...] = ()) -> ModelCard:
    """The card of the model ``cfg`` trains on ``classes`` (sizes checked against the model here)."""
    spec = get_spec(cfg.model)
    resize, crop = cfg.resize_size or spec.card.resize_size, cfg.input_size or spec.card.input_size
    if crop > resize:
        raise FlagError(f"the input size {crop} is larger than the resize size {resize} (--input-size, --resize-size)")
    if crop < min_input_size(spec):
        raise FlagError(f"{cfg.model} needs inputs of at least {min_input_size(spec)} pixels, not --input-size {crop}")
    return spec.card.trained(_saved_name(cfg), classes, crop, resize, words)


def load_data(data_root: str | Path, run_dir: Path, cfg: TrainConfig, ctx: Context) -> TrainData:
    """Datasets and loaders of ``data_root`` (an image folder or a prepared dataset: this process's share
    of them); the model card; the batch augmentation on the training device.

    Workers decode and down-sample to resize x resize uint8 (section 2), or read a prepared dataset's
    stored images; the random crops, flips, PCA lighting and normalisation run on whole batches on the
    device. A folder is scanned, and the PCA computed, once (by rank 0) and shared.
    """
    card = model_card(cfg, [])
    if prepared.is_prepared(data_root):  # read from its manifest by every process: no scan of the images
        train_ds, val_ds, classes = prepared.make_datasets(
            data_root, resize=card.resize_size, val_split=cfg.val_split or None, seed=cfg.seed
        )
        make_loader = functools.partial(prepared.make_loader, device=ctx.device)
    else:
        prepared.refuse_split_folder(data_root)
        decode = loaders.decode_transform(card.resize_size)
        scanned = None
        if ctx.is_main:
            scanned = loaders.make_datasets(
                data_root, val_split=cfg.val_split or None, seed=cfg.seed, strict=cfg.strict,
                train_transform=decode, eval_transform=decode,
            )  # fmt: skip
        train_ds, val_ds, classes = ctx.broadcast(scanned)
        make_loader = loaders.make_loader
    if len(classes) < 2:
        raise UserError(
            f"{data_root} has a single class folder ({classes[0]}): a classifier needs at least two classes "
            "(DATA/<class>/<images> with one folder per class)"
        )
    card = model_card(cfg, classes, class_words(classes, getattr(train_ds, "words", ())))
    batch = cfg.batch_size // ctx.world
    shard = functools.partial(ShardSampler, rank=ctx.rank, world=ctx.world, seed=cfg.seed)
    train = make_loader(train_ds, batch, sampler=shard(len(train_ds)), workers=cfg.workers)
    val = None
    if val_ds is not None:
        val = make_loader(val_ds, max(batch, 64), sampler=shard(len(val_ds), shuffle=False), workers=cfg.workers)

    pca = None
    if cfg.pca_std > 0:
        if cfg.pca == "imagenet":
            pca = loaders.IMAGENET_PCA
        else:
            pca = ctx.broadcast(loaders.load_or_compute_pca(run_dir, train_ds, seed=cfg.seed) if ctx.is_main else None)
        pca = tuple(torch.as_tensor(t, dtype=torch.float32, device=ctx.device) for t in pca)
    mean, std = torch.tensor(card.mean, device=ctx.device), torch.tensor(card.std, device=ctx.device)

    def augment(images: torch.Tensor) -> torch.Tensor:
        return loaders.batch_augment(
            images, crop=card.input_size, flip=cfg.flip, pca=pca, pca_std=cfg.pca_std, mean=mean, std=std
        )

    skipped = len(train_ds.skipped) + (len(val_ds.skipped) if val_ds is not None else 0)
    return TrainData(train, val, card, augment, skipped, Path(data_root).resolve())


def _saved_name(cfg: TrainConfig) -> str:
    """The model name checkpoints record: the grouped form when the columns are split over devices, so
    the weights load anywhere without the split."""
    return "alexnet2012" if cfg.model_parallel else cfg.model


def build_model(cfg: TrainConfig, num_classes: int, ctx: Context, state: dict | None = None) -> nn.Module:
    """The model on its device(s), with ``state`` (grouped-form weights) loaded, wrapped for data parallel."""
    dropout = None if cfg.dropout < 0 else cfg.dropout
    model = create_model(_saved_name(cfg), num_classes, init=cfg.init or None, dropout=dropout)
    if state is not None:
        model.load_state_dict(state, strict=True)
    devices = _column_devices(cfg, ctx)
    if devices:
        model = place_columns(to_columns(model), devices)
    else:
        model = model.to(ctx.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return ctx.wrap(model)


def _column_devices(cfg: TrainConfig, ctx: Context) -> list[torch.device]:
    """The two devices of ``--model-parallel`` (none without it), checked: they exist here, and the run is
    one process."""
    if not cfg.model_parallel:
        return []
    if ctx.distributed:
        raise FlagError(
            "--model-parallel runs one process over two devices; with torchrun each process would need its "
            "own pair of devices, which this version does not assign: use one or the other"
        )
    return parse_devices(cfg.model_parallel)


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def saved_module(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """What a checkpoint stores: the model without its data-parallel wrapper, columns joined."""
    return to_grouped(_unwrapped(model)) if cfg.model_parallel else _unwrapped(model)


def build_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The paper's update rule (section 5) is torch's SGD with momentum and L2 decay (fused: the same update
    in one pass over the weights); LARS for large global batches."""
    if cfg.optimizer == "lars":
        groups = lars_param_groups(model, cfg.weight_decay)
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov, **sgd_kwargs(device),
    )  # fmt: skip


def fit(
    data_root: str | Path | None, run_dir: str | Path, cfg: TrainConfig, *, resume: bool = False, quiet: bool = False
) -> RunResult:
    """Train ``cfg.model`` on ``data_root`` into ``run_dir``; ``resume`` continues its ``last`` checkpoint
    (on the data it was trained on when ``data_root`` is None). Under torchrun, one process of a
    data-parallel group; after an elastic restart it resumes by itself."""
    ctx = distributed.setup(cfg.device)
    new = not Path(run_dir).exists()
    try:
        return _fit(ctx, data_root, Path(run_dir), cfg, resume or _restart_of(Path(run_dir)), quiet)
    except UserError:
        if new and ctx.is_main:
            _remove_empty_folders(Path(run_dir))
        raise
    finally:
        distributed.teardown()


def _remove_empty_folders(run_dir: Path) -> None:
    """A run refused before it wrote anything leaves no empty run folder behind (a file keeps its folder)."""
    for folder in [*sorted((p for p in run_dir.rglob("*") if p.is_dir()), reverse=True), run_dir]:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            pass


def _restart_of(run_dir: Path) -> bool:
    return distributed.restarted() and last_checkpoint(run_dir).exists()


def _fit(
    ctx: Context, data_root: str | Path | None, run_dir: Path, cfg: TrainConfig, resume: bool, quiet: bool
) -> RunResult:
    report = Reporter(quiet or not ctx.is_main, silent=not ctx.is_main)
    tensors, saved = read_checkpoint(last_checkpoint(run_dir)) if resume else (None, {})
    if not resume and ctx.is_main and last_checkpoint(run_dir).exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it or pick a new --output")
    data_root = data_root if data_root is not None else saved.get("data")
    if data_root is None:
        raise UserError("no data folder given")
    if cfg.batch_size % ctx.world:
        raise FlagError(
            f"--batch-size {cfg.batch_size} (the global batch) does not split evenly over {ctx.world} processes"
        )
    _column_devices(cfg, ctx)  # a flag refused before anything is written
    resolve_precision(cfg.precision, ctx.device)  # an impossible precision is refused before any work
    if ctx.device.type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(cfg.seed)  # the initial weights
    writer = RunWriter(run_dir, saved, enabled=ctx.is_main)
    ds = load_data(data_root, run_dir, cfg, ctx)
    if resume and saved["classes"] != list(ds.card.classes):
        raise UserError(f"{writer.last} was trained on classes {saved['classes'][:5]}..., not this data's")
    model = build_model(cfg, ds.card.num_classes, ctx, model_state(tensors) if tensors is not None else None)
    mode, mode_lines = choose_mode(cfg, model, ds, ctx, saved)
    precision = TRAINING_MODES[mode].precision if mode else resolve_precision(cfg.precision, ctx.device)
    if mode and TRAINING_MODES[mode].engine == "compile":
        compile_in_place(model)
    optimizer = build_optimizer(cfg, model, ctx.device)
    schedule = make_schedule(cfg, optimizer, len(ds.train), ds.card.num_classes)
    scaler = torch.amp.GradScaler(ctx.device.type) if precision == "fp16" else None
    if tensors is not None:
        load_training_state(tensors, saved, optimizer, schedule)
    meta = {**ds.card.to_json(), "recipe": cfg.recipe, "config": config_to_dict(cfg), "data": str(ds.root)}
    if mode:
        meta["training_mode"] = mode
    writer.write_config(cfg)
    start = saved.get("epoch", 0)
    report.start(cfg, ds, model, ctx, precision, run_dir, start)
    for line in mode_lines if start < cfg.epochs else []:
        report.log(line)
    for epoch in range(start, cfg.epochs):
        lr = optimizer.param_groups[0]["lr"]
        ctx.seed(cfg.seed, epoch)
        ds.set_epoch(epoch)
        try:
            bar = report.bar(epoch, cfg.epochs, "train", len(ds.train), estimate=epoch == start)
            with bar as on_step, ctx.join(model):
                tr = train_one_epoch(
                    model, ds.train, optimizer, ds.augment, device=ctx.device, precision=precision,
                    channels_last=cfg.channels_last, label_smoothing=cfg.label_smoothing, scheduler=schedule,
                    scaler=scaler, on_step=_fault_point(on_step, ctx, epoch + 1), reduce=ctx.reduce,
                    clip_grad_norm=cfg.clip_grad_norm,
                )  # fmt: skip
            if cfg.bn_recompute_batches:
                _recompute_bn(model, ds, cfg, ctx, precision)
            va = _validate(model, ds, cfg, ctx, precision, report.bar(epoch, cfg.epochs, "val", len(ds.val or [])))
            schedule.step(epoch + 1, _score(tr, va))
            line = _epoch_line(epoch + 1, lr, tr, va, ds.skipped)
            is_best = writer.end_epoch(line, saved_module(model, cfg), meta, optimizer=optimizer, scheduler=schedule)
            ctx.barrier()  # no process starts the next epoch before the checkpoint of this one is complete
        except TrainingDiverged as e:
            kept = f"; the last good checkpoint is {writer.last}" if writer.last.exists() else ""
            message = f"{e} in epoch {epoch + 1} (lr {lr:g}): training stopped{kept}. Try a lower --lr."
            raise TrainingDiverged(message) from None
        except KeyboardInterrupt:
            report.interrupted(epoch, writer, run_dir)
            raise
        report.epoch(line, cfg.epochs, is_best)
        report.warn(chance_warning(writer.history, ds.card.num_classes, _score(tr, va).images), epoch + 1)
    writer.close()
    return {"run_dir": str(run_dir), "history": writer.history, "best_top1": writer.best_top1, "card": ds.card}


def choose_mode(
    cfg: TrainConfig, model: nn.Module, ds: TrainData, ctx: Context, saved: dict[str, Any]
) -> tuple[str | None, list[str]]:
    """The training mode (:data:`~alexnet.runtime.modes.TRAINING_MODES`) for ``cfg.precision``: the one a resumed run
    used (so that it continues as it began), else the one measured fastest for this run here
    (:func:`~alexnet.runtime.modes.resolve_training_mode`), chosen by rank 0 for every process. None where the
    modes do not apply (the two-device split, devices other than CPU and CUDA): ``precision`` alone. Also
    the lines that say why, for the log."""
    if cfg.model_parallel or ctx.device.type not in ("cpu", "cuda") or saved.get("epoch", 0) >= cfg.epochs:
        return None, []
    if cfg.precision == "auto" and saved.get("training_mode") in TRAINING_MODES:
        return saved["training_mode"], [f"training mode {saved['training_mode']}, as the run began"]
    result: tuple[str, dict[str, Any]] | None = None
    if ctx.is_main:
        per_process = cfg.batch_size // ctx.world
        size = ds.card.input_size
        result = resolve_training_mode(
            _unwrapped(model), cfg.precision, device=ctx.device, batch_shape=(per_process, 3, size, size),
            num_classes=ds.card.num_classes, steps=len(ds.train) * (cfg.epochs - saved.get("epoch", 0)),
            compile_ok=not ctx.distributed,
        )  # fmt: skip
    mode, why = ctx.broadcast(result)  # type: ignore[misc]
    lines = [f"training mode {why['reason']}"]
    lines += [f"passed over: {why['fallback_reason']}"] if why.get("fallback_reason") else []
    return mode, lines + ([f"note: {why['note']}"] if why.get("note") else [])


def _recompute_bn(model: nn.Module, ds: TrainData, cfg: TrainConfig, ctx: Context, precision: str) -> None:
    """BatchNorm statistics of the current weights (see :func:`~alexnet.runtime.engine.recompute_bn_stats`), averaged
    over the processes' shards so that every process validates, and rank 0 saves, the same ones."""
    module = _unwrapped(model)
    recompute_bn_stats(
        module, ds.train, ds.augment, batches=cfg.bn_recompute_batches, device=ctx.device, precision=precision,
        channels_last=cfg.channels_last,
    )  # fmt: skip
    if not ctx.distributed:
        return
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(ctx.sum(m.running_mean) / ctx.world)
            m.running_var.copy_(ctx.sum(m.running_var) / ctx.world)


def _validate(
    model: nn.Module, ds: TrainData, cfg: TrainConfig, ctx: Context, precision: str, bar: Any
) -> dict[str, Any]:
    """The validation numbers of all processes' shares together ({} without a validation set)."""
    if ds.val is None:
        return {}
    with bar as on_step:
        return evaluate(
            _unwrapped(model), ds.val, crop=ds.card.input_size, mean=torch.tensor(ds.card.mean),
            std=torch.tensor(ds.card.std), device=ctx.device, num_classes=ds.card.num_classes,
            precision=precision, channels_last=cfg.channels_last, on_step=on_step, reduce=ctx.reduce,
        )  # fmt: skip


def _score(tr: dict[str, Any], va: dict[str, Any]) -> EpochScore:
    """What the plateau rule watches: the validation error, or the training loss without a validation set."""
    if va:
        return EpochScore(1.0 - va["top1"], va["top1"], va["images"])
    return EpochScore(tr["loss"], tr["top1"], tr["images"])


def _fault_point(on_step: Callable, ctx: Context, epoch: int) -> Callable:
    """``ALEXNET_FAULT_INJECT=EPOCH:STEP:RANK`` makes that rank kill itself (SIGKILL, as a crashed machine
    would die) at that training step, on torchrun's first attempt only: how the tests check that an
    elastic restart resumes the run exactly."""
    spec = os.environ.get("ALEXNET_FAULT_INJECT")
    if not spec or distributed.restarted():
        return on_step
    at_epoch, at_step, at_rank = (int(v) for v in spec.split(":"))
    if (at_epoch, at_rank) != (epoch, ctx.rank):
        return on_step

    def step(meter: Any, loss: float) -> None:
        on_step(meter, loss)
        if meter.steps == at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    return step


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
        **{k: tr[k] for k in ("grad_norm_max", "clipped") if k in tr},
    }


def continue_config(run_dir: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config a resumed run continues with: the saved one, plus flags given now (e.g. more --epochs)."""
    saved = config_from_dict(read_metadata(last_checkpoint(run_dir))["config"])
    cfg = config_from_dict(overrides, base=saved) if overrides else saved
    for name in ("model", "schedule", "model_parallel", "optimizer"):
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


def resolve_run(
    data: str | None = None,
    *,
    dataset: str | None = None,
    recipe: str | None = None,
    config: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    resume: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
) -> tuple[str | Path | None, TrainConfig, Path]:
    """What ``alexnet train`` runs: its data (a folder, or a bundled ``dataset``; None to resume on the
    run's own), its config (``recipe`` -> ``config`` file -> ``overrides``; a resumed run's saved one plus
    ``overrides``) and its run folder (``output``, else ``runs/<model>-<time>``; ``resume``'s own)."""
    overrides = overrides or {}
    if data and dataset:
        raise FlagError("give DATA or --dataset, not both")
    source = resolve_dataset(dataset) if dataset else data
    if resume:
        if output and Path(output) != Path(resume):
            raise FlagError("--resume continues in its own run folder; leave out --output")
        if recipe or config:
            raise FlagError("a resumed run keeps its recipe; change single fields with flags (e.g. --epochs)")
        return source, continue_config(resume, overrides), Path(resume)
    if source is None:
        raise FlagError("give a data folder (DATA), --dataset digits, or --resume RUN_DIR")
    cfg = resolve_config(recipe or "paper2012", config, overrides)
    return source, cfg, Path(output or f"runs/{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
