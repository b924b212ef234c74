"""Fast inference and training modes, and the rule that decides whether one may be used.

A *mode* is a way to run the same network: a precision (fp32, bf16, fp16, int8), a memory format, and
an execution engine (eager PyTorch, torch.autocast, a cast copy, oneDNN with pre-packed weights,
``torch.compile``, ONNX Runtime; for int8, a quantised copy calibrated on images:
:mod:`alexnet.runtime.quantize`). :data:`INFERENCE_MODES` and :data:`TRAINING_MODES` are the tables,
:data:`ENGINES` builds a callable for each engine, :func:`prepare_inference` / :func:`prepare_training`
put the two together. A reduced-precision mode is accepted only if its top-1 predictions agree with
fp32 on at least 99% of held-out images (:func:`agreement`, :func:`resolve_inference_mode`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ..errors import InputTooSmall, ModeUnavailable, UserError, first_line
from . import device as _device
from .device import AGREEMENT_THRESHOLD, DTYPES, Precision, autocast_context, sgd_kwargs
from .engine import backward_update, forward_loss

if TYPE_CHECKING:
    from .autotune import TimingCache
    from .quantize import Calibration

__all__ = [
    "Mode",
    "INFERENCE_MODES",
    "TRAINING_MODES",
    "ENGINES",
    "Predictor",
    "TrainStep",
    "prepare_inference",
    "prepare_training",
    "training_candidates",
    "resolve_training_mode",
    "compile_in_place",
    "agreement",
    "resolve_inference_mode",
    "inference_mode_for",
    "inference_candidates",
    "AGREEMENT_THRESHOLD",
]

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Mode:
    """One way to run the network.

    ``tolerance`` (checked by the tests) bounds, for inference, ``max |logits - fp32 logits| / max |fp32
    logits|``; for one training step, the relative difference of the loss and ``1 - cos`` of the angle
    between each weight's update and fp32's. What decides whether a mode is used is top-1 agreement
    with fp32 (:func:`resolve_inference_mode`) and, for training, reaching fp32's accuracy.
    """

    name: str
    precision: Precision
    engine: Literal["eager", "autocast", "cast", "onednn", "compile", "onnxruntime", "compile-int8", "onnxruntime-int8"]
    tolerance: float
    devices: tuple[str, ...]
    channels_last: bool
    description: str


_ANY, _CPU, _CUDA = ("cpu", "cuda"), ("cpu",), ("cuda",)
_EXACT, _FP32, _BF16, _FP16 = 1e-6, 1e-4, 2e-2, 1e-2  # bf16 keeps 8 significant bits, fp16 11
_INT8 = 0.15  # 256 levels per tensor, rounded again in every layer; top-1 agreement is what decides

INFERENCE_MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("eager-fp32", "fp32", "eager", _EXACT, _ANY, False, "the model as written, NCHW"),
        Mode("channels-last-fp32", "fp32", "eager", _FP32, _ANY, True, "channels-last memory format"),
        Mode("onednn-fp32", "fp32", "onednn", _FP32, _CPU, True, "oneDNN, pre-packed weights, fused ReLU"),
        Mode("compile-fp32", "fp32", "compile", _FP32, _ANY, True, "torch.compile (inductor), frozen weights"),
        Mode("onnxruntime-fp32", "fp32", "onnxruntime", _FP32, _CPU, False, "ONNX Runtime, CPU provider"),
        Mode("autocast-bf16", "bf16", "autocast", _BF16, _ANY, True, "torch.autocast, channels-last"),
        Mode("bf16", "bf16", "cast", _BF16, _ANY, True, "weights and activations in bf16, channels-last"),
        Mode("onednn-bf16", "bf16", "onednn", _BF16, _CPU, True, "oneDNN, pre-packed bf16 weights, fused ReLU"),
        Mode("compile-bf16", "bf16", "compile", _BF16, _ANY, True, "bf16 weights, torch.compile, frozen weights"),
        Mode("autocast-fp16", "fp16", "autocast", _FP16, _CUDA, True, "torch.autocast, channels-last"),
        Mode("fp16", "fp16", "cast", _FP16, _CUDA, True, "weights and activations in fp16, channels-last"),
        Mode("compile-fp16", "fp16", "compile", _FP16, _CUDA, True, "fp16 weights, torch.compile"),
        Mode("compile-int8", "int8", "compile-int8", _INT8, _CPU, True, "torchao PT2E int8, compiled to oneDNN"),
        Mode("onnxruntime-int8", "int8", "onnxruntime-int8", _INT8, _CPU, False, "ONNX Runtime, static int8 (QDQ)"),
    )
}
# The order a precision's modes are tried in when none has been timed on this machine (``auto`` times
# them: :func:`resolve_inference_mode`); the rest of a precision's modes follow in the table's order.
_FIRST = {"cpu": {"fp32": "onednn-fp32", "bf16": "onednn-bf16", "int8": "compile-int8"},
          "cuda": {"fp32": "channels-last-fp32", "bf16": "bf16", "fp16": "fp16"}}  # fmt: skip
INT8_MODES = ("compile-int8", "onnxruntime-int8")

TRAINING_MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("eager-fp32", "fp32", "eager", _EXACT, _ANY, False, "NCHW, plain SGD: the baseline's set-up"),
        Mode("channels-last-fp32", "fp32", "eager", _FP32, _ANY, True, "channels-last, fused SGD"),
        Mode("compile-fp32", "fp32", "compile", 1e-3, _ANY, True, "channels-last, fused SGD, compiled"),
        # bf16 gradients of a freshly initialised net differ from fp32's by ~10% in norm (cos ~0.98-0.997)
        Mode("autocast-bf16", "bf16", "autocast", 5e-2, _ANY, True, "autocast, channels-last, fused SGD"),
        Mode("compile-bf16", "bf16", "compile", 5e-2, _ANY, True, "autocast, channels-last, fused SGD, compiled"),
        Mode("autocast-fp16", "fp16", "autocast", 2e-2, _CUDA, True, "autocast + loss scaling, fused SGD"),
    )
}


def _modes_of(precision: str, device: torch.device) -> list[str]:
    """The inference modes of ``precision`` that run on ``device``, the one tried first (:data:`_FIRST`) first."""
    modes = [m.name for m in INFERENCE_MODES.values() if m.precision == precision and device.type in m.devices]
    first = _FIRST.get(device.type, {}).get(precision)
    return sorted(modes, key=lambda m: m != first)


def inference_mode_for(precision: str, device: torch.device | str) -> str:
    """The mode of a precision tried first on a device when none has been timed there (``auto``: of the
    precision :func:`~alexnet.runtime.device.default_precision` names)."""
    device = torch.device(device)
    if precision == "auto":
        precision = _device.default_precision(device)
    if precision not in (*DTYPES, "int8"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16, fp16 or int8")
    if precision == "int8" and device.type != "cpu":
        raise ModeUnavailable(f"int8 inference runs on the CPU, not {device.type}; use bf16 or fp16 there")
    if precision == "fp16" and device.type == "cpu":
        raise ModeUnavailable("fp16 needs a GPU; use fp32 (or bf16 where the CPU has it natively) on the CPU")
    modes = _modes_of(precision, device)
    if not modes:
        raise ModeUnavailable(f"no {precision} inference mode runs on {device.type}")
    return modes[0]


def _check_device(mode: Mode, device: torch.device) -> None:
    if device.type not in mode.devices:
        raise ModeUnavailable(f"{mode.name} runs on {'/'.join(mode.devices)}, not {device.type}")


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# Engines: (model in eval mode, mode, device, example input, calibration) -> a callable on fp32 NCHW images
# --------------------------------------------------------------------------------------------
def _channels_last(fn: Forward) -> Forward:
    return lambda x: fn(x.contiguous(memory_format=torch.channels_last))


def _cast_input(fn: Forward, dtype: torch.dtype) -> Forward:
    return lambda x: fn(x.to(dtype, memory_format=torch.channels_last))


def _eager(
    model: nn.Module, mode: Mode, device: torch.device, example: torch.Tensor, _calibration: Calibration | None
) -> Forward:
    if mode.channels_last:
        return _channels_last(copy.deepcopy(model).to(device, memory_format=torch.channels_last))
    return model if _model_device(model) == device else copy.deepcopy(model).to(device)


def _autocast(
    model: nn.Module, mode: Mode, device: torch.device, example: torch.Tensor, _calibration: Calibration | None
) -> Forward:
    fn = _channels_last(copy.deepcopy(model).to(device, memory_format=torch.channels_last))

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(device, mode.precision):
            return fn(x)

    return run


def _cast(
    model: nn.Module, mode: Mode, device: torch.device, example: torch.Tensor, _calibration: Calibration | None
) -> Forward:
    dtype = DTYPES[mode.precision]
    return _cast_input(copy.deepcopy(model).to(device, dtype, memory_format=torch.channels_last), dtype)


def _onednn(
    model: nn.Module, mode: Mode, device: torch.device, example: torch.Tensor, _calibration: Calibration | None
) -> Forward:
    from .onednn import OneDNNAlexNet

    return OneDNNAlexNet(model, DTYPES[mode.precision], tuple(example.shape))


def _require_compiler(device: torch.device) -> None:
    """Inductor compiles C++ on the CPU (and Triton on CUDA): fail early, with the reason, without one."""
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as e:  # noqa: BLE001 - any failure here means "no usable C++ compiler"
            raise ModeUnavailable(f"torch.compile needs a C++ compiler on the CPU: {e}") from e


def _compile(
    model: nn.Module, mode: Mode, device: torch.device, example: torch.Tensor, _calibration: Calibration | None
) -> Forward:
    import torch._inductor.config as inductor_config

    _require_compiler(device)
    dtype = DTYPES[mode.precision]
    copy_ = copy.deepcopy(model).to(device, dtype, memory_format=torch.channels_last)
    # Every compiled AlexNet shares one code object, and so one cache of compiled graphs (one per model
    # object and batch size): past dynamo's default limit of 8 it silently falls back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(copy_, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        # Freezing folds the weights into the graph as constants, which lets inductor pre-pack them.
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return _cast_input(run, dtype)


def _session_forward(session: Any) -> Forward:
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().contiguous().numpy()})[0])

    return run


def _onnxruntime(
    model: nn.Module, mode: Mode, device: torch.device, example: torch.Tensor, _calibration: Calibration | None
) -> Forward:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ModeUnavailable("onnxruntime is not installed (pip install 'alexnet[export]')") from e
    from .export import export_onnx, ort_session

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, example, path)
        session = ort_session(path)
    return _session_forward(session)


def _calibrated(example: torch.Tensor, calibration: Calibration | None) -> Calibration:
    from .quantize import Calibration

    return calibration if calibration is not None else Calibration(example.cpu(), "the example input")


def _onnxruntime_int8(
    model: nn.Module, mode: Mode, device: torch.device, example: torch.Tensor, calibration: Calibration | None
) -> Forward:
    from .export import ort_session
    from .quantize import quantize_onnx

    reduce_range = _ort_weight_bits(device) == 7
    run = _session_forward(
        ort_session(quantize_onnx(model, _calibrated(example, calibration), reduce_range=reduce_range))
    )
    run.weight_bits = 7 if reduce_range else 8  # type: ignore[attr-defined]  # for the quantisation record
    return run


def _ort_weight_bits(device: torch.device) -> int:
    """Without int8 dot products ONNX Runtime sums pairs of products in 16 bits: 7-bit weights cannot overflow."""
    return 8 if _device.native_int8(device) else 7


def _compile_int8(
    model: nn.Module, mode: Mode, device: torch.device, example: torch.Tensor, calibration: Calibration | None
) -> Forward:
    import torch._inductor.config as inductor_config

    from .quantize import quantize_pt2e

    _require_compiler(device)
    quantised = quantize_pt2e(model, _calibrated(example, calibration))
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(quantised, dynamic=False)
    size = example.shape[0]

    def run(x: torch.Tensor) -> torch.Tensor:
        # Compiled once, for the example's batch size: a smaller batch (the last of an evaluation) is padded
        # and a larger one split, which costs less than compiling again. Freezing is what turns the
        # quantise/dequantise pairs around each conv and linear into oneDNN int8 calls.
        with inductor_config.patch(freezing=True), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the int8 lowering's notes while it compiles
            outs = []
            for chunk in x.split(size):
                n = chunk.shape[0]
                if n < size:
                    chunk = torch.cat([chunk, chunk.new_zeros(size - n, *chunk.shape[1:])])
                outs.append(compiled(chunk)[:n])
            return torch.cat(outs)

    return run


Engine = Callable[[nn.Module, Mode, torch.device, torch.Tensor, "Calibration | None"], Forward]
ENGINES: dict[str, Engine] = {
    "eager": _eager,
    "autocast": _autocast,
    "cast": _cast,
    "onednn": _onednn,
    "compile": _compile,
    "onnxruntime": _onnxruntime,
    "compile-int8": _compile_int8,
    "onnxruntime-int8": _onnxruntime_int8,
}


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------
@dataclass
class Predictor:
    """A prepared model: ``predictor(images)`` -> fp32 logits, under ``torch.inference_mode``."""

    mode: str
    device: torch.device
    fn: Forward
    setup_s: float = 0.0  # packing / compiling / exporting / quantising time, paid once
    calibration: dict[str, Any] | None = None  # int8 modes: the quantisation record (what it was calibrated on)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.fn(images.to(self.device, torch.float32)).float()


def prepare_inference(
    model: nn.Module,
    mode: str,
    example_input: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    *,
    calibration: Calibration | None = None,
) -> Predictor:
    """Build a :class:`Predictor` running ``model`` in ``mode`` (a key of :data:`INFERENCE_MODES`).

    The predictor is a snapshot: every mode except ``eager-fp32`` works on a copy of the weights taken
    now (cast, packed, compiled, exported or quantised), so prepare it again after the weights change.
    ``model`` is put in eval mode and otherwise left as it is. ``example_input`` (a typical batch) gives
    the packing hints and the compiled/exported shapes, and is run once to check that the mode works
    here; raises :class:`ModeUnavailable` when it cannot. The int8 modes set their activation ranges on
    ``calibration`` (:class:`~alexnet.runtime.quantize.Calibration`; default: the example input itself, which
    is enough to time them but not to trust their predictions).
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of: {', '.join(INFERENCE_MODES)}")
    spec = INFERENCE_MODES[mode]
    device = torch.device(device) if device is not None else _model_device(model)
    _check_device(spec, device)
    if example_input is None:
        size = model.spec.card.input_size if hasattr(model, "spec") else 224
        example_input = torch.randn(1, 3, size, size)
    example_input = example_input.to(device, torch.float32)
    start = time.perf_counter()
    with _refusals_as_unavailable(mode):  # packing, exporting, quantising, compiling, the first run
        fn = ENGINES[spec.engine](model.eval(), spec, device, example_input, calibration)
        record = _calibrated(example_input, calibration).record() if spec.precision == "int8" else None
        if hasattr(fn, "weight_bits"):
            record = record | {"weight_bits": fn.weight_bits}  # type: ignore[operator]
        predictor = Predictor(mode, device, fn, calibration=record)
        predictor(example_input)  # compiles / warms up; fails here rather than mid-evaluation
    predictor.setup_s = time.perf_counter() - start
    return predictor


