"""One registry for every variant: ``create_model(name, ...)`` and ``list_models()``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .columns import to_columns
from .models import SPECS, ArchSpec, build

__all__ = ["create_model", "list_models", "get_spec", "load_weights_file", "UserError"]

COLUMNS_SUFFIX = "_columns"


class UserError(Exception):
    """A problem with the user's input (file, flag, data) that the CLI reports in one line."""


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    names = list(SPECS)
    names += [n + COLUMNS_SUFFIX for n, s in SPECS.items() if s.columns > 1]
    return sorted(names)


def get_spec(name: str) -> ArchSpec:
    base = name.removesuffix(COLUMNS_SUFFIX)
    if base not in SPECS or (name != base and SPECS[base].columns < 2):
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return SPECS[base]


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
        init: override the variant's initialisation (``paper``, ``caffe``, ``keras``, ``torch``).
        dropout: override the dropout probability.
    """
    spec = get_spec(name)
    model: nn.Module = build(spec, num_classes, init=init, dropout=dropout)
    if weights is not None:
        state = _torchvision_state_dict() if str(weights) == "torchvision" else load_weights_file(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0:3]
            raise UserError(f"weights {weights} do not fit {name} with {num_classes} classes: {' '.join(first)}") from e
    if name.endswith(COLUMNS_SUFFIX):
        model = to_columns(model)  # type: ignore[arg-type]
    return model


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


def imagenet_categories() -> list[str]:
    """ImageNet's 1000 class names, as torchvision ships them (no download)."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
