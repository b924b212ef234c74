"""Post-training static int8 quantisation of a trained model, and the images it is calibrated on.

The recipe: weights int8, symmetric, one scale per output channel; activations uint8 with one scale and
zero point per tensor, their ranges calibrated on a few hundred training images (:class:`Calibration`
records which, and how). Convolutions, fully connected layers and max pooling run in int8; everything
else (LRN's sum of squares, softmax) stays fp32. Two quantisers apply it, one per runtime:

- :func:`quantize_onnx`: ONNX Runtime's ``quantize_static`` (QDQ format) on the model's ONNX export; the
  file ``alexnet export --int8`` writes, and the ``onnxruntime-int8`` inference mode.
- :func:`quantize_pt2e`: torchao's PT2E flow with ``X86InductorQuantizer``, which ``torch.compile``
  lowers to oneDNN's int8 kernels; the ``compile-int8`` inference mode.

:func:`export_int8` writes the quantised ONNX file only after its top-1 agrees with fp32 on held-out
images (images the calibration did not see) on at least :data:`~alexnet.runtime.device.AGREEMENT_THRESHOLD`.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from ..data import loaders
from ..data.datasets import resolve_dataset
from ..errors import ModeUnavailable, UserError
from ..files import atomic_write_bytes, check_writable
from ..models.alexnet import MAX_INPUT_SIZE
from ..models.card import ModelCard
from .device import AGREEMENT_THRESHOLD
from .engine import normalize
from .export import QUANTIZATION_KEY, ExportVerificationError, OnnxModel, _onnx_proto

__all__ = [
    "CALIBRATION_METHODS",
    "CALIBRATION_IMAGES",
    "Calibration",
    "load_calibration",
    "sample_images",
    "quantize_onnx",
    "quantize_pt2e",
    "export_int8",
    "export_checkpoint_int8",
    "describe_int8_export",
    "top1_agreement",
]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_IMAGES = 256  # a few hundred: the ranges settle well before, and calibration costs a forward pass each
HELDOUT_IMAGES = 256
# What runs in int8: the matrix products and the pooling between them (max commutes with the quantisation).
_INT8_OPS = ["Conv", "Gemm", "MatMul", "MaxPool"]


@dataclass(frozen=True)
class Calibration:
    """Images whose activation ranges set the int8 scales, and how the ranges are computed from them.

    ``images``: normalised float (N, 3, H, W); ``source``: where they came from (a folder, with how they
    were picked); ``method``: ``minmax`` (the observed range), ``entropy`` (the range that keeps the
    histogram's KL divergence smallest) or ``percentile`` (the 99.999th percentile of the magnitudes).
    """

    images: Tensor
    source: str
    method: str = "minmax"
    files: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise UserError(f"unknown calibration method {self.method!r}; choose {', '.join(CALIBRATION_METHODS)}")
        if self.images.dim() != 4 or self.images.shape[0] == 0:
            raise UserError(f"calibration needs a batch of images, got shape {tuple(self.images.shape)}")

    def record(self) -> dict[str, Any]:
        """What is stored with a quantised model: the recipe, the calibration set and method."""
        return {
            "weights": "int8, symmetric, per output channel",
            "activations": "uint8, per tensor, calibrated",
            "int8_ops": list(_INT8_OPS),
            "calibration_method": self.method,
            "calibration_images": int(self.images.shape[0]),
            "calibration_source": self.source,
        }


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def _round_robin(targets: list[int], seed: int) -> list[int]:
    """Every index, in turns over the classes: each class's images shuffled (seeded), one class after another."""
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(np.flatnonzero(np.asarray(targets) == t)).tolist() for t in sorted(set(targets))]
    return [q[k] for k in range(max(map(len, queues), default=0)) for q in queues if k < len(q)]


