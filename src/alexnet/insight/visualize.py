"""The paper's pictures of a trained model, as PNG files (matplotlib, headless).

- :func:`filters_figure`: the first-layer kernels, each scaled to its own range (figure 3; the paper's
  network shows its two columns as two blocks);
- :func:`predictions_figure`: images with their top-5 bars, the true class in red (figure 4, left);
- :func:`neighbors_figure`: the training images nearest each query in fc7 space (figure 4, right);
- :func:`curves_figure`: loss, top-1/top-5 error and learning rate of a run;
- :func:`confusion_figure`: the confusion matrix (only the most confused classes when there are many);
- :func:`activations_figure`: every conv layer's feature maps for one image.

Each writes one PNG atomically and returns a :class:`Figure` record: path, pixel size and a one-line summary.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from ..data import loaders, prepared
from ..data.datasets import resolve_dataset
from ..errors import FlagError, UserError
from ..files import atomic_write_bytes
from ..models.alexnet import named_layers
from ..runtime.inference import Classifier, eval_folder
from .features import Metric, find_neighbors, neighbor_folders, torch_model

__all__ = [
    "Figure",
    "WHATS",
    "parse_request",
    "make_figure",
    "filters_figure",
    "predictions_figure",
    "neighbors_figure",
    "curves_figure",
    "confusion_figure",
    "plot_confusion",
    "activations_figure",
    "kernel_tiles",
    "labelled_samples",
    "Labelled",
    "held_out_images",
    "neighbor_images",
]

WHATS = ("filters", "predictions", "neighbors", "curves", "confusion", "activations")
DPI = 100
TRUE_COLOUR, OTHER_COLOUR = "#d62728", "#7f9fbf"  # red marks the true class, as in the paper's figure 4


_NEEDS_DATA = {"predictions": "DATA", "neighbors": "DATA", "confusion": "DATA", "activations": "IMAGE"}


def parse_request(parts: Sequence[str]) -> tuple[str | None, str, str | None]:
    """``alexnet visualize``'s ``[CHECKPOINT] WHAT [DATA]`` -> (checkpoint or None, what, data or None), each
    figure given the data it needs and no other."""
    parts = list(parts)
    source = None if parts[0] in WHATS else parts.pop(0)
    if not parts or parts[0] not in WHATS:
        raise FlagError(f"say what to draw after the checkpoint: one of {', '.join(WHATS)}")
    what, rest = parts[0], parts[1:]
    if len(rest) > 1:
        raise FlagError(f"visualize {what} takes at most one DATA argument, got {len(rest)}: {' '.join(rest)}")
    target = rest[0] if rest else None
    if what in _NEEDS_DATA and target is None:
        raise FlagError(f"visualize {what} needs {_NEEDS_DATA[what]} after it (e.g. ... {what} path/to/data)")
    if what in ("filters",) and target is not None:
        raise FlagError(f"visualize {what} takes no DATA (got {target})")
    return source, what, target


def make_figure(
    what: str,
    clf: Classifier,
    target: str | os.PathLike | None,
    path: str | os.PathLike,
    *,
    count: int | None = None,
    k: int = 6,
    metric: Metric = "euclidean",
    limit: int = 25,
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 2,
    precision: str = "auto",
) -> Figure:
    """The figure named ``what`` (any of :data:`WHATS` but ``curves``, which needs no classifier) of ``clf`` on
    ``target``; ``count`` images: 8 predictions, 5 neighbours' queries by default."""
    if what == "filters":
        return filters_figure(clf, path)
    if what == "predictions":
        return predictions_figure(clf, target, path, count=count or 8, seed=seed, precision=precision)
    if what == "neighbors":
        return neighbors_figure(
            clf, target, path, count=count or 5, k=k, metric=metric, seed=seed, batch_size=batch_size,
            workers=workers, precision=precision,
        )  # fmt: skip
    if what == "confusion":
        return confusion_figure(clf, target, path, limit=limit, workers=workers, precision=precision)
    if what == "activations":
        return activations_figure(clf, target, path)
    raise ValueError(f"no figure named {what!r} takes a classifier")


