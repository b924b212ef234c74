"""One registry for every variant: named builders (``register_model``), ``create_model(name, ...)``,
``list_models()``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import FlagError, UserError
from .alexnet import ALEXNET2012, ALEXNET_BN, ALEXNET_SMALL, ALEXNET_TORCHVISION, AlexNet, ArchSpec, build
from .columns import to_columns

__all__ = ["create_model", "list_models", "get_spec", "load_weights_file", "register_model", "MODELS"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its architecture table, and a conversion applied after the weights load."""

    spec: ArchSpec
    convert: Callable[[AlexNet], nn.Module] | None = None


# Every name create_model accepts. The columns form shares alexnet2012's table and weights layout.
MODELS: dict[str, ModelEntry] = {
    **{s.name: ModelEntry(s) for s in (ALEXNET2012, ALEXNET_TORCHVISION, ALEXNET_BN, ALEXNET_SMALL)},
    "alexnet2012_columns": ModelEntry(ALEXNET2012, to_columns),
}


def register_model(name: str, spec: ArchSpec, convert: Callable[[AlexNet], nn.Module] | None = None) -> None:
    """Add a variant: a new architecture table (and optionally a conversion of the built model)."""
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = ModelEntry(spec, convert)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODELS)


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise FlagError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return MODELS[name]


def get_spec(name: str) -> ArchSpec:
    """The architecture table behind a registered name."""
    return _entry(name).spec


def create_model(
    name: str,
    num_classes: int = 1000,
    *,
    weights: str | os.PathLike | None = None,
    init: str | None = None,
    dropout: float | None = None,
) -> nn.Module:
    """Build a registered AlexNet variant.

    Args:
        name: one of :func:`list_models` (``alexnet2012``, ``alexnet``, ``alexnet_bn``,
            ``alexnet_small``, ``alexnet2012_columns``).
        num_classes: size of the last layer.
        weights: a local weights file (a torchvision-format ``state_dict`` saved with ``torch.save``,
            or ``.safetensors``) loaded strictly; or ``"torchvision"`` for torchvision's
            ``AlexNet_Weights.IMAGENET1K_V1`` (downloaded to torch's cache; ``alexnet`` only).
        init: override the variant's initialisation (``paper``, ``caffe``, ``keras``, ``torch``, ``kaiming``).
        dropout: override the dropout probability.
    """
    entry = _entry(name)
    model = build(entry.spec, num_classes, init=init, dropout=dropout)
    if weights is not None:
        state = _torchvision_state_dict() if str(weights) == "torchvision" else load_weights_file(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0:3]
            raise UserError(f"weights {weights} do not fit {name} with {num_classes} classes: {' '.join(first)}") from e
    return entry.convert(model) if entry.convert is not None else model


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict without executing code: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's problem, said once
        reason = (str(e).splitlines() or ["empty or truncated file"])[0][:200]
        raise UserError(f"{path} is not a weights file: {type(e).__name__}: {reason}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state_dict of tensors")
    return state


def _torchvision_state_dict() -> dict[str, torch.Tensor]:
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