@contextlib.contextmanager
def _refusals_as_unavailable(mode: str) -> Iterator[None]:
    """What a backend raises where it cannot run (oneDNN refusing bf16 on a CPU without AVX-512, inductor
    without a working C++ compiler, ONNX Runtime's own errors) becomes :class:`ModeUnavailable`, with the
    reason in one line; the project's own errors about the input pass through as they are."""
    try:
        yield
    except (ModeUnavailable, UserError, InputTooSmall):
        raise
    except Exception as e:  # noqa: BLE001 - the runtimes raise their own types; each means "not here"
        raise ModeUnavailable(f"{mode} cannot run on this machine: {type(e).__name__}: {first_line(e)}") from e


def _batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, images.shape[0], batch_size):
        yield images[i : i + batch_size]


@torch.inference_mode()
def agreement(
    model: nn.Module,
    mode: str | Predictor,
    images: torch.Tensor,
    *,
    reference: torch.Tensor | None = None,
    batch_size: int = 64,
) -> float:
    """Fraction of ``images`` (normalised float NCHW) whose top-1 class in ``mode`` equals fp32's.

    ``reference``: the fp32 logits or predicted classes, if already computed.
    """
    if images.shape[0] == 0:
        raise ValueError("agreement needs at least one image")
    predictor = mode if isinstance(mode, Predictor) else prepare_inference(model, mode, images[:batch_size])
    if reference is None:
        reference = _fp32_top1(model, images, batch_size)
    elif reference.dim() == 2:
        reference = reference.argmax(1)
    predicted = torch.cat([predictor(b).argmax(1).cpu() for b in _batches(images, batch_size)])
    return float((predicted == reference.cpu()).float().mean())