@dataclass
class Figure:
    """A written PNG: where, its size in pixels, one line saying what it shows, and the numbers behind it."""

    path: Path
    width: int
    height: int
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"wrote {self.path} ({self.width}x{self.height}): {self.summary}"


def _new_figure(width_in: float, height_in: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width_in, height_in), layout="constrained", dpi=DPI)


def _save(fig: Any, path: str | os.PathLike, summary: str, **details: Any) -> Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    width, height = (int(round(v)) for v in fig.get_size_inches() * DPI)
    return Figure(Path(path), width, height, summary, details)


def _mosaic(tiles: np.ndarray, cols: int, gap: int, fill: float) -> np.ndarray:
    """(N, h, w[, C]) tiles -> one image of ``cols`` tiles per row, ``gap`` pixels of ``fill`` between."""
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[3:]), fill, dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return out


def _columns_for(n: int) -> int:
    """A near-square grid: the divisor of ``n`` closest above its square root, else the ceiling."""
    root = math.ceil(math.sqrt(n))
    return next((c for c in range(root, min(n, 2 * root) + 1) if n % c == 0), root)


def _show(ax: Any, image: Tensor | np.ndarray) -> None:
    """An image (uint8 (3, H, W) tensor or (H, W, 3) array) without axes decorations."""
    if isinstance(image, Tensor):
        image = image.permute(1, 2, 0).numpy()
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# Samples: which labelled images a figure shows
# --------------------------------------------------------------------------------------------
def labelled_samples(folder: str | os.PathLike) -> tuple[list[tuple[Path, int]], list[str]]:
    """The readable images of ``folder/<class>/*`` as ``(path, class index)``, and the class names."""
    ds = loaders.ImageFolderDataset(folder)
    return list(ds.samples), list(ds.classes)


@dataclass
class Labelled:
    """The labelled images a figure draws from: an image folder's readable files (keys are their paths), or
    a split of a prepared dataset (keys are indices into ``stored``)."""

    where: Path  # the folder, or the prepared split's folder
    classes: list[str]
    samples: list[tuple[Any, int]]  # (key, index into ``classes``)
    stored: prepared.PreparedDataset | None = None

    def image(self, clf: Classifier, key: Any) -> Tensor:
        """The image of ``key`` as the classifier takes it: uint8 (3, resize, resize)."""
        return self.stored[key][0] if self.stored is not None else clf.decode(key)

    def name(self, key: Any) -> str:
        return str(key) if self.stored is None else f"{self.where} image {key}"


def _prepared_split(clf: Classifier, root: Path, split: str) -> Labelled:
    ds = prepared.PreparedDataset(root, split, resize=clf.card.resize_size)
    return Labelled(root / split, list(ds.classes), list(enumerate(ds.targets)), ds)


def held_out_images(clf: Classifier, root: str | os.PathLike) -> Labelled:
    """The images ``evaluate`` reads: an image folder's test/ or val/ part (else the folder), a prepared
    dataset's test or val split (else its only one), or a bundled dataset's."""
    resolved = resolve_dataset(root)
    if prepared.is_prepared(resolved):
        return _prepared_split(clf, resolved, prepared.eval_split(resolved))
    prepared.refuse_split_folder(resolved)
    return _folder_images(eval_folder(root))


def _folder_images(folder: Path) -> Labelled:
    samples, classes = labelled_samples(folder)
    return Labelled(folder, classes, samples)


