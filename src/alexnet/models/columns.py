"""The paper's two-GPU network as two explicit columns (section 3.2, figure 2).

Each column holds half the kernels of every layer. The columns exchange activations only where the
paper's figure crosses between GPUs: the input of conv3 and of every fully connected layer. Within a
column, conv2, conv4 and conv5 see only that column's maps, which is exactly ``groups=2`` in the
grouped form; so :func:`to_columns` and :func:`to_grouped` convert losslessly between the two.

Each column can live on its own device (``place``): activations are moved to a column's device
before its layers run, which is the paper's model parallelism.
"""

from __future__ import annotations

import torch
from torch import nn

from .alexnet import AlexNet, ArchSpec, LocalResponseNorm, build, check_input, min_input_size, named_layers

__all__ = ["AlexNetColumns", "to_columns", "to_grouped"]


class _Column(nn.Module):
    """One GPU's half: conv1..conv5 (+ LRN, pools) and its half of fc6, fc7."""

    def __init__(self, spec: ArchSpec, dropout: float) -> None:
        super().__init__()
        ncol = spec.columns
        in_ch, convs = 3, []
        for i, c in enumerate(spec.convs):
            # conv1 reads the image; a later full (groups=1) layer reads both columns' maps.
            cin = in_ch if (c.groups > 1 or i == 0) else in_ch * ncol
            convs.append(nn.Conv2d(cin, c.out_channels // ncol, c.kernel, c.stride, c.padding))
            in_ch = c.out_channels // ncol
        self.convs = nn.ModuleList(convs)
        size, alpha, beta, k = spec.lrn
        self.lrn = LocalResponseNorm(size, alpha, beta, k)
        self.pool = nn.MaxPool2d(spec.pool_kernel, spec.pool_stride)
        self.avgpool = nn.AdaptiveAvgPool2d((spec.pooled_size, spec.pooled_size))
        in_f = spec.convs[-1].out_channels * spec.pooled_size**2
        fcs = []
        for width in spec.fc:
            fcs.append(nn.Linear(in_f, width // ncol))
            in_f = width
        self.fcs = nn.ModuleList(fcs)
        self.dropout = nn.Dropout(dropout)

    @property
    def device(self) -> torch.device:
        return self.convs[0].weight.device


class AlexNetColumns(nn.Module):
    """The grouped ``alexnet2012`` written as two columns; same weights, outputs and gradients."""

    def __init__(self, spec: ArchSpec, num_classes: int = 1000, dropout: float | None = None) -> None:
        super().__init__()
        if spec.columns != 2:
            raise ValueError(f"{spec.name} is a single-column network; only alexnet2012 has two columns")
        self.spec, self.num_classes = spec, num_classes
        p = spec.dropout if dropout is None else dropout
        self.columns = nn.ModuleList(_Column(spec, p) for _ in range(spec.columns))
        self.fc8 = nn.Linear(spec.fc[-1], num_classes)
        self.min_input_size = min_input_size(spec)

    def place(self, *devices: torch.device | str) -> AlexNetColumns:
        """Put column i on ``devices[i]`` (fc8 goes with column 0): the paper's two-GPU split."""
        if len(devices) != len(self.columns):
            raise ValueError(f"need {len(self.columns)} devices, got {len(devices)}")
        for col, dev in zip(self.columns, devices, strict=True):
            col.to(dev)
        self.fc8.to(devices[0])
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spec.name, self.min_input_size)
        cols = list(self.columns)
        xs = [x.to(c.device) for c in cols]
        for i, c in enumerate(self.spec.convs):
            if i > 0 and c.groups == 1:  # exchange: every column reads all maps
                xs = [torch.cat([t.to(col.device) for t in xs], 1) for col in cols]
            xs = [torch.relu(col.convs[i](t)) for col, t in zip(cols, xs, strict=True)]
            if c.norm == "lrn":
                xs = [col.lrn(t) for col, t in zip(cols, xs, strict=True)]
            if c.pool:
                xs = [col.pool(t) for col, t in zip(cols, xs, strict=True)]
        xs = [torch.flatten(col.avgpool(t), 1) for col, t in zip(cols, xs, strict=True)]
        for j in range(len(self.spec.fc)):  # fully connected layers read both columns
            xs = [torch.cat([t.to(col.device) for t in xs], 1) for col in cols]
            xs = [col.dropout(torch.relu(col.fcs[j](t))) for col, t in zip(cols, xs, strict=True)]
        dev = self.fc8.weight.device
        return self.fc8(torch.cat([t.to(dev) for t in xs], 1))


def _column_layers(model: AlexNetColumns) -> list[tuple[str, list[nn.Module]]]:
    names = [c.name for c in model.spec.convs] + [f"fc{6 + j}" for j in range(len(model.spec.fc))]
    per_col = [list(col.convs) + list(col.fcs) for col in model.columns]
    return [(n, [layers[i] for layers in per_col]) for i, n in enumerate(names)]


@torch.no_grad()
def to_columns(model: AlexNet) -> AlexNetColumns:
    """Split a grouped ``alexnet2012`` into two columns, copying every weight."""
    cols = AlexNetColumns(model.spec, model.num_classes, dropout=_dropout_p(model))
    grouped = dict(named_layers(model))
    for name, parts in _column_layers(cols):
        w, b = grouped[name].weight, grouped[name].bias
        for part, w_i, b_i in zip(parts, w.chunk(len(parts)), b.chunk(len(parts)), strict=True):
            part.weight.copy_(w_i)
            part.bias.copy_(b_i)
    cols.fc8.load_state_dict(grouped[f"fc{6 + len(model.spec.fc)}"].state_dict())
    return cols.to(next(model.parameters()).device)


@torch.no_grad()
def to_grouped(cols: AlexNetColumns) -> AlexNet:
    """Join two columns back into the grouped form (the inverse of :func:`to_columns`)."""
    model = build(cols.spec, cols.num_classes, init="torch", dropout=cols.columns[0].dropout.p)
    grouped = dict(named_layers(model))
    for name, parts in _column_layers(cols):
        grouped[name].weight.copy_(torch.cat([p.weight.to(grouped[name].weight.device) for p in parts]))
        grouped[name].bias.copy_(torch.cat([p.bias.to(grouped[name].bias.device) for p in parts]))
    grouped[f"fc{6 + len(cols.spec.fc)}"].load_state_dict(cols.fc8.state_dict())
    return model


def _dropout_p(model: AlexNet) -> float:
    return next(m.p for m in model.classifier if isinstance(m, nn.Dropout))
