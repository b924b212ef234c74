"""The last hidden layer as a feature space: fc7 vectors of images, and their nearest neighbours.

The paper (section 6.1, figure 4) measures how similar two images are by the Euclidean distance of their
4096-d fc7 activations. :func:`fc7_model` cuts a trained network after fc7's ReLU, sharing its weights;
:class:`FeatureExtractor` runs that cut network in the inference mode the classifier was accepted in
(oneDNN with pre-packed weights, bf16 where it agrees with fp32), a batch at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from ..data import loaders
from ..errors import ModeUnavailable, UserError
from ..models.alexnet import AlexNet
from ..models.columns import AlexNetColumns, to_grouped
from ..runtime.inference import Classifier, eval_folder

__all__ = [
    "fc7_model",
    "FeatureExtractor",
    "distances",
    "nearest",
    "find_neighbors",
    "neighbor_folders",
    "torch_model",
    "METRICS",
]

Metric = Literal["euclidean", "cosine"]
METRICS: tuple[str, ...] = ("euclidean", "cosine")


def torch_model(clf: Classifier, what: str) -> AlexNet:
    """The classifier's network in its single-module form; a clear error for an exported file."""
    if clf.module is None:
        raise UserError(f"{what} needs the network's weights: give a checkpoint or --weights, not {clf.source}")
    model = clf.module
    return to_grouped(model).to(clf.device).eval() if isinstance(model, AlexNetColumns) else model.eval()


def fc7_model(model: AlexNet) -> AlexNet:
    """``model`` cut after the last hidden layer's ReLU (fc7's, relu7): a network whose output is the
    4096-d feature vector. Shares the weights; dropout is the identity in eval mode, so cutting before
    or after drop7 gives the same vector."""
    layers = list(model.classifier)
    linears = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ValueError(f"{model.spec.name} has no hidden fully connected layer")
    relu = next(i for i in range(linears[-2], len(layers)) if isinstance(layers[i], nn.ReLU))
    with torch.device("meta"):  # the skeleton's own layers are replaced at once: allocate nothing
        cut = AlexNet(model.spec, num_classes=1)
    cut.features, cut.avgpool, cut.classifier = model.features, model.avgpool, model.classifier[: relu + 1]
    return cut.eval()


