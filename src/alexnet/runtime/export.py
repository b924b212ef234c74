"""Export a trained model to ONNX, TorchScript or a ``torch.export`` program, with its data contract.

Every exported file carries the model card (model name, class names, input/resize size, mean/std),
so a consumer needs nothing else to preprocess images and name the predictions: ONNX
``metadata_props`` (one JSON value per field), or an ``alexnet.json`` extra file in the TorchScript /
exported-program archive. The batch dimension is dynamic.

The export is verified before anything is written: the serialized bytes are loaded back (ONNX
Runtime for ONNX, ``torch.jit.load`` / ``torch.export.load`` for the others) and run on a random
batch whose size differs from the traced one; the maximum absolute difference to PyTorch must be
within ``1e-4 * max(1, max |logit|)``. Only then is the file written, atomically.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_write_bytes, check_writable
from ..models.alexnet import MAX_INPUT_SIZE
from ..models.card import ModelCard

__all__ = [
    "FORMATS",
    "ExportVerificationError",
    "export_model",
    "describe_export",
    "export_onnx",
    "OnnxModel",
    "is_onnx_file",
    "ort_session",
]

Format = Literal["onnx", "torchscript", "exported-program"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "exported-program")
EXTRA_FILE = "alexnet.json"
QUANTIZATION_KEY = "quantization"  # ONNX metadata: an int8 model's recipe and calibration, next to its card
TOLERANCE = 1e-4
_TRACE_BATCH, _CHECK_BATCH = 2, 3  # verify on a batch size other than the traced one: the batch is dynamic


class ExportVerificationError(RuntimeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def _onnx_proto(model: nn.Module, example: torch.Tensor) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,  # the TorchScript-based exporter cannot size adaptive_avg_pool2d with a dynamic batch
            dynamic_shapes=_dynamic_batch(),
            input_names=["images"],
            output_names=["logits"],
            verbose=False,
        )
    return program.model_proto


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str | os.PathLike, card: ModelCard | None = None
) -> None:
    """Write ``model`` as ONNX (dynamic batch, input ``images``, output ``logits``), unverified."""
    proto = _onnx_proto(model.eval(), example)
    for key, value in (card.to_metadata() if card is not None else {}).items():
        proto.metadata_props.add(key=key, value=value)
    atomic_write_bytes(path, proto.SerializeToString())


def _serialize(model: nn.Module, fmt: str, example: torch.Tensor, card: ModelCard) -> bytes:
    blob = json.dumps(card.to_json())
    if fmt == "onnx":
        proto = _onnx_proto(model, example)
        for key, value in card.to_metadata().items():
            proto.metadata_props.add(key=key, value=value)
        return proto.SerializeToString()
    buffer = io.BytesIO()
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the shape check, the API's deprecation
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: blob})
    elif fmt == "exported-program":
        program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch())
        torch.export.save(program, buffer, extra_files={EXTRA_FILE: blob})
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return buffer.getvalue()


def _load_and_run(data: bytes, fmt: str, x: torch.Tensor) -> tuple[torch.Tensor, ModelCard, str]:
    """Run the serialized model on ``x``; returns (logits, the card read back, what ran it)."""
    if fmt == "onnx":
        import onnxruntime as ort

        onnx = OnnxModel(data)
        return onnx(x), onnx.card, f"onnxruntime {ort.__version__}"
    files = {EXTRA_FILE: ""}
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=files)
        runner = "torch.jit.load"
    else:
        module = torch.export.load(io.BytesIO(data), extra_files=files).module()
        runner = "torch.export.load"
    with torch.no_grad():
        out = module(x)
    return out, ModelCard.from_json(json.loads(files[EXTRA_FILE])), runner


def export_model(
    model: nn.Module,
    card: ModelCard,
    fmt: Format,
    output: str | os.PathLike,
    input_size: int | None = None,
    *,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Export ``model`` with its model card to ``output``; verify; return a report.

    ``input_size`` defaults to the card's. Checks first that ``output`` can be written and the size is
    one the model takes, so nothing slow runs for a export that cannot succeed. Raises
    :class:`ExportVerificationError` (and writes nothing) when the reloaded model differs from PyTorch
    by more than ``tolerance * max(1, max |logit|)``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    size = int(input_size or card.input_size)
    minimum = getattr(model, "min_input_size", 1)
    if not minimum <= size <= MAX_INPUT_SIZE:
        raise UserError(f"{card.model} exports for inputs from {minimum} to {MAX_INPUT_SIZE} pixels, not {size}")
    check_writable(output)
    card = replace(card, input_size=size, resize_size=max(size, card.resize_size))
    start = time.perf_counter()
    model = model.float().cpu().eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(_TRACE_BATCH, 3, size, size, generator=generator)
    check = torch.randn(_CHECK_BATCH, 3, size, size, generator=generator)
    data = _serialize(model, fmt, example, card)
    with torch.no_grad():
        expected = model(check)
    got, read_back, runner = _load_and_run(data, fmt, check)
    diff = float((got.float() - expected).abs().max())
    limit = tolerance * max(1.0, float(expected.abs().max()))
    report = {
        "format": fmt,
        "output": str(output),
        "bytes": len(data),
        "input_shape": ["batch", 3, size, size],
        "verified_with": runner,
        "check_batch": _CHECK_BATCH,
        "max_abs_diff": diff,
        "tolerance": limit,
        "metadata": sorted(read_back.to_json()),
    }
    if not diff <= limit:  # also catches NaN
        raise ExportVerificationError(
            f"{fmt} export of {card.model} differs from PyTorch by {diff:.3g} (tolerance {limit:.3g}); "
            f"nothing written to {output}"
        )
    if read_back != card:
        raise ExportVerificationError(f"{fmt} export did not keep its model card (read back: {read_back})")
    atomic_write_bytes(output, data)
    report["seconds"] = time.perf_counter() - start
    return report


def describe_export(report: dict[str, Any]) -> str:
    """:func:`export_model`'s report in a line: the file, its size and input, how it was verified."""
    return (
        f"wrote {report['output']} ({report['format']}, {report['bytes'] / 1e6:.1f} MB, "
        f"input {report['input_shape']}); "
        f"verified with {report['verified_with']} on a batch of {report['check_batch']}: "
        f"max abs diff {report['max_abs_diff']:.2e} (tolerance {report['tolerance']:.1e})"
    )