def neighbor_images(clf: Classifier, root: str | os.PathLike) -> tuple[Labelled, Labelled]:
    """(gallery, queries): the training part and the held-out part of a folder or prepared dataset; one
    without parts is both."""
    resolved = resolve_dataset(root)
    if prepared.is_prepared(resolved):
        queries = held_out_images(clf, resolved)
        has_train = "train" in prepared.read_manifest(resolved)["splits"]
        return (_prepared_split(clf, resolved, "train") if has_train else queries), queries
    prepared.refuse_split_folder(resolved)
    gallery_dir, query_dir = neighbor_folders(root)
    queries = _folder_images(query_dir)
    return (queries if gallery_dir == query_dir else _folder_images(gallery_dir)), queries


def spread(samples: Sequence[tuple[Any, int]], count: int, seed: int = 0) -> list[tuple[Any, int]]:
    """``count`` samples taken class by class in turn (a seeded shuffle within each class), so a few
    images cover as many classes as they can."""
    by_class: dict[int, list[tuple[Any, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    rng = random.Random(seed)
    for items in by_class.values():
        rng.shuffle(items)
    order = sorted(by_class)
    rng.shuffle(order)
    picked: list[tuple[Any, int]] = []
    while len(picked) < min(count, len(samples)):
        for c in order:
            if by_class[c] and len(picked) < count:
                picked.append(by_class[c].pop())
    return picked


def _model_index(clf: Classifier, name: str) -> int | None:
    """The model's index of a folder class name (None when the model does not know the class)."""
    try:
        return clf.card.classes.index(name)
    except ValueError:
        return None


def _shown(clf: Classifier, name: str) -> str:
    """A folder class name as the figures write it: the model's words for it ("tabby"), else the name."""
    index = _model_index(clf, name)
    return clf.card.name(index, short=True) if index is not None else name


def _crop(clf: Classifier, image: Tensor) -> Tensor:
    """The uint8 centre crop the network sees."""
    return TF.center_crop(image, [clf.card.input_size, clf.card.input_size])


# --------------------------------------------------------------------------------------------
# Figure 3: the first-layer kernels
# --------------------------------------------------------------------------------------------
def kernel_tiles(weight: Tensor) -> np.ndarray:
    """conv1 weights (K, 3, k, k) -> (K, k, k, 3) colour patches in [0, 1], each kernel scaled by its own
    minimum and maximum over all three channels (a constant kernel shows mid-grey)."""
    w = weight.detach().float().cpu()
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    span = w.amax(dim=(1, 2, 3), keepdim=True) - lo
    tiles = torch.where(span > 0, (w - lo) / span.clamp(min=1e-12), torch.full_like(w, 0.5))
    return tiles.permute(0, 2, 3, 1).numpy()


def filters_figure(clf: Classifier, path: str | os.PathLike) -> Figure:
    """Figure 3: the conv1 kernels as colour patches; a two-column network's columns as two blocks."""
    model = torch_model(clf, "filters")
    conv1 = named_layers(model)[0][1]
    tiles = kernel_tiles(conv1.weight)
    n, k = tiles.shape[:2]
    blocks = np.split(tiles, model.spec.columns) if n % model.spec.columns == 0 else [tiles]
    per_block = len(blocks[0])
    cols = math.ceil(per_block / 3) if len(blocks) > 1 else _columns_for(per_block)  # figure 3: 3 rows of 16
    mosaics = [_mosaic(b, cols, gap=1, fill=1.0) for b in blocks]
    scale = max(2, min(24, round(800 / mosaics[0].shape[1])))  # screen pixels per kernel pixel: ~800 px wide
    width_in = max(mosaics[0].shape[1] * scale / DPI + 0.4, 6.5)  # at least the title's width
    block_h = mosaics[0].shape[0] * scale / DPI
    fig = _new_figure(width_in, len(blocks) * (block_h + 0.35) + 0.45)
    axes = fig.subplots(len(blocks), 1, squeeze=False)[:, 0]
    for i, (ax, mosaic) in enumerate(zip(axes, mosaics, strict=True)):
        _show(ax, mosaic)
        ax.axis("off")  # the white gaps alone frame the kernels
        if len(blocks) > 1:
            first = i * per_block
            ax.set_title(f"column {i + 1} (GPU {i + 1}): kernels {first + 1}-{first + per_block}", fontsize=10)
    fig.suptitle(f"{clf.card.model}: {n} conv1 kernels of {k}x{k}x3, each scaled to its own range", fontsize=11)
    layout = f"two columns of {per_block}" if len(blocks) > 1 else f"a {math.ceil(n / cols)}x{cols} grid"
    return _save(fig, path, f"{n} conv1 kernels {k}x{k} as {layout}", kernels=n, cols=cols, blocks=len(blocks))


# --------------------------------------------------------------------------------------------
# Figure 4, left: top-5 predictions
# --------------------------------------------------------------------------------------------
def predict_samples(clf: Classifier, images: Tensor, precision: str = "auto") -> tuple[Tensor, Tensor]:
    """(uint8 crops, probabilities) of uint8 (N, 3, resize, resize) images, in the fastest accepted mode."""
    x = clf.preprocess(images)
    clf.fast(x if precision == "auto" else None, precision, workload=len(x))
    return _crop(clf, images), clf(x).softmax(1)


def predictions_figure(
    clf: Classifier,
    folder: str | os.PathLike,
    path: str | os.PathLike,
    *,
    count: int = 8,
    seed: int = 0,
    precision: str = "auto",
) -> Figure:
    """Figure 4 (left): ``count`` images of a labelled folder or prepared dataset (the part ``evaluate`` reads),
    each with the model's top-5 classes as bars; the true class's bar is red, and its name is written under
    the image."""
    images = held_out_images(clf, folder)
    folder, classes = images.where, images.classes
    picked = spread(images.samples, count, seed)
    crops, probs = predict_samples(clf, torch.stack([images.image(clf, key) for key, _ in picked]), precision)
    k = min(5, clf.card.num_classes)
    top_p, top_i = probs.topk(k, dim=1)
    cols = min(4, len(picked))
    rows = math.ceil(len(picked) / cols)
    fig = _new_figure(3.3 * cols, 4.4 * rows)
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[3, 2] * rows)
    records, hits = [], 0
    for n, ((p, t), crop) in enumerate(zip(picked, crops, strict=True)):
        r, c = divmod(n, cols)
        true_name = classes[t]
        true_index = _model_index(clf, true_name)
        ax = fig.add_subplot(grid[2 * r, c])
        _show(ax, crop)
        ax.set_xlabel(_shown(clf, true_name), fontsize=10, fontweight="bold")
        bars = fig.add_subplot(grid[2 * r + 1, c])
        names = [clf.card.classes[i] for i in top_i[n].tolist()]
        shown = [clf.card.name(i, short=True) for i in top_i[n].tolist()]
        values = top_p[n].tolist()
        colours = [TRUE_COLOUR if i == true_index else OTHER_COLOUR for i in top_i[n].tolist()]
        ypos = np.arange(k)[::-1]
        bars.barh(ypos, values, color=colours, height=0.8)
        for y, name, v in zip(ypos, shown, values, strict=True):
            bars.text(0.02, y, f"{name}  {v:.0%}", va="center", ha="left", fontsize=8.5)
        bars.set(xlim=(0, 1), ylim=(-0.6, k - 0.4), yticks=[], xticks=[])  # the percentages are written
        hits += true_index in top_i[n].tolist()
        records.append({"file": images.name(p), "true": true_name, "top": list(zip(names, values, strict=True))})
    fig.suptitle(f"{clf.card.model}: top-{k} predictions (true class in red) on {folder}", fontsize=11)
    summary = f"{len(picked)} images from {folder} with top-{k} bars; true class in the top {k} for {hits}"
    return _save(fig, path, summary, records=records, mode=clf.mode.get("mode"))


# --------------------------------------------------------------------------------------------
# Figure 4, right: nearest training images in fc7 space
# --------------------------------------------------------------------------------------------
def neighbors_figure(
    clf: Classifier,
    root: str | os.PathLike,
    path: str | os.PathLike,
    *,
    count: int = 5,
    k: int = 6,
    metric: Metric = "euclidean",
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 2,
    precision: str = "auto",
) -> Figure:
    """Figure 4 (right): ``count`` query images (the test/val part of a folder or prepared dataset ``root``),
    each followed by the ``k`` training images nearest to it in fc7 space; a neighbour's caption is green when
    its class matches."""
    gallery_set, query_set = neighbor_images(clf, root)
    gallery, gallery_classes, gallery_dir = gallery_set.samples, gallery_set.classes, gallery_set.where
    query_classes = query_set.classes
    queries = spread(query_set.samples, count, seed)
    found = find_neighbors(
        clf, gallery, queries, k=k, metric=metric, batch_size=batch_size, workers=workers, precision=precision,
        gallery_images=gallery_set.stored, query_images=query_set.stored,
    )  # fmt: skip
    k = found["indices"].shape[1]
    fig = _new_figure(1.75 * (k + 1), 2.0 * len(queries) + 0.5)
    axes = fig.subplots(len(queries), k + 1, squeeze=False)
    for r, (q, t) in enumerate(queries):
        _show(axes[r, 0], _crop(clf, query_set.image(clf, q)))
        axes[r, 0].set_xlabel(_shown(clf, query_classes[t]), fontsize=9, fontweight="bold")
        for side in axes[r, 0].spines.values():
            side.set(color=TRUE_COLOUR, linewidth=2)
        for c, (i, d) in enumerate(zip(found["indices"][r].tolist(), found["distances"][r].tolist(), strict=True)):
            ax = axes[r, c + 1]
            g, gt = gallery[i]
            _show(ax, _crop(clf, gallery_set.image(clf, g)))
            same = gallery_classes[gt] == query_classes[t]
            caption = f"{_shown(clf, gallery_classes[gt])}\nd={d:.3g}"
            ax.set_xlabel(caption, fontsize=8, color="#2ca02c" if same else "#555555")
    axes[0, 0].set_title("query", fontsize=10)
    for c in range(k):
        axes[0, c + 1].set_title(f"neighbour {c + 1}", fontsize=10)
    fig.suptitle(
        f"{clf.card.model}: nearest training images by {metric} distance of the fc7 vectors "
        f"({len(gallery)} images of {gallery_dir})", fontsize=11,
    )  # fmt: skip
    t = found["timing"]
    summary = (
        f"{len(queries)} queries x {k} nearest of {len(gallery)} training images ({metric}, fc7 in "
        f"{found['mode']} at {t['images_per_s']:.0f} img/s including decoding)"
    )
    return _save(fig, path, summary, **{k_: v for k_, v in found.items() if k_ != "features"})


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------
CURVES = ("train_loss", "val_loss", "train_top1", "val_top1", "train_top5", "val_top5", "lr")  # what plots draw


def run_history(run_dir: str | os.PathLike) -> tuple[Path, list[dict[str, Any]]]:
    """A run folder (or a checkpoint inside one) -> (run folder, its ``metrics.jsonl`` rows)."""
    p = Path(run_dir)
    if p.is_file():
        p = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    metrics = p / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{p} is not a run folder (no metrics.jsonl); give the folder alexnet train wrote")
    try:
        lines = [(n, json.loads(s)) for n, s in enumerate(metrics.read_text().splitlines(), 1) if s.strip()]
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {metrics}: {e}") from e
    rows = [r for _, r in lines if isinstance(r, dict) and "epoch" in r]
    for n, r in lines:
        if isinstance(r, dict) and "epoch" in r and (problem := _not_a_number(r)):
            raise UserError(f"{metrics} line {n}: {problem} (not a line alexnet train wrote)")
    if not rows:
        raise UserError(f"{metrics} holds no finished epoch yet")
    return p, rows


def _not_a_number(row: dict[str, Any]) -> str | None:
    """What in a metrics row cannot be plotted: the epoch must be a whole number, the curves numbers or null."""
    number = (int, float)
    if isinstance(row["epoch"], bool) or not isinstance(row["epoch"], int):
        return f"epoch is {row['epoch']!r}, not a whole number"
    for key in CURVES:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, number)):
            return f"{key} is {value!r}, not a number"
    return None