def inference_candidates(precision: str, device: torch.device | str) -> list[str]:
    """The modes :func:`resolve_inference_mode` chooses among for ``precision``, in the order tried when
    none has been timed here.

    ``auto``: every mode of the device in a precision it computes natively (bf16 only with native bf16:
    emulated it is slower than fp32; int8 on the CPU), then fp32's. An explicit precision: its modes,
    then plain PyTorch fp32 (for a build without oneDNN, compiler or onnxruntime).
    """
    device = torch.device(device)
    if precision == "auto":
        precisions = ["bf16"] if _device.native_bf16(device) else []
        precisions += ["int8"] if device.type == "cpu" else (["fp16"] if device.type == "cuda" else [])
        modes = [m for p in [*precisions, "fp32"] for m in _modes_of(p, device)]
    else:
        inference_mode_for(precision, device)  # refuses what cannot run on this device at all
        modes = _modes_of(precision, device)
    return [m for m in modes if m != "eager-fp32"] + ["eager-fp32"]


def resolve_inference_mode(
    model: nn.Module,
    precision: str = "auto",
    *,
    device: torch.device | str | None = None,
    heldout: torch.Tensor | None = None,
    example_input: torch.Tensor | None = None,
    threshold: float = AGREEMENT_THRESHOLD,
    calibration: Calibration | Callable[[], Calibration | None] | None = None,
    workload: int | None = None,
    cache: TimingCache | None = None,
    measure: bool = True,
) -> tuple[Predictor, dict[str, Any]]:
    """The predictor ``evaluate``/``predict`` should use for ``--precision`` (auto, fp32, bf16, fp16, int8).

    The candidates (:func:`inference_candidates`) are ranked by what they would cost this job on this
    machine (:func:`alexnet.runtime.autotune.rank_modes`: timed on ``example_input``, whose batch size is the job's,
    for ``workload`` images; timings cached per machine). Under ``auto`` a reduced-precision mode is kept
    only if its top-1 agrees with fp32 on at least ``threshold`` of ``heldout`` (normalised images; without
    them the mode is taken on the strength of the benchmark's checks); a mode that cannot run here, or
    fails the check, gives way to the next. An explicit precision is used as asked, the fastest of its
    modes (int8's agreement is still measured and reported when ``heldout`` is given). int8 modes
    calibrate on ``calibration`` (default: ``heldout``, else the example input). Returns the predictor and
    a report: mode, reason (one line: why this mode), timings, setup_s, agreement (of a reduced precision),
    calibration (int8), note (a precision that is slow here), and fallback_reason (why earlier candidates
    were passed over). ``calibration`` may be a function giving one (or None), called only if an int8
    mode is prepared.
    """
    from .autotune import named, rank_modes, shape_key, time_prepared

    device = torch.device(device) if device is not None else _model_device(model)
    if example_input is None:
        size = model.spec.card.input_size if hasattr(model, "spec") else 224
        example_input = torch.randn(1, 3, size, size)
    calibration = _lazy_calibration(calibration, heldout)
    candidates = inference_candidates(precision, device)
    ranked_modes = candidates if precision in ("auto", "fp32") else candidates[:-1]  # eager-fp32: the last resort
    example = example_input.to(device, torch.float32)
    ranked = rank_modes(
        ranked_modes,
        engines={m: INFERENCE_MODES[m].engine for m in ranked_modes},
        device=device,
        shape=shape_key(model, "inference", example.shape),
        prepare=lambda m: prepare_inference(model, m, example, device, calibration=calibration(m)),
        timer=lambda p: time_prepared(lambda: p(example), device),
        batches=None if workload is None else math.ceil(workload / example.shape[0]),
        cache=cache,
        measure=measure,
    )
    if ranked_modes is not candidates:
        from .autotune import Choice

        ranked.append(Choice("eager-fp32"))
    report: dict[str, Any] = {"timings": _timings_report(ranked)}
    reasons: list[str] = []
    reference, rejected = None, set()
    for choice in ranked:
        mode = choice.mode
        if choice.failed or INFERENCE_MODES[mode].precision in rejected:
            continue
        try:
            predictor = choice.prepared or prepare_inference(
                model, mode, example, device, calibration=calibration(mode)
            )
        except ModeUnavailable as e:
            choice.skipped, choice.failed = named(mode, e), True
            continue
        # int8 reports its agreement even when asked for by name: it is the mode most likely to change answers.
        if heldout is not None and INFERENCE_MODES[mode].precision != "fp32" and precision in ("auto", "int8"):
            if reference is None:
                reference = _fp32_top1(model, heldout)
            agree = agreement(model, predictor, heldout, reference=reference)
            if precision == "auto" and agree < threshold:
                reasons.append(f"{mode} agreed with fp32 on {agree:.1%} < {threshold:.0%} of held-out images")
                rejected.add(INFERENCE_MODES[mode].precision)
                continue
            report["agreement"] = agree
        reasons += [c.skipped for c in ranked if c.failed]
        report.update(mode=mode, setup_s=predictor.setup_s, reason=_why(ranked, choice, precision))
        if predictor.calibration is not None:
            report["calibration"] = predictor.calibration
        if reasons:
            report["fallback_reason"] = "; ".join(reasons)
        if (note := _device.emulated_precision_note(INFERENCE_MODES[mode].precision, device)) is not None:
            report["note"] = note
        return predictor, report
    failed = "; ".join(c.skipped for c in ranked if c.failed) or "; ".join(reasons)
    raise ModeUnavailable(f"no inference mode could run: {failed}")


