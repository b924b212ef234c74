"""Training curves as a PNG (matplotlib, headless): loss, top-1 error and learning rate per epoch."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_curves"]


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> tuple[int, int]:
    """Draw ``metrics.jsonl``-style rows into ``path`` (written atomically, so a crash keeps the old one);
    returns the picture's width and height in pixels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from ..files import atomic_write_bytes

    epochs = [h["epoch"] for h in history]

    def series(key: str) -> list[float] | None:
        values = [h.get(key) for h in history]
        return None if all(v is None for v in values) else [float("nan") if v is None else v for v in values]

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_loss, ax_err, ax_lr = fig.subplots(1, 3)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        if (ys := series(key)) is not None:
            ax_loss.plot(epochs, ys, f"C{len(ax_loss.lines)}-", marker="o", ms=3, label=label)
    ax_loss.set(title="loss", xlabel="epoch")
    for key, label, style in (
        ("train_top1", "train top-1", "C0-"),
        ("val_top1", "val top-1", "C1-"),
        ("train_top5", "train top-5", "C0--"),
        ("val_top5", "val top-5", "C1--"),
    ):
        if (ys := series(key)) is not None:
            ax_err.plot(epochs, [100 * (1 - y) for y in ys], style, marker="o", ms=3, label=label)
    ax_err.set(title="error (%)", xlabel="epoch")
    if (ys := series("lr")) is not None:
        ax_lr.plot(epochs, ys, marker="o", ms=3)
        if min(ys) > 0 and max(ys) / min(ys) > 20:
            ax_lr.set_yscale("log")
    ax_lr.set(title="learning rate (at epoch start)", xlabel="epoch")
    for ax in (ax_loss, ax_err):
        if ax.lines:
            ax.legend()
    for ax in (ax_loss, ax_err, ax_lr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return int(round(fig.get_figwidth() * 100)), int(round(fig.get_figheight() * 100))