def curves_figure(run_dir: str | os.PathLike, path: str | os.PathLike) -> Figure:
    """Loss, top-1/top-5 error and learning rate per epoch, training and validation."""
    from ..training.plots import plot_curves

    folder, rows = run_history(run_dir)
    width, height = plot_curves(rows, path)
    last = rows[-1]
    shown = [f"last train loss {last['train_loss']:.3f}"] if last.get("train_loss") is not None else []
    shown += [f"val top-1 {last['val_top1']:.1%}"] if last.get("val_top1") is not None else []
    summary = f"{len(rows)} epochs of {folder}: loss, top-1/top-5 error, lr ({', '.join(shown) or 'no numbers'})"
    return Figure(Path(path), width, height, summary, {"epochs": len(rows)})


# --------------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------------
def confused_classes(confusion: np.ndarray, limit: int) -> tuple[list[int], list[tuple[int, int, int]]]:
    """All classes when there are at most ``limit``; else the classes of the largest off-diagonal cells,
    taken in order until ``limit`` classes are in. Also the off-diagonal cells, largest first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")
    pairs = [(int(t), int(p), int(off[t, p])) for t, p in zip(*np.unravel_index(order, off.shape), strict=True)]
    pairs = [x for x in pairs if x[2] > 0]
    n = confusion.shape[0]
    if n <= limit:
        return list(range(n)), pairs
    chosen: list[int] = []
    for t, p, _ in pairs:
        for c in (t, p):
            if c not in chosen and len(chosen) < limit:
                chosen.append(c)
        if len(chosen) >= limit:
            break
    return sorted(chosen), pairs


def plot_confusion(
    confusion: np.ndarray, classes: Sequence[str], path: str | os.PathLike, *, title: str = "", limit: int = 25
) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted; counts) as a heat map, each row normalised
    by its images, counts written in the cells, and a list of the largest confusions. Classes with neither
    images nor predictions are left out; past ``limit`` classes only the most confused ones are shown."""
    confusion = np.asarray(confusion)
    counts = confusion.sum(axis=1)
    present = [i for i in range(len(confusion)) if counts[i] > 0 or confusion[:, i].sum() > 0]
    shown, pairs = confused_classes(confusion[np.ix_(present, present)], limit)
    shown = [present[i] for i in shown]
    pairs = [(present[t], present[p], n) for t, p, n in pairs]
    sub = confusion[np.ix_(shown, shown)].astype(float)
    rows = np.where(counts[shown] > 0, counts[shown], 1)[:, None]
    names = [classes[i] for i in shown]
    side = max(5.0, 0.38 * len(shown) + 2.5)
    listed = pairs[:15]
    names_in = 0.07 * max(len(n) for n in names)  # room for the rotated class names under the matrix
    fig = _new_figure(side + names_in + (4.8 if listed else 0), side + names_in)
    if listed:
        ax, text_ax = fig.subplots(1, 2, width_ratios=[side + names_in, 4.8])
    else:
        ax, text_ax = fig.subplots(1, 1), None
    im = ax.imshow(sub / rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class")
    for (i, j), v in np.ndenumerate(sub):
        if v:
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                    color="white" if v / rows[i, 0] > 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, shrink=0.7, label="fraction of the true class")
    if text_ax is not None:
        text_ax.axis("off")
        lines = [f"{classes[t]} -> {classes[p]}: {n}" for t, p, n in listed]
        text_ax.text(0, 1, "most confused (true -> predicted: images)\n\n" + "\n".join(lines),
                     va="top", ha="left", fontsize=8.5, family="monospace", transform=text_ax.transAxes)  # fmt: skip
    what = "all" if len(shown) == len(present) else f"the {len(shown)} most confused of"
    ax.set_title(f"{title}{': ' if title else ''}{what} {len(present)} classes", fontsize=10)
    summary = f"confusion of {what} {len(present)} classes on {int(counts.sum())} images"
    return _save(fig, path, summary, shown=names, pairs=listed)