def _lazy_calibration(
    calibration: Calibration | Callable[[], Calibration | None] | None, heldout: torch.Tensor | None
) -> Callable[[str], Calibration | None]:
    """``mode`` -> what it calibrates on: None for a mode that is not int8; else ``calibration`` (called
    once, if a function), else the held-out images, else None (the example input)."""
    resolved: list[Calibration | None] = []

    def for_mode(mode: str) -> Calibration | None:
        if INFERENCE_MODES[mode].precision != "int8":
            return None
        if not resolved:
            given = calibration() if callable(calibration) else calibration
            if given is None and heldout is not None:
                from .quantize import Calibration

                given = Calibration(heldout.cpu(), f"the {len(heldout)} held-out images the agreement is checked on")
            resolved.append(given)
        return resolved[0]

    return for_mode


def _timings_report(ranked: list) -> dict[str, dict[str, Any]]:
    """Each candidate's timing (ms per batch, set-up, measured now or cached) or why it has none."""
    out: dict[str, dict[str, Any]] = {}
    for c in ranked:
        if c.timing is not None:
            out[c.mode] = {"ms_per_batch": round(1e3 * c.timing.seconds, 3), "setup_s": round(c.timing.setup_s, 2),
                           "source": c.source}  # fmt: skip
        elif c.skipped:
            out[c.mode] = {"skipped": c.skipped}
    return out


