"""Using a trained model: load it (checkpoint, exported ONNX file, or torchvision-format weights),
classify images, evaluate it on a folder the paper's way.

A :class:`Classifier` is a callable from normalised float images to logits plus the data contract it
was trained with (class names, resize/crop size, mean/std). Torch models run in the fastest
inference mode accepted on this machine (:func:`alexnet.runtime.modes.resolve_inference_mode`: int8, bf16 and
oneDNN only if their top-1 agrees with fp32 on the held-out images), unless ``precision="fp32"``.
An int8 mode calibrates on the images given (``calibration``), else on a few hundred images of the
checkpoint's training data where that folder still exists, else on the held-out sample itself.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ..data import loaders, prepared
from ..data.datasets import resolve_dataset
from ..data.imagenet import class_words, error_table, format_error_table, imagenet_words, is_imagenet
from ..errors import FlagError, UserError
from ..files import atomic_write_bytes
from ..models.card import ModelCard
from ..models.checkpoint import checkpoint_card, load_checkpoint, resolve_checkpoint_path
from ..models.registry import create_model, get_spec
from .engine import evaluate, normalize
from .export import OnnxModel, is_onnx_file

if TYPE_CHECKING:
    from .quantize import Calibration

__all__ = [
    "Classifier",
    "load_classifier",
    "predict_files",
    "evaluate_folder",
    "image_paths",
    "write_eval_csv",
    "mode_lines",
    "prediction_lines",
    "describe_evaluation",
]


@dataclass
class Classifier:
    """``classifier(images)``: normalised float (N, 3, H, W) -> fp32 logits, plus its model card."""

    forward: Callable[[Tensor], Tensor]
    card: ModelCard
    source: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    module: torch.nn.Module | None = None  # the fp32 model (None for ONNX files)
    mode: dict[str, Any] = field(default_factory=lambda: {"mode": "eager-fp32"})  # the mode chosen, and why
    train_data: str | None = None  # the folder the checkpoint was trained on, as its metadata says

    def __call__(self, images: Tensor) -> Tensor:
        return self.forward(images)

    @classmethod
    def from_module(cls, module: torch.nn.Module, card: ModelCard, source: str, device: torch.device) -> Classifier:
        module = module.to(device).eval()
        return cls(module, card, source, device, module)

    @functools.cached_property
    def _decode(self) -> Callable[[Any], Tensor]:
        return loaders.decode_transform(self.card.resize_size)

    def decode(self, path: str | os.PathLike) -> Tensor:
        """An image file -> uint8 (3, resize, resize): the paper's down-sampled image (section 2)."""
        return self._decode(loaders.load_rgb(path)).as_subclass(Tensor)

    def preprocess(self, images_uint8: Tensor) -> Tensor:
        """uint8 (N, 3, resize, resize) -> the normalised centre crop the model takes."""
        x = TF.center_crop(images_uint8, [self.card.input_size, self.card.input_size])
        return normalize(x, torch.tensor(self.card.mean), torch.tensor(self.card.std))

    def fast(
        self,
        heldout: Tensor | None,
        precision: str = "auto",
        batch_size: int = 64,
        *,
        calibration: Calibration | None = None,
        workload: int | None = None,
    ) -> Classifier:
        """Switch a torch model to the fastest accepted inference mode; ``heldout``: normalised images
        (a sample of what will be classified) on which a reduced precision must agree with fp32;
        ``workload``: how many images will be classified (``auto`` quantises to int8 only for many);
        ``calibration``: what int8 calibrates on (default: see the module's docstring)."""
        if self.module is None:
            own = self.mode.get("precision", "fp32")
            if precision not in ("auto", own):
                raise UserError(f"{self.source} is a {own} model; --precision {precision} needs a checkpoint "
                                f"(or an export made with{'' if precision == 'int8' else 'out'} --int8)")  # fmt: skip
            return self
        from .modes import resolve_inference_mode

        example = heldout[:batch_size] if heldout is not None else None
        predictor, report = resolve_inference_mode(
            self.module, precision, device=self.device, heldout=heldout, example_input=example,
            calibration=calibration if calibration is not None else self._training_calibration, workload=workload,
        )  # fmt: skip
        self.forward, self.mode = predictor, report
        return self

    def _training_calibration(self) -> Calibration | None:
        """A few hundred images of the training folder, if it is still there."""
        from .quantize import load_calibration

        if self.train_data is None or not Path(self.train_data).is_dir():
            return None
        try:
            return load_calibration(self.train_data, self.card)
        except UserError:
            return None  # emptied or unreadable since: calibrate on the held-out sample instead