# --------------------------------------------------------------------------------------------
# Using an exported ONNX file
# --------------------------------------------------------------------------------------------
def is_onnx_file(path: str | os.PathLike) -> bool:
    """An ``.onnx`` file (by name: checkpoints are ``.safetensors`` or run folders)."""
    return Path(path).suffix.lower() == ".onnx" and Path(path).is_file()


def ort_session(source: str | os.PathLike | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on a model file or its bytes, with torch's thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An exported ONNX model and its model card: ``onnx(images)`` takes normalised float images
    (N, 3, H, W) and returns logits as a torch tensor. ``source``: a path or the serialized bytes.
    ``quantization``: the int8 export's record (recipe, calibration set and method), or None."""

    def __init__(self, source: str | os.PathLike | bytes, threads: int | None = None) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise UserError("reading ONNX files needs onnxruntime (pip install 'alexnet[export]')") from e
        self.session = ort_session(source, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            self.card = ModelCard.from_metadata(metadata)
        except ValueError as e:
            raise UserError(f"{source if isinstance(source, str | os.PathLike) else 'the model'} was not exported "
                            f"by alexnet export: {e}") from e  # fmt: skip
        record = metadata.get(QUANTIZATION_KEY)
        self.quantization: dict[str, Any] | None = json.loads(record) if record else None
        self._input = self.session.get_inputs()[0].name

    @property
    def precision(self) -> str:
        """``int8`` for a quantised model, else ``fp32``."""
        return "int8" if self.quantization is not None else "fp32"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self._input: x})[0])
