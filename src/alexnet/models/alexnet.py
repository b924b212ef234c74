"""AlexNet variants declared as data, one builder, and the paper's building blocks.

Each variant is an :class:`ArchSpec`: a table of conv stages plus the classifier head. One builder
(:func:`build`) turns any table into an :class:`AlexNet`. A new variant is a new table.

References
----------
Krizhevsky, Sutskever, Hinton. "ImageNet Classification with Deep Convolutional Neural Networks",
NIPS 2012 (the "paper"). Section numbers below refer to it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputTooSmall
from .card import IMAGENET_MEAN, ModelCard

__all__ = [
    "ArchSpec",
    "ConvSpec",
    "AlexNet",
    "LocalResponseNorm",
    "Conv2dSame",
    "build",
    "min_input_size",
    "feature_shapes",
]

Norm = Literal["none", "lrn", "bn"]
# The largest square input the commands accept: conv1's activations alone grow with its square (about
# 1.6 GB per image for alexnet2012 at 4096 px), and no AlexNet variant is meant for larger images.
MAX_INPUT_SIZE = 4096


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def _window_sum(t: torch.Tensor, size: int, groups: int, before: int) -> torch.Tensor:
    """``out[c] = sum(t[c + o] for o in -before .. size - 1 - before)`` within each group of channels,
    zero beyond a group's edges; a new tensor in ``t``'s memory format (in-place adds on slices)."""
    n, c, h, w = t.shape
    per_group = c // groups
    parts = t.reshape(n, groups, per_group, h, w)  # a view, for NCHW and channels-last alike
    out = parts.clone()
    for o in range(-before, size - before):
        if o == 0 or abs(o) >= per_group:
            continue
        if o > 0:
            out[:, :, : per_group - o] += parts[:, :, o:]
        else:
            out[:, :, -o:] += parts[:, :, : per_group + o]
    return out.reshape(n, c, h, w)


def _inverse_power(d: torch.Tensor, beta: float) -> torch.Tensor:
    """``d ** -beta``; for the paper's beta = 0.75 as rsqrt(d) * sqrt(rsqrt(d)), cheaper than pow."""
    if beta == 0.75:
        r = d.rsqrt()
        return r.mul_(r.sqrt())
    return d.pow(-beta)