def load_classifier(
    source: str | os.PathLike | None,
    *,
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
) -> Classifier:
    """A checkpoint file or run folder, an exported ``.onnx`` file, or ``model=NAME, weights=PATH``
    (torchvision-format ImageNet weights, or ``"torchvision"`` for torchvision's download).
    ``device="auto"`` picks CUDA, then MPS, then the CPU."""
    from .device import resolve_device

    device = resolve_device(str(device))
    if model is not None or weights is not None:
        if model is None or weights is None:
            raise FlagError("--model and --weights go together (e.g. --model alexnet --weights alexnet.pth)")
        table = imagenet_words()  # torchvision's weights: ImageNet's classes in wnid order
        card = get_spec(model).card.trained(model, list(table), words=list(table.values()))
        return Classifier.from_module(create_model(model, 1000, weights=weights), card, str(weights), device)
    if source is None:
        raise FlagError("give a checkpoint (or run folder, or .onnx file), or --model NAME --weights PATH")
    if is_onnx_file(source):
        try:
            onnx = OnnxModel(source)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise UserError(f"{source} is not a readable ONNX model: {str(e).splitlines()[0][:200]}") from e
        mode = {"mode": f"onnxruntime-{onnx.precision}", "precision": onnx.precision}
        if onnx.quantization is not None:
            mode["calibration"] = onnx.quantization
        return Classifier(onnx, _named(onnx.card), str(source), mode=mode)
    path = resolve_checkpoint_path(source)
    net, meta = load_checkpoint(path)
    clf = Classifier.from_module(net, _named(checkpoint_card(meta, path)), str(path), device)
    clf.train_data = meta.get("data") if isinstance(meta.get("data"), str) else None
    return clf


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------
def image_paths(args: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; a folder contributes its image files (recursively, sorted, no hidden ones)."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = loaders.image_files(p)
            if not found:
                raise UserError(f"no image files in folder {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"image not found: {p}")
    return out


def predict_files(
    clf: Classifier,
    paths: Sequence[Path],
    *,
    top_k: int = 5,
    precision: str = "auto",
    batch_size: int = 64,
    heldout: int = 256,
    calibration: Calibration | None = None,
) -> list[dict[str, Any]]:
    """Top-k class names and probabilities per file; an unreadable file gets ``{"error": ...}``.

    Files are decoded ``batch_size`` at a time (a folder of any size fits in memory); the inference mode
    is chosen on the first ``heldout`` readable images (see :meth:`Classifier.fast`).
    """
    top_k = max(1, min(top_k, clf.card.num_classes))
    results: list[dict[str, Any]] = [{"file": str(p)} for p in paths]
    chunk = max(batch_size, heldout)
    chosen = False
    for start in range(0, len(paths), chunk):
        readable: list[tuple[int, Tensor]] = []
        for i in range(start, min(start + chunk, len(paths))):
            try:
                readable.append((i, clf.decode(paths[i])))
            except loaders.DECODE_ERRORS as e:
                results[i]["error"] = f"cannot read image: {loaders._reason(e)}"
        if not readable:
            continue
        images = clf.preprocess(torch.stack([t for _, t in readable]))
        if not chosen:
            clf.fast(images[:heldout], precision, batch_size, calibration=calibration, workload=len(paths))
            chosen = True
        probs = torch.cat([clf(images[s : s + batch_size]).softmax(1) for s in range(0, len(images), batch_size)])
        values, indices = probs.topk(top_k, dim=1)
        for (i, _), v, k in zip(readable, values.tolist(), indices.tolist(), strict=True):
            results[i]["top"] = [
                {"class": clf.card.classes[c], "index": c, "probability": p} for p, c in zip(v, k, strict=True)
            ]
            if clf.card.words:
                for t in results[i]["top"]:
                    t["words"] = clf.card.name(t["index"])
    return results


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def eval_folder(root: str | os.PathLike) -> Path:
    """``DATA/test``, else ``DATA/val``, else ``DATA`` itself."""
    root = resolve_dataset(root)
    if not Path(root).is_dir():
        raise UserError(f"data folder not found: {root}")
    for split in ("test", "val"):
        if (Path(root) / split).is_dir():
            return Path(root) / split
    return Path(root)


def evaluate_folder(
    clf: Classifier,
    root: str | os.PathLike,
    *,
    ten_crop: bool = False,
    precision: str = "auto",
    batch_size: int = 64,
    workers: int = 2,
    strict: bool = False,
    heldout: int = 256,
    on_step: Callable | None = None,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 (and their errors), per-class accuracy and the confusion matrix of ``clf`` on a folder
    (or a prepared dataset: see :mod:`alexnet.data.prepared`); with ``ten_crop`` on ImageNet's classes, also
    the paper's error table (``table``: :func:`~alexnet.data.imagenet.error_table`).

    The folder's class names must be among the classifier's; its targets are mapped by name. With
    ``precision="auto"`` a reduced-precision mode is used only if it agrees with fp32 on the top-1 of
    the first ``heldout`` images (int8 also reports its agreement when asked for explicitly).
    """
    ds: loaders.ImageFolderDataset | prepared.PreparedDataset
    if prepared.is_prepared(resolve_dataset(root)):  # its test, val or only split, read from the shards
        split = prepared.eval_split(resolve_dataset(root))
        folder = resolve_dataset(root) / split
        ds = prepared.PreparedDataset(folder.parent, split, resize=clf.card.resize_size)
    else:
        prepared.refuse_split_folder(resolve_dataset(root))
        folder = eval_folder(root)
        ds = loaders.ImageFolderDataset(folder, loaders.decode_transform(clf.card.resize_size), strict=strict)
    if len(ds) == 0:  # a score of 0% on nothing would read as a result
        raise UserError(f"{folder} holds no images to evaluate")
    known = clf.card.classes
    unknown = [c for c in ds.classes if c not in known]
    if unknown:
        raise UserError(
            f"{folder} has class folders the model does not know: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''} (the model's classes: {list(known[:10])}"
            f"{' ...' if len(known) > 10 else ''})"
        )
    index = {c: i for i, c in enumerate(known)}
    if isinstance(ds, prepared.PreparedDataset):
        ds.target_map = np.array([index[c] for c in ds.classes], dtype=np.int64)
    else:
        ds.samples = [(p, index[ds.classes[t]]) for p, t in ds.samples]
    loader = loaders.make_loader(ds, batch_size, shuffle=False, workers=workers, seed=0)
    sample = []
    if clf.module is not None and precision in ("auto", "int8"):
        sample = [s[0] for s in (ds[i] for i in range(min(heldout, len(ds)))) if s is not None]
    clf.fast(
        clf.preprocess(torch.stack(sample)) if sample else None, precision, batch_size,
        calibration=calibration, workload=len(ds) * (10 if ten_crop else 1),
    )  # fmt: skip
    result = evaluate(
        clf, loader, crop=clf.card.input_size, mean=torch.tensor(clf.card.mean), std=torch.tensor(clf.card.std),
        device=torch.device("cpu"), num_classes=clf.card.num_classes, ten_crop=ten_crop, on_step=on_step,
    )  # fmt: skip
    result["skipped"] += len(ds.skipped)
    result.update(folder=str(folder), source=clf.source, mode=clf.mode.get("mode"), inference=clf.mode)
    if ten_crop and is_imagenet(known):  # the paper's Table 2, next to its references
        result["table"] = error_table(result, sum(1 for n in result["per_class_images"] if n))
    return result


def describe_evaluation(
    clf: Classifier, result: dict[str, Any], *, ten_crop: bool = False, as_json: bool = False
) -> str:
    """What ``alexnet evaluate`` prints of :func:`evaluate_folder`'s ``result``: the centre crop's (and the
    10-crop's) top-1, top-5 and loss, the paper's table where there is one; or, ``as_json``, one object
    with the per-class top-1 of the classes present instead of the confusion matrix."""
    classes = list(clf.card.classes)
    if as_json:
        slim = {k: v for k, v in result.items() if k not in ("confusion", "per_class_images")}
        slim["per_class_top1"] = {
            c: a for c, a, n in zip(classes, result["per_class_top1"], result["per_class_images"], strict=True) if n
        }
        return json.dumps(slim, indent=2)
    rows = [("centre crop", result["center"]), ("10-crop", result)] if ten_crop else [("centre crop", result)]
    lines = [f"{clf.card.model} from {clf.source} on {result['folder']}: {result['images']} images "
             f"({result['skipped']} unreadable skipped), inference mode {result['mode']}"]  # fmt: skip
    for name, r in rows:
        lines.append(
            f"  {name:<12} top-1 {r['top1']:.2%} (error {r['top1_error']:.2%})   "
            f"top-5 {r['top5']:.2%} (error {r['top5_error']:.2%})   loss {r['loss']:.4f}"
        )
    if "table" in result:
        lines.append(format_error_table(result["table"]))
    return "\n".join(lines)


def mode_lines(mode: dict[str, Any]) -> list[str]:
    """How the inference mode was chosen (the report of :meth:`Classifier.fast`), a line each: why this one,
    why earlier candidates were passed over, a precision that is slow here, int8's agreement and calibration."""
    lines = []
    if mode.get("reason"):
        lines.append(f"mode {mode['reason']}")
    if mode.get("fallback_reason"):
        lines.append(f"passed over: {mode['fallback_reason']}")
    if mode.get("note"):
        lines.append(f"note: {mode['note']}")
    if "agreement" in mode:
        lines.append(f"{mode['mode']} agrees with fp32 on {mode['agreement']:.1%} of held-out images")
    record = mode.get("calibration")
    if record and mode.get("mode", "").endswith("int8"):
        lines.append(f"int8 calibrated ({record['calibration_method']}) on {record['calibration_source']}")
    return lines


def prediction_lines(results: list[dict[str, Any]]) -> list[str]:
    """:func:`predict_files`' results as ``alexnet predict`` prints them: each readable file, then its classes
    with their probabilities (the files that could not be read are left to the caller)."""
    lines = []
    for r in results:
        if "error" in r:
            continue
        lines.append(r["file"])
        for t in r["top"]:
            shown = f"{t['words']} ({t['class']})" if "words" in t else t["class"]
            lines.append(f"  {t['probability']:7.2%}  {shown}")
    return lines


def write_eval_csv(
    result: dict[str, Any], classes: list[str], folder: str | os.PathLike, words: Sequence[str] = ()
) -> dict[str, str]:
    """``per_class.csv`` (class, its ``words`` when known, images, top-1) and ``confusion.csv`` (rows: true
    class, columns: predicted) in ``folder``, plus the whole result as ``metrics.json``; returns the paths."""
    folder = Path(folder)
    per_class = io.StringIO()
    w = csv.writer(per_class)
    w.writerow(["class", *(["words"] if words else []), "images", "top1"])
    for i, (name, n, acc) in enumerate(zip(classes, result["per_class_images"], result["per_class_top1"], strict=True)):
        if n:
            w.writerow([name, *([words[i]] if words else []), n, f"{acc:.6f}"])
    confusion = io.StringIO()
    w = csv.writer(confusion)
    w.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, result["confusion"], strict=True):
        w.writerow([name, *row])
    paths = {"per_class": folder / "per_class.csv", "confusion": folder / "confusion.csv"}
    atomic_write_bytes(paths["per_class"], per_class.getvalue().encode())
    atomic_write_bytes(paths["confusion"], confusion.getvalue().encode())
    slim = {k: v for k, v in result.items() if k not in ("confusion", "per_class_top1", "per_class_images")}
    paths["metrics"] = folder / "metrics.json"
    atomic_write_bytes(paths["metrics"], (json.dumps(slim, indent=2) + "\n").encode())
    return {k: str(v) for k, v in paths.items()}


def _named(card: ModelCard) -> ModelCard:
    """A card without words gets ImageNet's when its classes are ImageNet's wnids (cards written before words)."""
    return card if card.words else replace(card, words=class_words(card.classes))


def default_eval_dir(source: str, data_folder: str) -> Path:
    """``RUN_DIR/eval/<data folder name>`` for a checkpoint inside a run folder, else next to the file."""
    src = Path(source)
    run_dir = src.parent.parent if src.parent.name == "checkpoints" else src.parent
    return run_dir / "eval" / Path(data_folder).name