def sample_images(
    folder: str | os.PathLike, card: ModelCard, count: int, *, seed: int = 0, exclude: frozenset[str] = frozenset()
) -> tuple[Tensor, Tensor, list[str], list[str]]:
    """Up to ``count`` readable images of ``folder`` (``<class>/<image>``), taken in turns from its classes,
    prepared as the model takes them (down-sampled, centre crop, normalised); files in ``exclude`` are not
    taken. Returns (images, targets, the folder's class names, the files used).
    """
    ds = loaders.ImageFolderDataset(folder, loaders.decode_transform(card.resize_size), verify=False)
    ds.samples = [(p, t) for p, t in ds.samples if str(p) not in exclude]
    images, targets, files = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", loaders.DataWarning)  # an unreadable file is just not picked
        for i in _round_robin(ds.targets, seed):
            item = ds[i]
            if item is None:
                continue
            images.append(item[0].as_subclass(Tensor))
            targets.append(item[1])
            files.append(str(ds.samples[i][0]))
            if len(images) == count:
                break
    if not images:
        raise UserError(f"no readable images in {folder}")
    crop = TF.center_crop(torch.stack(images), [card.input_size, card.input_size])
    return normalize(crop, torch.tensor(card.mean), torch.tensor(card.std)), torch.tensor(targets), ds.classes, files