def _lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int):
    """LRN computed in (at least) fp32: returns the output ``x * p`` in ``x``'s dtype, and
    ``d = k + alpha * window sum`` and ``p = d ** -beta`` (what the gradient needs)."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    d = _window_sum(xf * xf, size, groups, size // 2).mul_(alpha).add_(k)
    p = _inverse_power(d, beta)
    y = xf.mul_(p) if xf is not x else xf * p  # in place only on our own fp32 copy
    return y.to(x.dtype), d, p


class _LRNFunction(torch.autograd.Function):
    """LRN with its gradient written out, so backward costs a few passes over the activations.

    With ``d_i = k + alpha * sum_{j in W(i)} x_j^2`` and ``y_i = x_i d_i^-beta``:
    ``dL/dx_i = g_i d_i^-beta - 2 alpha beta x_i sum_{j : i in W(j)} g_j x_j d_j^(-beta-1)``.
    ``i in W(j)`` is the mirrored window (the same one for odd sizes).
    """

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, groups):  # noqa: ANN001, ANN205 (autograd.Function API)
        y, d, p = _lrn_forward(x, size, alpha, beta, k, groups)
        ctx.save_for_backward(x, d, p)
        ctx.constants = (size, alpha, beta, groups)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, d, p = ctx.saved_tensors
        size, alpha, beta, groups = ctx.constants
        xf, g = x.to(d.dtype), grad.to(d.dtype)
        t = (g * xf).mul_(p).div_(d)  # g_j x_j d_j^(-beta-1)
        s = _window_sum(t, size, groups, (size - 1) // 2)
        dx = s.mul_(xf).mul_(-2.0 * alpha * beta).addcmul_(g, p)
        return dx.to(x.dtype), None, None, None, None, None


class LocalResponseNorm(nn.Module):
    """Local response normalisation exactly as the paper writes it (section 3.3).

    ``b_i = a_i / (k + alpha * sum_{j in window(i)} a_j^2) ** beta``

    ``alpha`` multiplies the plain sum over the ``size`` neighbouring maps (``torch.nn.LocalResponseNorm``
    and Caffe divide alpha by ``size``), so the paper's constants (k=2, n=5, alpha=1e-4, beta=0.75) mean
    what the paper means. The window is the same as ``F.local_response_norm``'s (maps ``i - size // 2``
    to ``i + (size - 1) // 2``, zero beyond the edges).

    ``groups`` keeps the window inside each group of channels: in the paper's two-GPU network each GPU
    normalises only over its own kernel maps, so the window never crosses the column boundary.

    Computed in fp32 for bf16/fp16 inputs, keeping channels-last. Eager training uses a hand-written
    gradient (:class:`_LRNFunction`: a few passes over the activations, where autograd through the
    window sum allocates and fills a padded tensor per shifted slice); under a tracer (ONNX/TorchScript
    export, ``torch.compile``) the same function is written as out-of-place ops.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return self._traceable(x)
        if x.shape[1] % self.groups:
            raise ValueError(f"LocalResponseNorm(groups={self.groups}): {x.shape[1]} channels do not split evenly")
        constants = (self.size, self.alpha, self.beta, self.k, self.groups)
        if torch.is_grad_enabled() and x.requires_grad:
            return _LRNFunction.apply(x, *constants)
        return _lrn_forward(x, *constants)[0]

    def _traceable(self, x: torch.Tensor) -> torch.Tensor:
        # The window sum as `size` shifted slices of the zero-padded squares, all out of place.
        n, c, h, w = x.shape
        per_group = c // self.groups
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        sq = (xf * xf).reshape(n, self.groups, per_group, h, w)
        sq = F.pad(sq, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))
        window = sq[:, :, 0:per_group]
        for j in range(1, self.size):
            window = window + sq[:, :, j : j + per_group]
        denominator = (window.reshape(n, c, h, w) * self.alpha + self.k) ** self.beta
        return (xf / denominator).to(x.dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow/Keras ``padding='same'``: output = ceil(input / stride).

    The padding depends on the input size and is asymmetric when the total is odd (the extra pixel
    goes at the bottom/right, as in TensorFlow), so it is applied in ``forward``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


# --------------------------------------------------------------------------------------------
# Architecture tables
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvSpec:
    """One conv stage: conv -> ReLU -> optional norm -> optional overlapping max-pool."""

    name: str
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int | Literal["same"] = 0
    groups: int = 1
    norm: Norm = "none"
    pool: bool = False


@dataclass(frozen=True)
class ArchSpec:
    """A whole variant: conv table, head, and the conventions that make it faithful."""

    name: str
    description: str
    convs: tuple[ConvSpec, ...]
    fc: tuple[int, ...] = (4096, 4096)
    pool_kernel: int = 3  # overlapping pooling z=3, s=2 (section 3.4)
    pool_stride: int = 2
    pooled_size: int = 6  # adaptive pool target; identity at the native input size
    dropout: float = 0.5
    dropout_before_fc: bool = False  # torchvision: Dropout -> Linear; paper/Caffe: Linear -> ReLU -> Dropout
    lrn: tuple[int, float, float, float] = (5, 1e-4, 0.75, 2.0)  # size, alpha, beta, k (section 3.3)
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    init: Literal["paper", "caffe", "torch", "keras"] = "torch"
    torchvision_keys: bool = False  # integer Sequential indices, exactly torchvision's state_dict
    columns: int = 1  # the paper's two-GPU split (section 3.2); groups=2 layers follow it
    card: ModelCard = field(default_factory=lambda: ModelCard(224, 256))


_POOL = True

ALEXNET2012 = ArchSpec(
    name="alexnet2012",
    description="The 2012 paper's network: LRN, overlapping pooling, two-column groups, 227 input.",
    convs=(
        ConvSpec("conv1", 96, 11, stride=4, norm="lrn", pool=_POOL),
        ConvSpec("conv2", 256, 5, padding=2, groups=2, norm="lrn", pool=_POOL),
        ConvSpec("conv3", 384, 3, padding=1),  # connected across both columns (section 3.5)
        ConvSpec("conv4", 384, 3, padding=1, groups=2),
        ConvSpec("conv5", 256, 3, padding=1, groups=2, pool=_POOL),
    ),
    init="paper",
    columns=2,
    # The paper subtracts only the mean pixel, on the 0-255 scale (section 2): std = 1/255 does that,
    # and keeps activations on the scale the LRN constants and N(0, 0.01) init were chosen for.
    card=ModelCard(227, 256, mean=IMAGENET_MEAN, std=(1 / 255, 1 / 255, 1 / 255)),
)

ALEXNET_TORCHVISION = ArchSpec(
    name="alexnet",
    description="torchvision's single-column variant (64-192-384-256-256, 224 input); same state_dict.",
    convs=(
        ConvSpec("conv1", 64, 11, stride=4, padding=2, pool=_POOL),
        ConvSpec("conv2", 192, 5, padding=2, pool=_POOL),
        ConvSpec("conv3", 384, 3, padding=1),
        ConvSpec("conv4", 256, 3, padding=1),
        ConvSpec("conv5", 256, 3, padding=1, pool=_POOL),
    ),
    dropout_before_fc=True,
    torchvision_keys=True,
    init="torch",
    card=ModelCard(224, 256),
)

ALEXNET_BN = ArchSpec(
    name="alexnet_bn",
    description="The blog's Keras model: BatchNorm after conv1/conv2, 'same' padding, no LRN, 227 input.",
    convs=(
        ConvSpec("conv1", 96, 11, stride=4, padding="same", norm="bn", pool=_POOL),
        ConvSpec("conv2", 256, 5, padding="same", norm="bn", pool=_POOL),
        ConvSpec("conv3", 384, 3, padding="same"),
        ConvSpec("conv4", 384, 3, padding="same"),
        ConvSpec("conv5", 256, 3, padding="same", pool=_POOL),
    ),
    # Keras defaults: BatchNormalization(momentum=0.99, epsilon=1e-3) -> torch momentum 0.01.
    bn_eps=1e-3,
    bn_momentum=0.01,
    init="keras",
    card=ModelCard(227, 256),
)

ALEXNET_SMALL = ArchSpec(
    name="alexnet_small",
    description=(
        "One column of the paper's network (48-128-192-192-128 maps) scaled for 32-96 px images: "
        "5x5/1 conv1, LRN, overlapping pooling, fc 1024-1024. 32 input."
    ),
    convs=(
        ConvSpec("conv1", 48, 5, padding=2, norm="lrn", pool=_POOL),  # 32 -> 32 -> 15
        ConvSpec("conv2", 128, 5, padding=2, norm="lrn", pool=_POOL),  # 15 -> 15 -> 7
        ConvSpec("conv3", 192, 3, padding=1),  # 7
        ConvSpec("conv4", 192, 3, padding=1),  # 7
        ConvSpec("conv5", 128, 3, padding=1, pool=_POOL),  # 7 -> 3
    ),
    fc=(1024, 1024),
    pooled_size=3,
    init="kaiming",
    card=ModelCard(32, 36),
)

SPECS: dict[str, ArchSpec] = {s.name: s for s in (ALEXNET2012, ALEXNET_TORCHVISION, ALEXNET_BN, ALEXNET_SMALL)}


# --------------------------------------------------------------------------------------------
# Shape arithmetic straight from the table (no forward pass needed)
# --------------------------------------------------------------------------------------------
def _conv_out(size: int, c: ConvSpec) -> int:
    if c.padding == "same":
        return math.ceil(size / c.stride)
    return (size + 2 * c.padding - c.kernel) // c.stride + 1


def feature_shapes(spec: ArchSpec, input_size: int) -> list[tuple[str, int, int]]:
    """(stage, channels, spatial size) after each conv and each pool, for a square input."""
    shapes, size = [], input_size
    for c in spec.convs:
        size = _conv_out(size, c)
        shapes.append((c.name, c.out_channels, size))
        if c.pool:
            size = (size - spec.pool_kernel) // spec.pool_stride + 1
            shapes.append((f"pool{c.name[-1]}", c.out_channels, size))
    return shapes


def min_input_size(spec: ArchSpec) -> int:
    """The smallest square input for which every conv and pool still has at least one output pixel."""
    size = 1
    while any(s < 1 for _, _, s in feature_shapes(spec, size)):
        size += 1
    return size


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
class AlexNet(nn.Module):
    """AlexNet built from an :class:`ArchSpec`: ``features`` -> ``avgpool`` -> ``classifier``.

    The structure (and so the state_dict) of the ``alexnet`` spec is exactly torchvision's.
    ``forward`` returns logits; apply softmax for probabilities.
    """

    def __init__(self, spec: ArchSpec, num_classes: int = 1000, dropout: float | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.min_input_size = min_input_size(spec)
        self.features = _make_features(spec)
        self.avgpool = nn.AdaptiveAvgPool2d((spec.pooled_size, spec.pooled_size))
        p = spec.dropout if dropout is None else dropout
        self.classifier = _make_classifier(spec, num_classes, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            check_input(x, self.spec.name, self.min_input_size)
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def check_input(x: torch.Tensor, name: str, min_size: int) -> None:
    """Raise a ValueError naming the minimum size when ``x`` is not an image batch the model can take."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} expects a batch of RGB images (N, 3, H, W), got shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if min(h, w) < min_size:
        raise InputTooSmall(f"{name} needs inputs of at least {min_size}x{min_size} pixels, got {h}x{w}")


def _make_features(spec: ArchSpec) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    in_ch = 3
    for i, c in enumerate(spec.convs, start=1):
        if c.padding == "same":
            conv: nn.Conv2d = Conv2dSame(in_ch, c.out_channels, c.kernel, c.stride, groups=c.groups)
        else:
            conv = nn.Conv2d(in_ch, c.out_channels, c.kernel, c.stride, c.padding, groups=c.groups)
        layers += [(c.name, conv), (f"relu{i}", nn.ReLU(inplace=True))]
        if c.norm == "lrn":
            size, alpha, beta, k = spec.lrn
            # The window stays inside a column: each GPU normalised its own maps (sections 3.2, 3.3).
            layers.append((f"norm{i}", LocalResponseNorm(size, alpha, beta, k, groups=spec.columns)))
        elif c.norm == "bn":
            layers.append((f"norm{i}", nn.BatchNorm2d(c.out_channels, eps=spec.bn_eps, momentum=spec.bn_momentum)))
        if c.pool:
            layers.append((f"pool{i}", nn.MaxPool2d(spec.pool_kernel, spec.pool_stride)))
        in_ch = c.out_channels
    return _sequential(layers, spec.torchvision_keys)


def _make_classifier(spec: ArchSpec, num_classes: int, p: float) -> nn.Sequential:
    in_features = spec.convs[-1].out_channels * spec.pooled_size**2
    layers: list[tuple[str, nn.Module]] = []
    for i, width in enumerate(spec.fc, start=6):
        if spec.dropout_before_fc:
            layers.append((f"drop{i}", nn.Dropout(p)))
        layers += [(f"fc{i}", nn.Linear(in_features, width)), (f"relu{i}", nn.ReLU(inplace=True))]
        if not spec.dropout_before_fc:
            layers.append((f"drop{i}", nn.Dropout(p)))  # dropout on the outputs of fc6, fc7 (section 4.2)
        in_features = width
    layers.append((f"fc{6 + len(spec.fc)}", nn.Linear(in_features, num_classes)))
    return _sequential(layers, spec.torchvision_keys)


def _sequential(layers: list[tuple[str, nn.Module]], integer_keys: bool) -> nn.Sequential:
    if integer_keys:
        return nn.Sequential(*(m for _, m in layers))
    return nn.Sequential(OrderedDict(layers))


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------
_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")


def named_layers(model: AlexNet) -> list[tuple[str, nn.Module]]:
    """(paper name, module) for every conv and fc layer, whatever the state_dict keys are."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.classifier if isinstance(m, nn.Linear)]
    names = [c.name for c in model.spec.convs] + [f"fc{i}" for i in range(6, 6 + len(fcs))]
    return list(zip(names, convs + fcs, strict=True))


INIT_SCHEMES = ("paper", "caffe", "keras", "torch", "kaiming")


@torch.no_grad()
def init_weights(model: AlexNet, scheme: str) -> None:
    """Initialise in place.

    - ``paper`` (section 5): weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.
    - ``caffe``: Caffe's bvlc_alexnet replication, which found bias 1 "gave flat loss": bias 0.1 in
      those layers, fc6/fc7 weights N(0, 0.005).
    - ``keras``: Keras defaults (glorot-uniform weights, zero biases), as the blog's model gets.
    - ``torch``: PyTorch's default ``reset_parameters`` (what torchvision's AlexNet uses).
    - ``kaiming``: He et al. 2015 normal init (ReLU gain; fan-out for the convolutions, fan-in for fc6
      and fc7), N(0, 0.01) for the output layer, zero biases. Keeps the activations' scale through the
      whole network, so a fresh network learns from the first epoch; the small variant's default, and
      the paper2012 recipe's.
    """
    if scheme == "torch":
        return
    layers = named_layers(model)
    last = layers[-1][1]
    for name, m in layers:
        if scheme == "kaiming":
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif m is last:
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:  # fc6, fc7: followed by a ReLU
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif scheme == "keras":
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif scheme in ("paper", "caffe"):
            std = 0.005 if scheme == "caffe" and name in ("fc6", "fc7") else 0.01
            nn.init.normal_(m.weight, 0.0, std)
            one = 1.0 if scheme == "paper" else 0.1
            nn.init.constant_(m.bias, one if name in _BIAS_ONE else 0.0)
        else:
            raise ValueError(f"unknown init scheme {scheme!r}; choose one of: {', '.join(INIT_SCHEMES)}")


def build(spec: ArchSpec, num_classes: int = 1000, init: str | None = None, dropout: float | None = None) -> AlexNet:
    """Build and initialise the model a spec describes."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    model = AlexNet(spec, num_classes, dropout=dropout)
    init_weights(model, init or spec.init)
    return model


def with_changes(spec: ArchSpec, **changes) -> ArchSpec:
    """A copy of a spec with some fields changed (for experiments and tests)."""
    return replace(spec, **changes)
