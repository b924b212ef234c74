"""An inference engine for the CPU: AlexNet on oneDNN with weights pre-packed once.

What inductor's freezing pass does, done eagerly without a compiler: every plain conv and linear layer
gets its weight reordered to oneDNN's blocked layout for the expected input shape, with the following
ReLU fused into the same call. At batch 1 the fc layers are bound by reading their weights, and the
packed layout reads them at nearly the memory bandwidth; a plain ``F.linear`` does not.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ModeUnavailable
from ..models.alexnet import AlexNet, check_input

__all__ = ["OneDNNAlexNet"]


def _reorder_conv_weight(weight: torch.Tensor, *args: object) -> torch.Tensor:
    """oneDNN's weight packing for a convolution: where the CPU cannot run bf16 (no AVX-512), it refuses."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight, *args)


def _reorder_linear_weight(weight: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, batch_size)


class _PackedConv(nn.Module):
    """Conv2d (+ the ReLU after it) as one oneDNN call on a weight reordered once to oneDNN's layout."""

    def __init__(self, conv: nn.Conv2d, relu: bool, dtype: torch.dtype, input_shape: list[int]) -> None:
        super().__init__()
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        w = conv.weight.detach().to(dtype).contiguous()
        self.weight = _reorder_conv_weight(w, *self.args, input_shape)
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.attr = "relu" if relu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.args, self.attr, [], "")


class _PackedLinear(nn.Module):
    """Linear (+ ReLU) on a weight packed for the expected batch size (a hint; any batch works)."""

    def __init__(self, linear: nn.Linear, relu: bool, dtype: torch.dtype, batch_size: int) -> None:
        super().__init__()
        weight = linear.weight.detach().to(dtype).contiguous()
        self.weight = _reorder_linear_weight(weight, batch_size)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        self.attr = "relu" if relu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, self.attr, [], "")


class _InFloat32(nn.Module):
    """Run a normalisation layer in fp32 whatever the activations are (LRN's sum of squares, BN)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


class OneDNNAlexNet(nn.Module):
    """An eval-only copy of an :class:`~alexnet.models.alexnet.AlexNet` that runs on oneDNN with pre-packed weights.

    Activations are channels-last; normalisation layers run in fp32; dropout (the identity at
    inference) is dropped. Input: fp32 NCHW; output: fp32 logits.
    """

    def __init__(
        self, model: AlexNet, dtype: torch.dtype = torch.bfloat16, example_shape: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        if not isinstance(model, AlexNet):
            raise ModeUnavailable(f"oneDNN packing supports the single-module AlexNet, not {type(model).__name__}")
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
            raise ModeUnavailable("this PyTorch build has no oneDNN (mkldnn) CPU kernels")
        self.dtype, self.check = dtype, (model.spec.name, model.min_input_size)
        size = model.spec.card.input_size
        batch, *image = list(example_shape) or [1, 3, size, size]
        layers = [m for m in model.features] + [model.avgpool, nn.Flatten(1)] + list(model.classifier)
        layers = [m for m in layers if not isinstance(m, nn.Dropout)]
        steps: list[nn.Module] = []
        probe = torch.zeros(1, *image)  # follows the shapes through the network for the packing hints
        with torch.no_grad():
            while layers:
                layer = layers.pop(0)
                relu = bool(layers) and isinstance(layers[0], nn.ReLU)
                if type(layer) is nn.Conv2d:
                    steps.append(_PackedConv(layer, relu, dtype, [batch, *probe.shape[1:]]))
                elif type(layer) is nn.Linear:
                    steps.append(_PackedLinear(layer, relu, dtype, batch))
                else:
                    relu = False
                    plain = isinstance(layer, (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten))
                    steps.append(layer if plain else _InFloat32(layer))  # LRN, BatchNorm, Conv2dSame: fp32
                probe = layer(probe)
                if relu:
                    probe = layers.pop(0)(probe)
        self.steps = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, *self.check)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.steps(x).float()