class FeatureExtractor:
    """``extractor(images)``: normalised (N, 3, H, W) -> fp32 (N, 4096) fc7 features.

    Runs in ``mode`` (a key of :data:`alexnet.runtime.modes.INFERENCE_MODES`); by default the mode the classifier
    runs in, so a reduced precision is used only where the classifier accepted it.
    """

    def __init__(self, clf: Classifier, mode: str | None = None, example: Tensor | None = None) -> None:
        from ..runtime.modes import prepare_inference

        self.model = fc7_model(torch_model(clf, "fc7 features"))
        self.mode = mode or str(clf.mode.get("mode", "eager-fp32"))
        if self.mode == "onnxruntime-fp32":
            self.mode = "eager-fp32"
        self.note: str | None = None  # why the features run in another mode than asked, if they do
        try:
            self.predictor = prepare_inference(self.model, self.mode, example, clf.device)
        except ModeUnavailable as e:  # the cut network packs or compiles differently from the whole one
            self.note = f"fc7 features in eager-fp32: {e}"
            self.mode = "eager-fp32"
            self.predictor = prepare_inference(self.model, self.mode, example, clf.device)

    def __call__(self, images: Tensor) -> Tensor:
        return self.predictor(images)

    def dataset(
        self,
        clf: Classifier,
        samples: Sequence[tuple[Any, int]],
        *,
        batch_size: int = 64,
        workers: int = 2,
        images: Dataset | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """fc7 features of image files, in order (decoded by ``workers`` processes, as ``evaluate``
        does); and the timing: images, seconds, images/s. An unreadable file raises :class:`UserError`.
        With ``images`` (items ``(uint8 image, target)``, e.g. a prepared split) the keys are its indices."""
        if images is not None:
            ds: Dataset = Subset(images, [key for key, _ in samples])
        else:
            ds = loaders.ImageFolderDataset.from_samples(
                samples, ["?"] * (max((t for _, t in samples), default=0) + 1),
                loaders.decode_transform(clf.card.resize_size), strict=True,
            )  # fmt: skip
        loader = loaders.make_loader(ds, batch_size, shuffle=False, workers=min(workers, len(samples)), seed=0)
        out, start, forward_s = [], time.perf_counter(), 0.0
        for batch in loader:
            if batch.error:
                raise UserError(batch.error)
            t = time.perf_counter()
            out.append(self(clf.preprocess(batch.images)))
            forward_s += time.perf_counter() - t
        total = time.perf_counter() - start
        features = torch.cat(out) if out else torch.empty(0, 0)
        n = len(features)
        return features, {
            "images": n, "seconds": total, "images_per_s": n / total if total else 0.0,
            "forward_images_per_s": n / forward_s if forward_s else 0.0,
        }  # fmt: skip


def distances(queries: Tensor, gallery: Tensor, metric: Metric = "euclidean") -> Tensor:
    """(Q, G) distances: Euclidean (the paper's), or cosine distance ``1 - cos``."""
    queries, gallery = queries.double(), gallery.double()  # identical vectors must come out at 0
    if metric == "euclidean":
        # The direct difference, not the |a|^2 + |b|^2 - 2ab expansion, which loses the zero of a self-match.
        return torch.cdist(queries, gallery, compute_mode="donot_use_mm_for_euclid_dist")
    if metric == "cosine":
        q = nn.functional.normalize(queries, dim=1)
        g = nn.functional.normalize(gallery, dim=1)
        return (1.0 - q @ g.T).clamp_(min=0.0)
    raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")


def nearest(queries: Tensor, gallery: Tensor, k: int, metric: Metric = "euclidean") -> tuple[Tensor, Tensor]:
    """Indices and distances of the ``k`` gallery vectors nearest each query, nearest first."""
    d = distances(queries, gallery, metric)
    values, indices = d.topk(min(k, gallery.shape[0]), dim=1, largest=False)
    return indices, values.float()


def neighbor_folders(root: str | os.PathLike) -> tuple[Path, Path]:
    """(gallery, queries): ``DATA/train`` and the test/val part; a plain folder is both."""
    root = Path(eval_folder(root))
    gallery = root.parent / "train" if root.name in ("test", "val") and (root.parent / "train").is_dir() else root
    return gallery, root


def find_neighbors(
    clf: Classifier,
    gallery: Sequence[tuple[Any, int]],
    queries: Sequence[tuple[Any, int]],
    *,
    k: int = 6,
    metric: Metric = "euclidean",
    batch_size: int = 64,
    workers: int = 2,
    precision: str = "auto",
    gallery_images: Dataset | None = None,
    query_images: Dataset | None = None,
) -> dict[str, Any]:
    """The ``k`` gallery images nearest each query by their fc7 vectors. Keys are image paths, or indices
    into ``gallery_images`` / ``query_images`` (datasets of ``(uint8 image, target)``, e.g. prepared splits).
    A query that is itself in the gallery (the same key of the same images) reuses the gallery's vector (so
    it finds itself at distance 0). Returns indices, distances and the feature timing."""
    first = [gallery_images[p][0] if gallery_images is not None else clf.decode(p) for p, _ in gallery[:256]]
    heldout = clf.preprocess(torch.stack(first))
    # The features run in the mode the classifier is accepted in (top-1 agreement on these images).
    clf.fast(heldout, precision, batch_size, workload=len(gallery) + len(queries))
    extractor = FeatureExtractor(clf, example=heldout[:batch_size])
    feats, timing = extractor.dataset(clf, gallery, batch_size=batch_size, workers=workers, images=gallery_images)
    position = {str(p): i for i, (p, _) in enumerate(gallery)} if query_images is gallery_images else {}
    missing = [q for q in queries if str(q[0]) not in position]
    extra, _ = (
        extractor.dataset(clf, missing, batch_size=batch_size, workers=0, images=query_images)
        if missing
        else (None, None)
    )
    rows, j = [], 0
    for q, _ in queries:
        if str(q) in position:
            rows.append(feats[position[str(q)]])
        else:
            rows.append(extra[j])
            j += 1
    indices, dists = nearest(torch.stack(rows), feats, k, metric)
    return {"indices": indices, "distances": dists, "timing": timing, "mode": extractor.mode, "note": extractor.note,
            "features": feats}  # fmt: skip
