"""Named training recipes as frozen dataclasses; every field overridable by a config file or a flag.

Resolution order (later wins): the recipe preset -> a YAML/TOML config file -> command-line flags.
The resolved config is saved in the run directory (``config.yaml``) and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError

__all__ = ["TrainConfig", "RECIPES", "resolve_config", "config_to_dict", "config_from_dict"]


def _f(default: Any, help: str) -> Any:  # noqa: A002 - the argparse word
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Each field is a ``--flag`` of ``alexnet train``."""

    recipe: str = _f("paper2012", "the preset the other fields start from")
    model: str = _f("alexnet2012", "architecture (see alexnet summary)")
    epochs: int = _f(90, "total epochs of the run (a resumed run continues up to this)")
    batch_size: int = _f(128, "images per SGD step")
    lr: float = _f(0.01, "initial learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "L2 weight decay")
    schedule: Literal["plateau", "step", "onecycle", "constant"] = _f(
        "plateau", "lr schedule: plateau (lr/10 when val error stops improving), step, onecycle, constant"
    )
    plateau_patience: int = _f(2, "plateau: epochs without improvement before the lr drops")
    plateau_factor: float = _f(0.1, "plateau: lr multiplier at each drop")
    step_size: int = _f(30, "step: epochs between lr drops")
    step_gamma: float = _f(0.1, "step: lr multiplier at each drop")
    warmup_pct: float = _f(0.25, "onecycle: fraction of the steps spent warming up")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing")
    init: str = _f("", "weight init: paper, caffe, keras, torch ('' = the model's own)")
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
    seed: int = _f(0, "seed of every random number generator (init, shuffling, augmentation)")


_PAPER = TrainConfig()

RECIPES: dict[str, TrainConfig] = {
    # Section 5 of the paper: SGD, batch 128, momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10
    # whenever validation error stops improving, about 90 epochs; random crops, flips, fancy PCA.
    "paper2012": _PAPER,
    # torchvision's references/classification recipe for alexnet (8 GPUs x batch 32): lr 0.01,
    # momentum 0.9, weight decay 1e-4, lr x0.1 every 30 epochs, 90 epochs, no PCA lighting.
    "torchvision": replace(
        _PAPER, recipe="torchvision", model="alexnet", batch_size=256, weight_decay=1e-4, schedule="step", pca_std=0.0
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
}


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply ``data`` on top of ``base`` (default: the recipe named in data, else paper2012)."""
    if base is None:
        name = data.get("recipe", "paper2012")
        if name not in RECIPES:
            raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
        base = RECIPES[name]
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(known)}")
    values = {k: _coerce(k, v, _field_type(known[k])) for k, v in data.items()}
    return replace(base, **values)


def resolve_config(
    recipe: str = "paper2012", config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Preset -> config file -> overrides (flags given on the command line)."""
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
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
            raise UserError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
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
        raise UserError(f"{name} expects {hint.__name__}, got {value!r}") from e


def save_config(cfg: TrainConfig, path: Path) -> None:
    from .files import atomic_write_bytes

    atomic_write_bytes(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode())