def _why(ranked: list, chosen: Any, precision: str) -> str:
    """One line: why ``chosen`` runs."""
    asked = "" if precision == "auto" else f"{precision} as asked: "
    timed = [c for c in ranked if c.timing is not None]
    if chosen.timing is None:
        return f"{asked}{chosen.mode}, the first that runs here of the modes not timed on this machine"
    ms = f"{1e3 * chosen.timing.seconds:.1f} ms/batch"
    cached = sum(c.source == "cached" for c in timed)
    where = "cached" if cached == len(timed) else ("measured now" if not cached else f"{cached} of them cached")
    if len(timed) == 1:
        return f"{asked}{chosen.mode} ({ms}), the only mode timed on this machine ({where})"
    faster = [c.mode for c in timed if c is not chosen and c.timing.seconds < chosen.timing.seconds]
    lead = "the fastest" if not faster else f"the least set-up plus run time (faster: {', '.join(faster)})"
    return f"{asked}{chosen.mode} ({ms}), {lead} of {len(timed)} modes timed on this machine ({where})"


@torch.inference_mode()
def _fp32_top1(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    device = _model_device(model)
    return torch.cat([model.eval()(b.to(device)).argmax(1).cpu() for b in _batches(images, batch_size)])


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
class TrainStep:
    """One full training step in a mode: forward, cross-entropy, backward, SGD update (the same
    :func:`~alexnet.runtime.engine.forward_loss` / :func:`~alexnet.runtime.engine.backward_update` that ``fit`` runs).

    ``step(images, targets)`` returns the loss (a detached tensor; ``.item()`` waits for the device).
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str,
        *,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        device: torch.device | str | None = None,
    ) -> None:
        if mode not in TRAINING_MODES:
            raise ValueError(f"unknown training mode {mode!r}; choose one of: {', '.join(TRAINING_MODES)}")
        spec = TRAINING_MODES[mode]
        self.mode, self.device = mode, torch.device(device) if device is not None else _model_device(model)
        _check_device(spec, self.device)
        self.precision, self.channels_last = spec.precision, spec.channels_last
        model.to(self.device).train()
        if spec.channels_last:
            model.to(memory_format=torch.channels_last)
        extra = {} if mode == "eager-fp32" else sgd_kwargs(self.device)
        self.model = model
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, **extra
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if spec.precision == "fp16" else None
        self.forward: Forward = model
        if spec.engine == "compile":
            _require_compiler(self.device)
            self.forward = torch.compile(model)
        self._first = True

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        targets = targets.to(self.device, non_blocking=True)
        if self._first:  # compiling happens here: a compiler or kernel that cannot run is reported, not fatal
            with _refusals_as_unavailable(self.mode):
                loss = self._step(x, targets)
            self._first = False
            return loss
        return self._step(x, targets)

    def _step(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss, _ = forward_loss(self.forward, x, targets, device=self.device, precision=self.precision)
        backward_update(loss, self.optimizer, scaler=self.scaler)
        return loss.detach()


def prepare_training(
    model: nn.Module, mode: str, *, device: torch.device | str | None = None, **sgd: float
) -> TrainStep:
    """A :class:`TrainStep` for ``model`` (trained in place) in a :data:`TRAINING_MODES` mode;
    ``sgd``: lr, momentum, weight_decay."""
    return TrainStep(model, mode, device=device, **sgd)


def compile_in_place(model: nn.Module) -> None:
    """``model.compile()`` (its state_dict keeps its keys), falling back to eager where compiling fails at
    the first call (no working C++ compiler, a kernel inductor cannot build): a warning says why, and that
    call and every later one run eagerly. Compiling fails before the graph runs, so the eager call
    repeats nothing."""
    compiled = torch.compile(model._call_impl)

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            model._compiled_call_impl = None
            warnings.warn(f"torch.compile failed, training eagerly instead: {first_line(e)}", RuntimeWarning, 2)
            return model._call_impl(*args, **kwargs)

    model._compiled_call_impl = call


def training_candidates(precision: str, device: torch.device | str) -> list[str]:
    """The training modes :func:`resolve_training_mode` chooses among, in the order tried when none has
    been timed here: ``auto`` takes bf16 where it is native, else fp16 on a GPU, and fp32; an explicit
    precision its own modes (each eager and compiled)."""
    device = torch.device(device)
    if precision == "auto":
        precision = _device.default_precision(device)
        precisions = [precision, "fp32"] if precision != "fp32" else ["fp32"]
    else:
        precisions = [_device.resolve_precision(precision, device)]
    modes = [m.name for p in precisions for m in TRAINING_MODES.values() if m.precision == p]
    return [m for m in modes if device.type in TRAINING_MODES[m].devices and m != "eager-fp32"]


def resolve_training_mode(
    model: nn.Module,
    precision: str,
    *,
    device: torch.device | str,
    batch_shape: tuple[int, ...],
    num_classes: int,
    steps: int | None,
    compile_ok: bool = True,
    cache: TimingCache | None = None,
    measure: bool = True,
) -> tuple[str, dict[str, Any]]:
    """The training mode for ``precision`` measured fastest for this run (:func:`alexnet.runtime.autotune.rank_modes`:
    a few steps of a copy of ``model`` on random images of ``batch_shape``, weighed over ``steps``; the
    weights, the random generators and the model are left as they were). ``compile_ok=False`` leaves out
    the compiled modes (data-parallel and two-device runs). Returns the mode and a report (mode, reason,
    timings, fallback_reason where a mode could not run here, note where the precision is slow here).
    """
    from .autotune import Choice, named, rank_modes, shape_key, time_prepared

    device = torch.device(device)
    candidates = [m for m in training_candidates(precision, device) if compile_ok or "compile" not in m]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*batch_shape, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch_shape[0],), generator=gen).to(device)

    def prepare(mode: str) -> TrainStep:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            step = TrainStep(copy.deepcopy(model), mode, lr=1e-6, device=device)
            step(x, y)  # warms up; compiles
        return step

    def timer(step: TrainStep) -> float:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return time_prepared(lambda: step(x, y).item(), device, calls=2, budget_s=5.0)

    ranked = rank_modes(
        candidates,
        engines={m: TRAINING_MODES[m].engine for m in candidates},
        device=device,
        shape=shape_key(model, "train", batch_shape),
        prepare=prepare,
        timer=timer,
        batches=steps,
        cache=cache,
        measure=measure,
    )
    chosen: Choice | None = next((c for c in ranked if not c.failed and c.timing is not None), None)
    chosen = chosen or next((c for c in ranked if not c.failed), None)
    if chosen is None:
        failed = "; ".join(c.skipped for c in ranked)
        raise ModeUnavailable(f"no training mode could run: {failed}")
    report: dict[str, Any] = {"mode": chosen.mode, "timings": _timings_report(ranked)}
    report["reason"] = _why(ranked, chosen, precision).replace("ms/batch", "ms/step")
    if failed := [named(c.mode, c.skipped) for c in ranked if c.failed]:
        report["fallback_reason"] = "; ".join(failed)
    if (note := _device.emulated_precision_note(TRAINING_MODES[chosen.mode].precision, device)) is not None:
        report["note"] = note
    return chosen.mode, report
