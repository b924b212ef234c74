"""Keras-like architecture tables (layer, output shape, parameters, multiply-adds) via torchinfo."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchinfo import summary as torchinfo_summary

from ..errors import FlagError
from .alexnet import min_input_size
from .registry import create_model, get_spec

__all__ = ["model_summary"]


def model_summary(name: str, num_classes: int = 1000, input_size: int | None = None) -> tuple[str, dict[str, Any]]:
    """Return (printable table, the same data as a dict) for a registered model."""
    spec = get_spec(name)
    size = input_size if input_size is not None else spec.card.input_size
    if size < min_input_size(spec):
        raise FlagError(f"{name} needs inputs of at least {min_input_size(spec)} pixels, got --input-size {size}")
    model: nn.Module = create_model(name, num_classes, init="torch")
    model.eval()
    stats = torchinfo_summary(
        model,
        input_size=(1, 3, size, size),
        col_names=("output_size", "num_params", "mult_adds"),
        row_settings=("var_names",),
        depth=4,
        verbose=0,
        device="cpu",
    )
    layers = [
        {
            "name": layer.var_name,
            "type": layer.class_name,
            "depth": layer.depth,
            "output_shape": list(layer.output_size),
            "params": int(layer.num_params) if layer.is_leaf_layer else 0,
            "mult_adds": int(layer.macs) if layer.is_leaf_layer else 0,
        }
        for layer in stats.summary_list
        if layer.depth > 0
    ]
    data = {
        "model": name,
        "num_classes": num_classes,
        "input_size": [3, size, size],
        "layers": layers,
        "total_params": int(stats.total_params),
        "trainable_params": int(stats.trainable_params),
        # BatchNorm running statistics: Keras counts them as non-trainable parameters.
        "non_trainable_params": int(sum(b.numel() for n, b in model.named_buffers() if "running" in n)),
        "total_mult_adds": int(stats.total_mult_adds),
    }
    footer = (
        f"Buffers counted by Keras as non-trainable params: {data['non_trainable_params']:,}\n"
        f"Mult-adds per image: {data['total_mult_adds'] / 1e6:,.1f} M"
    )
    # torchinfo prints its unit enum as "Units.MEGABYTES" under Python 3.11+; say what it means.
    text = str(stats)
    for unit, short in (("Units.GIGABYTES", "G"), ("Units.MEGABYTES", "M"), ("Units.KILOBYTES", "K")):
        text = text.replace(f"({unit})", f"({short})")
    return f"{text}\n{footer}", data
