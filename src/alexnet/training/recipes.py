"""Named training recipes as frozen dataclasses; every field overridable by a config file or a flag.

Resolution order (later wins): the recipe preset -> a YAML/TOML config file -> command-line flags.
The resolved config is saved in the run directory (``config.yaml``) and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import FlagError, UserError
from ..models.alexnet import MAX_INPUT_SIZE

__all__ = ["TrainConfig", "RECIPES", "resolve_config", "config_to_dict", "config_from_dict"]


def _f(default: Any, help: str) -> Any:  # noqa: A002 - the argparse word
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Each field is a ``--flag`` of ``alexnet train``."""

    recipe: str = _f("paper2012", "the preset the other fields start from")
    model: str = _f("alexnet2012", "architecture (see alexnet summary)")
    epochs: int = _f(90, "total epochs of the run (a resumed run continues up to this)")
    batch_size: int = _f(128, "images per SGD step, over all processes (torchrun's N processes take 1/N each)")
    lr: float = _f(0.01, "initial learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "L2 weight decay")
    optimizer: Literal["sgd", "lars"] = _f(
        "sgd", "sgd (the paper's), or lars: layer-wise adaptive rates for large global batches"
    )
    lars_eta: float = _f(0.001, "lars: the trust coefficient (the share of a layer's weight norm one step may move)")
    schedule: Literal["plateau", "step", "onecycle", "poly", "constant"] = _f(
        "plateau", "lr schedule: plateau (lr/10 when val error stops improving), step, onecycle, poly, constant"
    )
    plateau_patience: int = _f(2, "plateau: epochs without improvement before the lr drops")
    plateau_factor: float = _f(0.1, "plateau: lr multiplier at each drop")
    plateau_min_epochs: int = _f(0, "plateau: no lr drop in the first this many epochs")
    plateau_after_learning: bool = _f(
        False, "plateau: no lr drop before validation top-1 has been clearly above chance once"
    )
    step_size: int = _f(30, "step: epochs between lr drops")
    step_gamma: float = _f(0.1, "step: lr multiplier at each drop")
    warmup_pct: float = _f(0.25, "onecycle: fraction of the steps spent warming up")
    poly_power: float = _f(2.0, "poly: the power of (1 - step / total steps)")
    warmup_epochs: float = _f(
        0.0, "linear lr warm-up over this many epochs, per step from lr/steps to lr (Goyal et al. 2017); 0 = off"
    )
    clip_grad_norm: float = _f(0.0, "clip the gradients' global L2 norm at this value before each step; 0 = off")
    bn_recompute_batches: int = _f(
        0,
        "BatchNorm models: before each validation, recompute the running statistics over this many training "
        "batches with the current weights; 0 = keep the running averages",
    )
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing")
    init: Literal["", "paper", "caffe", "keras", "torch", "kaiming"] = _f(
        "", "weight init (see alexnet.models.alexnet.init_weights); '' = the model's own"
    )
    dropout: float = _f(-1.0, "dropout probability of fc6/fc7 (<0 = the model's own, 0.5)")
    resize_size: int = _f(0, "shorter side is resized to this, then centre-cropped square (0 = the model's)")
    input_size: int = _f(0, "random crop / model input size (0 = the model's: 227, 224 or 32)")
    flip: bool = _f(True, "random horizontal flips")
    pca_std: float = _f(0.1, "fancy-PCA lighting sigma (section 4.1); 0 turns it off")
    pca: Literal["dataset", "imagenet"] = _f("dataset", "PCA eigen-decomposition: of this training set, or ImageNet's")
    val_split: float = _f(0.0, "hold out this fraction of a folder without val/ (seeded, stratified)")
    strict: bool = _f(False, "unreadable images are errors instead of skipped with a warning")
    workers: int = _f(2, "data-loading worker processes (0: load in the main process)")
    device: str = _f("auto", "auto (CUDA, MPS, CPU), cpu, cuda, cuda:N, mps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", "auto: bf16 where the hardware computes it natively, fp16 on older GPUs, else fp32"
    )
    channels_last: bool = _f(True, "channels-last memory format (faster convolutions)")
    model_parallel: str = _f(
        "", "two devices, one per column of alexnet2012 (the paper's two-GPU split), e.g. cuda:0,cuda:1"
    )
    seed: int = _f(0, "seed of every random number generator (init, shuffling, augmentation)")

    def __post_init__(self) -> None:
        for problem in _range_problems(self):
            raise FlagError(problem)


def _range_problems(cfg: TrainConfig) -> list[str]:
    """What is out of range in ``cfg``, as messages naming the flag (checked when a config is made)."""
    finite = math.isfinite
    rules: list[tuple[str, bool, str]] = [
        ("epochs", cfg.epochs >= 1, "at least 1"),
        ("batch_size", cfg.batch_size >= 1, "at least 1"),
        ("lr", finite(cfg.lr) and cfg.lr > 0, "a positive finite number"),
        ("momentum", 0 <= cfg.momentum < 1, "in [0, 1)"),
        ("weight_decay", finite(cfg.weight_decay) and cfg.weight_decay >= 0, "a finite number >= 0"),
        ("plateau_patience", cfg.plateau_patience >= 0, "at least 0"),
        ("plateau_factor", 0 < cfg.plateau_factor < 1, "in (0, 1)"),
        ("step_size", cfg.step_size >= 1, "at least 1"),
        ("step_gamma", 0 < cfg.step_gamma <= 1, "in (0, 1]"),
        ("warmup_pct", 0 < cfg.warmup_pct < 1, "in (0, 1)"),
        ("poly_power", finite(cfg.poly_power) and cfg.poly_power > 0, "a positive finite number"),
        ("plateau_min_epochs", cfg.plateau_min_epochs >= 0, "at least 0"),
        ("warmup_epochs", finite(cfg.warmup_epochs) and cfg.warmup_epochs >= 0, "a finite number >= 0"),
        ("clip_grad_norm", finite(cfg.clip_grad_norm) and cfg.clip_grad_norm >= 0, "a finite number >= 0 (0: off)"),
        ("bn_recompute_batches", cfg.bn_recompute_batches >= 0, "an integer >= 0 (0: off)"),
        ("label_smoothing", 0 <= cfg.label_smoothing < 1, "in [0, 1)"),
        ("dropout", cfg.dropout == -1 or 0 <= cfg.dropout < 1, "in [0, 1), or -1 for the model's own"),
        ("resize_size", 0 <= cfg.resize_size <= MAX_INPUT_SIZE, f"0 (the model's) or 1 to {MAX_INPUT_SIZE}"),
        ("input_size", 0 <= cfg.input_size <= MAX_INPUT_SIZE, f"0 (the model's) or 1 to {MAX_INPUT_SIZE}"),
        ("pca_std", finite(cfg.pca_std) and cfg.pca_std >= 0, "a finite number >= 0"),
        ("val_split", 0 <= cfg.val_split < 1, "in [0, 1)"),
        ("workers", cfg.workers >= 0, "at least 0"),
        ("seed", 0 <= cfg.seed < 2**32, "in [0, 2**32)"),
        ("lars_eta", finite(cfg.lars_eta) and cfg.lars_eta > 0, "a positive finite number"),
    ]
    problems = [
        f"--{name.replace('_', '-')} must be {want}, got {getattr(cfg, name)}" for name, ok, want in rules if not ok
    ]
    if cfg.warmup_epochs and cfg.schedule == "onecycle":
        problems.append("--schedule onecycle has its own warm-up (--warmup-pct): leave --warmup-epochs at 0")
    if cfg.optimizer == "lars" and cfg.nesterov:
        problems.append("--optimizer lars takes plain momentum: add --no-nesterov")
    if cfg.model_parallel and cfg.model not in ("alexnet2012", "alexnet2012_columns"):
        problems.append(
            f"--model-parallel splits the paper's two columns: it needs --model alexnet2012, not {cfg.model}"
        )
    if cfg.nesterov and cfg.momentum == 0:
        problems.append("--nesterov needs a --momentum above 0 (or --no-nesterov)")
    if cfg.resize_size and cfg.input_size and cfg.input_size > cfg.resize_size:
        problems.append(f"--input-size {cfg.input_size} is larger than --resize-size {cfg.resize_size}")
    return problems


_PAPER = TrainConfig()

RECIPES: dict[str, TrainConfig] = {
    # Section 5 of the paper: SGD, batch 128, momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10
    # whenever validation error stops improving, about 90 epochs; random crops, flips, fancy PCA; with four
    # named departures that keep it from collapsing to chance on data with few classes (all four off is
    # "paper2012_exact"):
    # - init "kaiming" (He et al. 2015; zero biases) instead of N(0, 0.01) with biases 1: with biases 1 every
    #   fc7 unit is about the same for every image, and a step at lr 0.01 moves all logits together by
    #   ~lr * |fc7|^2 / classes, past SGD's stability limit when there are tens of classes instead of 1000:
    #   the logits oscillate and the saturated softmax kills most conv5/fc6/fc7 ReLUs for good within 20
    #   steps. Caffe's biases of 0.1 avoid that but shrink the image's signal layer by layer, so the
    #   network sits near chance for its first epochs; He's scaling keeps it from the first step;
    # - clip_grad_norm 5: He's init starts with gradient norms of about 40; unclipped, its first steps
    #   overshoot (loss 1.5x chance) and the run collapses a few epochs later; clipped, no step is longer
    #   than lr * 5 before momentum;
    # - plateau_min_epochs 4, plateau_after_learning: no lr/10 in the first epochs, nor while validation
    #   top-1 has never been clearly above chance (a network at chance has no plateau).
    "paper2012": replace(_PAPER, init="kaiming", clip_grad_norm=5.0, plateau_min_epochs=4, plateau_after_learning=True),
    # The 2012 setting exactly: the paper's init (biases 1), no clipping, the plain plateau rule.
    "paper2012_exact": replace(_PAPER, recipe="paper2012_exact"),
    # torchvision's references/classification recipe for alexnet (8 GPUs x batch 32): lr 0.01,
    # momentum 0.9, weight decay 1e-4, lr x0.1 every 30 epochs, 90 epochs, no PCA lighting.
    "torchvision": replace(
        _PAPER, recipe="torchvision", model="alexnet", batch_size=256, weight_decay=1e-4, schedule="step", pca_std=0.0
    ),
    # The blog's variant (BatchNorm after conv1/conv2, 'same' padding, Keras init) on the paper's optimiser:
    # BatchNorm does not reach the fully connected head, so it keeps the clipping and the plateau rule. Its
    # running statistics are recomputed before each validation: with Keras' momentum they lag about 100
    # steps behind the weights, a whole short run.
    "alexnet_bn": replace(
        _PAPER,
        recipe="alexnet_bn",
        model="alexnet_bn",
        clip_grad_norm=5.0,
        plateau_min_epochs=4,
        plateau_after_learning=True,
        bn_recompute_batches=50,
    ),
    # Small images on a CPU in minutes (digits, CIFAR-sized data): the small variant, one-cycle lr.
    "small": replace(
        _PAPER,
        recipe="small",
        model="alexnet_small",
        epochs=15,
        batch_size=64,
        lr=0.02,
        nesterov=True,
        schedule="onecycle",
        label_smoothing=0.1,
        workers=0,
    ),
    # Large global batches over many GPUs (You, Gitman and Ginsburg 2017): AlexNet with BatchNorm, LARS
    # (trust coefficient 0.001, momentum 0.9, decay 5e-4 on weights only), a poly(2) decay after a linear
    # warm-up, global batch 8192. A starting point for torchrun runs: not reproduced on ImageNet here.
    "lars_bn": replace(
        _PAPER,
        recipe="lars_bn",
        model="alexnet_bn",
        optimizer="lars",
        batch_size=8192,
        lr=2.0,
        schedule="poly",
        warmup_epochs=2.0,  # LARS is combined with a warm-up there; its length here is our choice
        epochs=100,
        pca_std=0.0,
    ),
}


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply ``data`` on top of ``base`` (default: the recipe named in data, else paper2012)."""
    if base is None:
        name = data.get("recipe", "paper2012")
        if name not in RECIPES:
            raise FlagError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
        base = RECIPES[name]
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise FlagError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(known)}")
    values = {k: _coerce(k, v, _field_type(known[k])) for k, v in data.items()}
    return replace(base, **values)


def resolve_config(
    recipe: str = "paper2012", config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Preset -> config file -> overrides (flags given on the command line)."""
    if recipe not in RECIPES:
        raise FlagError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    cfg = RECIPES[recipe]
    if config_file is not None:
        cfg = config_from_dict(read_config_file(config_file), base=cfg)
    if overrides:
        cfg = config_from_dict(overrides, base=cfg)
    return cfg


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = yaml.safe_load(path.read_text()) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise UserError(f"cannot parse config file {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of field: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _field_type(f: dataclasses.Field) -> Any:
    return typing.get_type_hints(TrainConfig)[f.name]


def field_choices(name: str) -> tuple[Any, ...] | None:
    hint = typing.get_type_hints(TrainConfig)[name]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise FlagError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if isinstance(hint, types.UnionType):
        hint = typing.get_args(hint)[0]
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as e:
        raise FlagError(f"{name} expects {hint.__name__}, got {value!r}") from e


def save_config(cfg: TrainConfig, path: Path) -> None:
    from ..files import atomic_write_bytes

    atomic_write_bytes(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode())
