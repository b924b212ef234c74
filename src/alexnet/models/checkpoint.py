"""Checkpoints: one safetensors file holding the weights, the JSON metadata and (for ``last``) the
training state. Nothing is pickled, so loading a checkpoint never executes code from it.

A checkpoint file's tensors are ``model.<state_dict key>``; a resumable one adds ``optim.<i>.<key>``
(optimizer state). Its safetensors header metadata has
one entry, ``alexnet``, a JSON object: model name, num_classes, class names, input/resize size,
mean/std, the resolved training config, epoch, metrics, and the non-tensor training state.

Files are written to a temporary file in the same folder, flushed, and renamed over the old one, so a
crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ..errors import UserError
from ..files import atomic_write_bytes
from .card import ModelCard
from .registry import create_model

__all__ = [
    "save_checkpoint",
    "read_checkpoint",
    "read_metadata",
    "load_checkpoint",
    "resolve_checkpoint_path",
]

FORMAT = "alexnet-checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> None:
    """Save weights + metadata (+ the training state when optimizer/scheduler are given)."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, **meta}
    train_state: dict[str, Any] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").contiguous()
                else:
                    scalars.setdefault(str(idx), {})[key] = value
        train_state["optimizer"] = {"param_groups": sd["param_groups"], "scalars": scalars}
    if scheduler is not None:
        train_state["scheduler"] = scheduler.state_dict()
    if train_state:
        meta["train_state"] = train_state
    data = st_save(tensors, metadata={"alexnet": json.dumps(meta)})
    atomic_write_bytes(path, data)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its ``checkpoints/best``, else ``last``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise UserError(f"{path} is a folder without checkpoints (expected {path}/checkpoints/best.safetensors)")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint file, validated, reading only its header (not the tensors)."""
    path = resolve_checkpoint_path(path)
    total = path.stat().st_size
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size) if 0 < size <= _MAX_HEADER else b""
    if total == 0:
        raise UserError(f"{path} is an empty file (0 bytes), not a checkpoint")
    not_safetensors = f"{path} is not an alexnet checkpoint (not a safetensors file"
    if not 0 < size <= _MAX_HEADER:
        raise UserError(f"{not_safetensors}: no header)")
    if len(raw) != size:
        raise UserError(f"{not_safetensors}, or a truncated one: {total} bytes, shorter than its header says)")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{not_safetensors}: its header is not JSON)") from e
    try:
        meta = json.loads(header.get("__metadata__", {})["alexnet"])
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is a safetensors file but not an alexnet checkpoint (no 'alexnet' metadata)") from e
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an alexnet checkpoint (format {meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise UserError(f"{path} was written by a newer alexnet (checkpoint version {meta['version']})")
    return meta


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a checkpoint file, validated; raises UserError for anything else."""
    path = resolve_checkpoint_path(path)
    meta = read_metadata(path)
    try:
        tensors = st_load(path.read_bytes())
    except SafetensorError as e:
        raise UserError(f"{path} is not an alexnet checkpoint (not a safetensors file: {e})") from e
    return tensors, meta


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    expect_model: str | None = None,
    expect_num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (strictly). Returns (model, meta)."""
    tensors, meta = read_checkpoint(path)
    card = checkpoint_card(meta, path)
    if expect_model is not None and meta["model"] != expect_model:
        raise UserError(f"{path} holds a {meta['model']} model, not {expect_model}")
    if expect_num_classes is not None and meta["num_classes"] != expect_num_classes:
        raise UserError(f"{path} has {meta['num_classes']} classes, the data has {expect_num_classes}")
    model = create_model(card.model, card.num_classes, init="torch")
    try:
        model.load_state_dict(model_state(tensors), strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit {meta['model']}: {str(e).splitlines()[0]}") from e
    return model.to(map_location), meta


def checkpoint_card(meta: dict[str, Any], path: str | Path = "checkpoint") -> ModelCard:
    """The model card in a checkpoint's metadata (the same keys since the first checkpoint version)."""
    try:
        return ModelCard.from_json(meta)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from e


def load_training_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any
) -> None:
    """Restore optimizer and scheduler in place (random generators are seeded per epoch, not restored)."""
    state = meta.get("train_state")
    if not state:
        raise UserError("this checkpoint holds no training state (only 'last' checkpoints can be resumed)")
    opt = state["optimizer"]
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value
    for idx, scalars in opt["scalars"].items():
        per_param.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": per_param, "param_groups": opt["param_groups"]})
    _match_param_layouts(optimizer)
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])


def _match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (momentum buffer) its parameter's memory layout.

    Checkpoints store contiguous tensors; a channels-last parameter's momentum buffer was channels-last
    when it was saved. The fused SGD kernel pairs elements by memory position, so a buffer whose strides
    differ from its parameter's gets a different update (measured: weights 1e-4 apart after one epoch).
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