def _split(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def load_calibration(
    source: str | os.PathLike,
    card: ModelCard,
    *,
    count: int = CALIBRATION_IMAGES,
    method: str = "minmax",
    seed: int = 0,
) -> Calibration:
    """``count`` training images of ``source`` (a folder or bundled dataset name): its ``train`` split if it
    has one, else the folder itself; picked in turn from each class with a seeded shuffle."""
    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method {method!r}; choose {', '.join(CALIBRATION_METHODS)}")
    root = resolve_dataset(source)
    if not Path(root).is_dir():
        raise UserError(f"calibration folder not found: {root}")
    folder = _split(Path(root), ("train",)) or Path(root)
    images, _, _, files = sample_images(folder, card, count, seed=seed)
    where = f"{len(files)} images of {folder}, spread over its classes (seed {seed})"
    return Calibration(images, where, method, tuple(files))


def heldout_set(
    source: str | os.PathLike, card: ModelCard, calibration: Calibration, *, count: int = HELDOUT_IMAGES
) -> tuple[Tensor, Tensor | None, str]:
    """Images the calibration did not see: ``source``'s ``val`` (else ``test``) split, else the rest of the
    folder. Returns (images, targets in the model's class indices where the folder's classes are the
    model's, else None, a description)."""
    root = Path(resolve_dataset(source))
    folder = _split(root, ("val", "test")) or root
    images, targets, classes, files = sample_images(folder, card, count, exclude=frozenset(calibration.files))
    known = {c: i for i, c in enumerate(card.classes)}
    labels = torch.tensor([known[classes[t]] for t in targets]) if set(classes) <= set(known) else None
    return images, labels, f"{len(files)} images of {folder}"


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------
class _Reader:
    """ONNX Runtime's calibration data reader over a tensor of images, in batches."""

    def __init__(self, images: Tensor, input_name: str, batch_size: int = 32) -> None:
        self._batches = iter(
            [{input_name: images[i : i + batch_size].numpy()} for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise ModeUnavailable("int8 ONNX models need onnxruntime (pip install 'alexnet[int8]')") from e


def quantize_onnx(
    model: nn.Module,
    calibration: Calibration,
    card: ModelCard | None = None,
    *,
    keep_fp32: tuple[str, ...] = (),
    reduce_range: bool = False,
    symmetric_activations: bool = False,
) -> bytes:
    """The model as a quantised ONNX model (QDQ format, dynamic batch), serialized.

    ``card`` (and the quantisation record) go into the metadata when given. ``keep_fp32``: names of
    layers (``conv1``, ``fc8``, ...) to leave in fp32. ``reduce_range``: 7-bit weights, so that the
    16-bit sums of a CPU without int8 dot products (VNNI) cannot saturate. ``symmetric_activations``:
    activation ranges centred on 0 (int8) instead of fitted (uint8 with a zero point).
    """
    _require_onnxruntime()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = model.float().cpu().eval()
    proto = _onnx_proto(model, calibration.images[:2].float().cpu())
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        plain, prepared, quantised = (Path(tmp) / n for n in ("model.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(proto, plain)
        quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
        excluded = _onnx_nodes(onnx.load(str(prepared)), model, keep_fp32)
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            quantize_static(
                str(prepared), str(quantised), _Reader(calibration.images.float().cpu(), "images"),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8, op_types_to_quantize=_INT8_OPS, nodes_to_exclude=excluded,
                calibrate_method=methods[calibration.method],
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": symmetric_activations},
            )  # fmt: skip
        result = onnx.load(str(quantised))
    del result.metadata_props[:]
    if card is not None:
        for key, value in card.to_metadata().items():
            result.metadata_props.add(key=key, value=value)
        record = calibration.record() | {"fp32_layers": list(keep_fp32), "weight_bits": 7 if reduce_range else 8}
        result.metadata_props.add(key=QUANTIZATION_KEY, value=json.dumps(record))
    return result.SerializeToString()


class _quiet:
    """Silence the calibrators' progress prints (stdout) while quantising."""

    def __enter__(self) -> None:
        import contextlib
        import io

        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._redirect.__exit__(*exc)


def _onnx_nodes(proto: Any, model: nn.Module, layers: tuple[str, ...]) -> list[str]:
    """The ONNX node names of the model's conv/fc layers named in ``layers`` (paper names)."""
    if not layers:
        return []
    from ..models.alexnet import named_layers

    ours = [name for name, _ in named_layers(model)]  # type: ignore[arg-type]
    unknown = [n for n in layers if n not in ours]
    if unknown:
        raise UserError(f"no layer {unknown[0]!r} to keep in fp32; the layers are {', '.join(ours)}")
    nodes = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    if len(nodes) != len(ours):
        raise ModeUnavailable(f"the ONNX graph has {len(nodes)} conv/fc nodes, the model {len(ours)} layers")
    return [node for node, name in zip(nodes, ours, strict=True) if name in layers]


# --------------------------------------------------------------------------------------------
# torchao PT2E + inductor
# --------------------------------------------------------------------------------------------
def quantize_pt2e(model: nn.Module, calibration: Calibration) -> nn.Module:
    """The model quantised by torchao's PT2E flow for x86 (a ``torch.fx`` module computing with quantise /
    dequantise pairs); ``torch.compile`` with freezing turns it into oneDNN int8 kernels.

    ``minmax`` calibrates on the observed ranges; the other methods use the quantizer's histogram observer
    (the range that minimises the quantisation error of the histogram).
    """
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.observer import MinMaxObserver
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise ModeUnavailable(f"compile-int8 needs torchao (pip install 'alexnet[int8]'): {e}") from e
    config = xiq.get_default_x86_inductor_quantization_config()
    if calibration.method == "minmax":
        act = replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        config = replace(config, input_activation=act, output_activation=act)
    images = calibration.images.float().cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = images[:2] if len(images) >= 2 else images.expand(2, -1, -1, -1)  # batch 1 would be specialised
    program = torch.export.export(copy.deepcopy(model).float().cpu().eval(), (example,), dynamic_shapes=({0: batch},))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes on layers it leaves in fp32 (a max pool after LRN), deprecations
        prepared = prepare_pt2e(program.module(), xiq.X86InductorQuantizer().set_global(config))
        with torch.no_grad():
            for i in range(0, len(images), 32):
                prepared(images[i : i + 32])
        return convert_pt2e(prepared)


# --------------------------------------------------------------------------------------------
# Agreement and the int8 export
# --------------------------------------------------------------------------------------------
def top1_agreement(logits: Tensor, reference: Tensor) -> float:
    """Fraction of rows whose arg-max equals the reference's."""
    return float((logits.argmax(1) == reference.argmax(1)).float().mean())


def _batched(fn: Any, images: Tensor, batch_size: int = 64) -> Tensor:
    with torch.no_grad():
        return torch.cat([fn(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])


def export_int8(
    model: nn.Module,
    card: ModelCard,
    output: str | os.PathLike,
    calibration: Calibration,
    heldout: tuple[Tensor, Tensor | None, str],
    *,
    keep_fp32: tuple[str, ...] = (),
    threshold: float | None = None,
    weight_bits: int = 7,
) -> dict[str, Any]:
    """Quantise ``model`` (:func:`quantize_onnx`), check it against fp32 on ``heldout`` (images, labels or
    None, description: :func:`heldout_set`) and write it to ``output`` only if its top-1 agrees on at least
    ``threshold`` of them (default :data:`~alexnet.runtime.device.AGREEMENT_THRESHOLD`); returns a report.

    ``weight_bits`` 7 (the default) keeps every weight within +-64: on a CPU without int8 dot products
    (VNNI), ONNX Runtime sums pairs of uint8 x int8 products in 16 bits, and 2 x 255 x 64 = 32,640 cannot
    overflow them where 2 x 255 x 127 can. The file is checked here but may run on any CPU, so the
    agreement measured holds there too; 8 is for files that only run where there is VNNI or AMX.

    Raises :class:`~alexnet.runtime.export.ExportVerificationError` (and writes nothing) below the threshold.
    """
    threshold = AGREEMENT_THRESHOLD if threshold is None else threshold
    check_writable(output)
    start = time.perf_counter()
    size = calibration.images.shape[-1]
    minimum = getattr(model, "min_input_size", 1)
    if not minimum <= size <= MAX_INPUT_SIZE:
        raise UserError(f"{card.model} exports for inputs from {minimum} to {MAX_INPUT_SIZE} pixels, not {size}")
    card = replace(card, input_size=size, resize_size=max(size, card.resize_size))
    if weight_bits not in (7, 8):
        raise UserError(f"int8 weights keep 7 or 8 bits, not {weight_bits}")
    blob = quantize_onnx(model, calibration, card, keep_fp32=keep_fp32, reduce_range=weight_bits == 7)
    quantised = OnnxModel(blob)
    images, labels, where = heldout
    reference = _batched(model.float().cpu().eval(), images)
    logits = _batched(quantised, images)
    agree = top1_agreement(logits, reference)
    report: dict[str, Any] = {
        "format": "onnx",
        "precision": "int8",
        "output": str(output),
        "bytes": len(blob),
        "input_shape": ["batch", 3, size, size],
        "quantization": quantised.quantization,
        "heldout": where,
        "heldout_images": len(images),
        "agreement": agree,
        "threshold": threshold,
    }
    if labels is not None:
        report["fp32_top1"] = float((reference.argmax(1) == labels).float().mean())
        report["int8_top1"] = float((logits.argmax(1) == labels).float().mean())
    if quantised.card != card:
        raise ExportVerificationError(f"int8 export did not keep its model card (read back: {quantised.card})")
    if not agree >= threshold:
        raise ExportVerificationError(
            f"the int8 model's top-1 agrees with fp32 on {agree:.1%} of {where}, below {threshold:.0%}; "
            f"nothing written to {output} (try more calibration images, another --calibration-method, "
            f"or --keep-fp32 conv1)"
        )
    atomic_write_bytes(output, blob)
    report["seconds"] = time.perf_counter() - start
    return report


def export_checkpoint_int8(
    model: nn.Module,
    card: ModelCard,
    output: str | os.PathLike,
    *,
    calibration: str | os.PathLike | None = None,
    train_data: Any = None,
    images: int = CALIBRATION_IMAGES,
    method: str = "minmax",
    keep_fp32: tuple[str, ...] = (),
    weight_bits: int = 7,
    input_size: int | None = None,
) -> dict[str, Any]:
    """``alexnet export --int8``: calibrate ``model`` on ``images`` of ``calibration`` (default: the folder it
    was trained on, ``train_data`` from its checkpoint, if that is still there), check it on held-out images
    of the same source and write ``output`` (:func:`export_int8`); returns its report."""
    source = calibration or (train_data if isinstance(train_data, str) and Path(train_data).is_dir() else None)
    if source is None:
        raise UserError("--int8 needs images to calibrate on: --calibration DATA (the checkpoint's training "
                        f"data, {train_data or 'not recorded'}, is not there)")  # fmt: skip
    if input_size:
        card = replace(card, input_size=input_size, resize_size=max(input_size, card.resize_size))
    chosen = load_calibration(source, card, count=images, method=method)
    heldout = heldout_set(source, card, chosen)
    return export_int8(model, card, output, chosen, heldout, keep_fp32=tuple(keep_fp32), weight_bits=weight_bits)


def describe_int8_export(report: dict[str, Any]) -> str:
    """:func:`export_int8`'s report in a line: the file, its recipe and calibration, the agreement it passed."""
    recipe = report["quantization"]
    accuracy = (
        f"; held-out top-1 fp32 {report['fp32_top1']:.2%}, int8 {report['int8_top1']:.2%}"
        if "int8_top1" in report
        else ""
    )
    return (
        f"wrote {report['output']} (onnx int8, {recipe['weight_bits']}-bit weights, {report['bytes'] / 1e6:.1f} MB, "
        f"input {report['input_shape']}); "
        f"calibrated ({recipe['calibration_method']}) on {recipe['calibration_source']}; top-1 agreement with fp32 "
        f"on {report['heldout']}: {report['agreement']:.2%} (needs {report['threshold']:.0%}){accuracy}"
    )
