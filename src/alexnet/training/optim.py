"""Optimisers: the paper's SGD (torch's, with momentum and L2 decay) and LARS for large global batches.

LARS (You, Gitman and Ginsburg 2017, "Large Batch Training of Convolutional Networks") gives each layer
its own learning rate from the ratio of its weight norm to its gradient norm, which kept AlexNet with
BatchNorm trainable at global batches of 8K where plain SGD with a linearly scaled rate diverged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["LARS", "lars_param_groups"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling.

    For each parameter tensor ``w`` of a group with ``lars=True`` (a layer's weight), with gradient ``g``::

        trust = eta * ||w|| / (||g|| + weight_decay * ||w||)     (1 where either norm is 0)
        v     = momentum * v + lr * trust * (g + weight_decay * w)
        w     = w - v

    Groups with ``lars=False`` (biases, BatchNorm's scale and shift) take the plain momentum step
    ``v = momentum * v + lr * (g + weight_decay * w)`` (their decay is 0 in :func:`lars_param_groups`).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        if lr <= 0 or eta <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"LARS needs lr > 0, eta > 0, 0 <= momentum < 1, weight_decay >= 0; got "
                             f"{lr}, {eta}, {momentum}, {weight_decay}")  # fmt: skip
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - the torch.optim.Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay, eta = group["lr"], group["momentum"], group["weight_decay"], group["eta"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                scale = lr
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                    trust = eta * w_norm / (g_norm + decay * w_norm)
                    scale = lr * torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                update = g.add(w, alpha=decay) if decay else g.clone()
                update.mul_(scale)
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update
                else:
                    state["momentum_buffer"].mul_(momentum).add_(update)
                w.sub_(state["momentum_buffer"])
        return loss


def lars_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Layer weights (2-D and up) get LARS and weight decay; biases and BatchNorm parameters neither, as
    in the LARS paper's setup (their norms say little about a sensible step)."""
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    others = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": weights, "weight_decay": weight_decay, "lars": True},
        {"params": others, "weight_decay": 0.0, "lars": False},
    ]