def confusion_figure(
    clf: Classifier,
    folder: str | os.PathLike,
    path: str | os.PathLike,
    *,
    limit: int = 25,
    workers: int = 2,
    precision: str = "auto",
) -> Figure:
    """The confusion matrix of ``clf`` on a labelled folder (its test/ or val/ part), as
    :func:`plot_confusion` draws it."""
    from ..runtime.inference import evaluate_folder

    result = evaluate_folder(clf, folder, workers=workers, precision=precision)
    title = f"{clf.card.model} on {result['folder']}: top-1 {result['top1']:.1%}"
    names = [clf.card.name(i, short=True) for i in range(clf.card.num_classes)]
    fig = plot_confusion(np.asarray(result["confusion"]), names, path, title=title, limit=limit)
    fig.summary += f" (top-1 {result['top1']:.1%})"
    fig.details["top1"] = result["top1"]
    return fig


# --------------------------------------------------------------------------------------------
# Feature maps of each conv layer
# --------------------------------------------------------------------------------------------
def conv_activations(model: nn.Module, x: Tensor) -> list[tuple[str, Tensor]]:
    """(layer name, (C, H, W) maps after its ReLU) of every conv layer, for one normalised image."""
    names = [name for name, _ in named_layers(model)[: len(model.spec.convs)]]
    layers = list(model.features)
    relus = [layers[i + 1] for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    seen: list[Tensor] = []
    hooks = [r.register_forward_hook(lambda _m, _i, out: seen.append(out[0].detach().clone())) for r in relus]
    try:
        with torch.inference_mode():
            model.features(x[None].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return list(zip(names, [s.float().cpu() for s in seen], strict=True))


def activations_figure(clf: Classifier, image: str | os.PathLike, path: str | os.PathLike) -> Figure:
    """The input crop and each conv layer's feature maps (after ReLU), each map scaled to its own
    maximum; a map that stays zero for this image shows black."""
    model = torch_model(clf, "activations")
    try:
        decoded = clf.decode(image)
    except loaders.DECODE_ERRORS as e:
        raise UserError(f"cannot read image {image}: {loaders._reason(e)}") from e
    maps = conv_activations(model, clf.preprocess(decoded[None])[0])
    fig = _new_figure(18, 12.4)
    axes = fig.subplots(2, 3).ravel()
    _show(axes[0], _crop(clf, decoded))
    axes[0].set_title(f"input ({clf.card.input_size}x{clf.card.input_size})", fontsize=11)
    lines = []
    for ax, (name, a) in zip(axes[1:], maps, strict=True):
        peak = a.amax(dim=(1, 2), keepdim=True)
        tiles = torch.where(peak > 0, a / peak.clamp(min=1e-12), torch.zeros_like(a)).numpy()
        ax.imshow(_mosaic(tiles, _columns_for(len(tiles)), gap=1, fill=np.nan), cmap="magma", vmin=0, vmax=1,
                  interpolation="nearest")  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
        dead = int((peak.flatten() == 0).sum())
        ax.set_title(f"{name}: {a.shape[0]} maps of {a.shape[1]}x{a.shape[2]} ({dead} all zero)", fontsize=11)
        lines.append(f"{name} {a.shape[0]}x{a.shape[1]}x{a.shape[2]}")
    fig.suptitle(f"{clf.card.model}: feature maps after each conv layer's ReLU for {Path(image).name}", fontsize=12)
    return _save(fig, path, f"feature maps of {', '.join(lines)} for {image}", layers=[n for n, _ in maps])
