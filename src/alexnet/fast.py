"""Fast inference and training modes, and the policy that picks one.

A *mode* is a way to run the same network: a precision (fp32, bf16, fp16), a memory format, and an
execution engine (eager PyTorch, oneDNN with pre-packed weights, ``torch.compile``, ONNX Runtime).
:data:`INFERENCE_MODES` and :data:`TRAINING_MODES` are the tables; :func:`prepare_inference` and
:func:`prepare_training` build a callable for one mode; :func:`resolve_inference_mode` and
:func:`default_precision` are the policy ``evaluate``, ``predict`` and ``train`` call.

Where the time goes on a CPU (measured on a 2-core AVX-512-bf16 machine; ``alexnet benchmark``):

- The convolutions hold 92% of the arithmetic; in bf16 with channels-last they run at about the
  machine's bf16 matmul peak, so bf16 alone is worth ~2.5x at batch 64.
- At batch 1 the time goes to reading the fc weights (234 MB in fp32). bf16 halves the bytes, and
  oneDNN's pre-packed (blocked) weight layout reads them at nearly full memory bandwidth: 1.9 ms for
  fc6 against 3.4 ms for a plain bf16 ``F.linear``. ``torch.compile`` with freezing does the same
  packing, after 5-25 s of compilation; :class:`OneDNNAlexNet` does it eagerly in a fraction of a second.
- In training, glibc returns every large freed block to the OS and page-faults it back on the next
  step: fresh 150 MB tensors (fc6's bf16 weight copy and its gradient) cost 30-60 ms each instead of
  6 ms. :func:`tune_cpu_allocator` keeps freed memory in the heap; fused SGD then does the update in
  one pass instead of ~5.

A precision mode is accepted only if its top-1 predictions agree with fp32 on at least 99% of a
held-out set (:func:`agreement`, :func:`resolve_inference_mode`).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .models import AlexNet

__all__ = [
    "Mode",
    "INFERENCE_MODES",
    "TRAINING_MODES",
    "ModeUnavailable",
    "Predictor",
    "TrainStep",
    "OneDNNAlexNet",
    "prepare_inference",
    "prepare_training",
    "autocast_context",
    "agreement",
    "resolve_inference_mode",
    "inference_mode_for",
    "default_precision",
    "native_bf16",
    "sgd_kwargs",
    "tune_cpu_allocator",
]

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModeUnavailable(RuntimeError):
    """The mode cannot run here (wrong device, missing compiler or package); the reason is the message."""


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
    engine: Literal["eager", "autocast", "cast", "onednn", "compile", "onnxruntime"]
    tolerance: float
    devices: tuple[str, ...]
    channels_last: bool
    description: str


_ANY, _CPU, _CUDA = ("cpu", "cuda"), ("cpu",), ("cuda",)
_EXACT, _FP32, _BF16, _FP16 = 1e-6, 1e-4, 2e-2, 1e-2  # bf16 keeps 8 significant bits, fp16 11

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
    )
}

TRAINING_MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("eager-fp32", "fp32", "eager", _EXACT, _ANY, False, "NCHW, plain SGD: the baseline's set-up"),
        Mode("channels-last-fp32", "fp32", "eager", _FP32, _ANY, True, "channels-last, fused SGD"),
        # bf16 gradients of a freshly initialised net differ from fp32's by ~10% in norm (cos ~0.98-0.997)
        Mode("autocast-bf16", "bf16", "autocast", 5e-2, _ANY, True, "autocast, channels-last, fused SGD"),
        Mode("compile-bf16", "bf16", "compile", 5e-2, _ANY, True, "autocast, channels-last, fused SGD, compiled"),
        Mode("autocast-fp16", "fp16", "autocast", 2e-2, _CUDA, True, "autocast + loss scaling, fused SGD"),
    )
}


# --------------------------------------------------------------------------------------------
# What this machine can do
# --------------------------------------------------------------------------------------------
def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively (not emulated, so bf16 is actually faster).

    CPU: the AVX512-BF16 or AMX-BF16 instructions (Linux ``/proc/cpuinfo`` flags), or the ARMv8.6
    BF16 extension. CUDA: compute capability 8.0 (Ampere) or newer.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def default_precision(device: torch.device | str, training: bool = False) -> Precision:
    """The precision ``--precision auto`` means on ``device``.

    bf16 where the hardware computes it natively (its range equals fp32's, so training needs no loss
    scaling); fp16 on CUDA GPUs older than Ampere; fp32 everywhere else (emulated bf16 is slower than
    fp32). Inference additionally checks top-1 agreement (:func:`resolve_inference_mode`).
    """
    device = torch.device(device)
    if native_bf16(device):
        return "bf16"
    if device.type == "cuda":
        return "fp16"
    return "fp32"


def inference_mode_for(precision: str, device: torch.device | str) -> str:
    """The fastest inference mode of a precision on a device (``auto`` = :func:`default_precision`)."""
    device = torch.device(device)
    if precision == "auto":
        precision = default_precision(device)
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    if device.type == "cpu":
        if precision == "fp16":
            raise ModeUnavailable("fp16 needs a GPU; use bf16 or fp32 on the CPU")
        return "onednn-bf16" if precision == "bf16" else "onednn-fp32"
    return {"fp32": "channels-last-fp32", "bf16": "bf16", "fp16": "fp16"}[precision]


def sgd_kwargs(device: torch.device | str) -> dict[str, bool]:
    """Extra ``torch.optim.SGD`` arguments for speed: the fused kernel (one pass over the weights, same
    update) on CPU and CUDA. On the 2-core test machine it takes the step from ~100 ms to ~20 ms."""
    return {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {}


_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process heap instead of returning it to the OS (glibc only).

    glibc serves blocks above 32 MB with ``mmap`` and unmaps them when freed, so every training step
    page-faults its large tensors back in (a 150 MB copy takes 30-60 ms instead of 6 ms on the test
    machine). ``mallopt(M_MMAP_MAX, 0)`` sends all allocations to the heap and a 1 GB trim threshold
    keeps the freed memory there, the effect jemalloc/tcmalloc have. Process-wide, idempotent; set
    ``ALEXNET_TUNE_ALLOCATOR=0`` to turn it off. Returns whether the tuning is in effect.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("ALEXNET_TUNE_ALLOCATOR", "1") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
        _allocator_tuned = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False
    return _allocator_tuned


def autocast_context(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])


def _check_device(mode: Mode, device: torch.device) -> None:
    if device.type not in mode.devices:
        raise ModeUnavailable(f"{mode.name} runs on {'/'.join(mode.devices)}, not {device.type}")


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# oneDNN with pre-packed weights (CPU)
# --------------------------------------------------------------------------------------------
class _PackedConv(nn.Module):
    """Conv2d (+ the ReLU after it) as one oneDNN call on a weight reordered once to oneDNN's layout."""

    def __init__(self, conv: nn.Conv2d, relu: bool, dtype: torch.dtype, input_shape: list[int]) -> None:
        super().__init__()
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        w = conv.weight.detach().to(dtype).contiguous()
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(w, *self.args, input_shape)
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.attr = "relu" if relu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.args, self.attr, [], "")


class _PackedLinear(nn.Module):
    """Linear (+ ReLU) on a weight packed for the expected batch size (a hint; any batch works)."""

    def __init__(self, linear: nn.Linear, relu: bool, dtype: torch.dtype, batch_size: int) -> None:
        super().__init__()
        weight = linear.weight.detach().to(dtype).contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch_size)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        self.attr = "relu" if relu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, self.attr, [], "")


class _InFloat32(nn.Module):
    """Run a normalisation layer in fp32 whatever the activations are (LRN's sum of squares, BN)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


class OneDNNAlexNet(nn.Module):
    """An eval-only copy of an :class:`~alexnet.models.AlexNet` that runs on oneDNN with pre-packed weights.

    What inductor's freezing pass does, done once without compiling: every plain conv and linear layer
    gets its weight reordered to oneDNN's blocked layout for the expected input shape, with the
    following ReLU fused into the same call; activations are channels-last. Normalisation layers run
    in fp32. Dropout is the identity at inference and is dropped. Input: fp32 NCHW; output: fp32 logits.
    """

    def __init__(
        self, model: AlexNet, dtype: torch.dtype = torch.bfloat16, example_shape: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        if not isinstance(model, AlexNet):
            raise ModeUnavailable(f"oneDNN packing supports the single-module AlexNet, not {type(model).__name__}")
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
            raise ModeUnavailable("this PyTorch build has no oneDNN (mkldnn) CPU kernels")
        self.dtype, self.check = dtype, (model.spec.name, model.min_input_size)
        size = model.spec.data.input_size
        batch, *image = list(example_shape) or [1, 3, size, size]
        layers = [m for m in model.features] + [model.avgpool, nn.Flatten(1)] + list(model.classifier)
        layers = [m for m in layers if not isinstance(m, nn.Dropout)]  # the identity at inference
        steps: list[nn.Module] = []
        probe = torch.zeros(1, *image)  # follows the shapes through the network for the packing hints
        with torch.no_grad():
            while layers:
                layer = layers.pop(0)
                relu = bool(layers) and isinstance(layers[0], nn.ReLU)
                if type(layer) is nn.Conv2d:
                    steps.append(_PackedConv(layer, relu, dtype, [batch, *probe.shape[1:]]))
                elif type(layer) is nn.Linear:
                    steps.append(_PackedLinear(layer, relu, dtype, batch))
                else:
                    relu = False
                    plain = isinstance(layer, (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten))
                    steps.append(layer if plain else _InFloat32(layer))  # LRN, BatchNorm, Conv2dSame: fp32
                probe = layer(probe)
                if relu:
                    probe = layers.pop(0)(probe)
        self.steps = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .models import check_input

        check_input(x, *self.check)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.steps(x).float()


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------
@dataclass
class Predictor:
    """A prepared model: ``predictor(images)`` -> fp32 logits, under ``torch.inference_mode``."""

    mode: str
    device: torch.device
    fn: Callable[[torch.Tensor], torch.Tensor]
    setup_s: float = 0.0  # packing / compiling / exporting time, paid once

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.fn(images.to(self.device, torch.float32)).float()


def _compile(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch._inductor.config as inductor_config

    _require_compiler(device)
    # Every compiled AlexNet shares one code object, and so one cache of compiled graphs (one per model
    # object and batch size): past dynamo's default limit of 8 it silently falls back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(model, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        # Freezing folds the weights into the graph as constants, which lets inductor pre-pack them.
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return run


def _require_compiler(device: torch.device) -> None:
    """Inductor compiles C++ on the CPU (and Triton on CUDA): fail early, with the reason, without one."""
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as e:  # noqa: BLE001 - any failure here means "no usable C++ compiler"
            raise ModeUnavailable(f"torch.compile needs a C++ compiler on the CPU: {e}") from e


def _onnxruntime(model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModeUnavailable("onnxruntime is not installed (pip install 'alexnet[export]')") from e
    from .export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, example, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().contiguous().numpy()})[0])

    return run


def prepare_inference(
    model: nn.Module, mode: str, example_input: torch.Tensor | None = None, device: torch.device | str | None = None
) -> Predictor:
    """Build a :class:`Predictor` running ``model`` in ``mode`` (a key of :data:`INFERENCE_MODES`).

    The predictor is a snapshot: every mode except ``eager-fp32`` works on a copy of the weights taken
    now (cast, packed, compiled or exported), so prepare it again after the weights change. ``model``
    is put in eval mode and otherwise left as it is. ``example_input`` (a typical batch) gives the
    packing hints and the compiled/exported shapes, and is run once to check that the mode works here;
    raises :class:`ModeUnavailable` when it cannot.
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of: {', '.join(INFERENCE_MODES)}")
    spec = INFERENCE_MODES[mode]
    device = torch.device(device) if device is not None else _model_device(model)
    _check_device(spec, device)
    if example_input is None:
        size = model.spec.data.input_size if hasattr(model, "spec") else 224
        example_input = torch.randn(1, 3, size, size)
    example_input = example_input.to(device, torch.float32)
    model = model.eval()
    dtype = _DTYPES[spec.precision]
    start = time.perf_counter()
    fn: Callable[[torch.Tensor], torch.Tensor]
    if spec.engine == "eager":
        if spec.channels_last:
            fn = _channels_last(copy.deepcopy(model).to(device, memory_format=torch.channels_last))
        else:  # the model itself, or a copy on the requested device
            fn = model if _model_device(model) == device else copy.deepcopy(model).to(device)
    elif spec.engine == "autocast":
        m = copy.deepcopy(model).to(device, memory_format=torch.channels_last)
        fn = _autocast(_channels_last(m), device, spec.precision)
    elif spec.engine == "cast":
        m = copy.deepcopy(model).to(device, dtype, memory_format=torch.channels_last)
        fn = _cast_input(m, dtype)
    elif spec.engine == "onednn":
        fn = OneDNNAlexNet(model, dtype, tuple(example_input.shape))
    elif spec.engine == "compile":
        m = copy.deepcopy(model).to(device, dtype, memory_format=torch.channels_last)
        fn = _cast_input(_compile(m, device), dtype)
    else:  # onnxruntime
        fn = _onnxruntime(model, example_input)
    predictor = Predictor(mode, device, fn)
    try:
        predictor(example_input)  # compiles / warms up; fails here rather than mid-evaluation
    except ModeUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
        raise ModeUnavailable(
            f"{mode} failed on this machine: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        ) from e
    predictor.setup_s = time.perf_counter() - start
    return predictor


def _channels_last(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: fn(x.contiguous(memory_format=torch.channels_last))


def _cast_input(
    fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: fn(x.to(dtype, memory_format=torch.channels_last))


def _autocast(fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device, precision: str) -> Callable:
    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(device, precision):
            return fn(x)

    return run


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
        device = _model_device(model)
        reference = torch.cat([model.eval()(b.to(device)).argmax(1).cpu() for b in _batches(images, batch_size)])
    elif reference.dim() == 2:
        reference = reference.argmax(1)
    predicted = torch.cat([predictor(b).argmax(1).cpu() for b in _batches(images, batch_size)])
    return float((predicted == reference.cpu()).float().mean())


def resolve_inference_mode(
    model: nn.Module,
    precision: str = "auto",
    *,
    device: torch.device | str | None = None,
    heldout: torch.Tensor | None = None,
    example_input: torch.Tensor | None = None,
    threshold: float = 0.99,
) -> tuple[Predictor, dict[str, float | str]]:
    """The predictor ``evaluate``/``predict`` should use for ``--precision`` (auto, fp32, bf16, fp16).

    ``auto`` tries the fastest mode of :func:`default_precision`; it is kept only if its top-1 agrees
    with fp32 on at least ``threshold`` of ``heldout`` (normalised images; without them the mode is
    taken on the strength of the benchmark's checks). A mode that cannot run here, or fails the check,
    falls back to fp32. An explicit precision is used as asked (fp16 on a CPU raises ModeUnavailable).
    Returns the predictor and a report: mode, agreement, setup_s, and why a fallback happened.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    fp32_mode = inference_mode_for("fp32", device)
    report: dict[str, float | str] = {}
    candidates = [inference_mode_for(precision, device)]
    if precision == "auto":
        candidates += [m for m in (fp32_mode, "eager-fp32") if m not in candidates]
    elif candidates[0] != "eager-fp32":
        candidates.append("eager-fp32")  # oneDNN missing from this build: plain PyTorch
    for mode in candidates:
        try:
            predictor = prepare_inference(model, mode, example_input, device)
        except ModeUnavailable as e:
            report.setdefault("fallback_reason", str(e))
            continue
        if precision == "auto" and heldout is not None and INFERENCE_MODES[mode].precision != "fp32":
            agree = agreement(model, predictor, heldout)
            report["agreement"] = agree
            if agree < threshold:
                report["fallback_reason"] = (
                    f"{mode} agreed with fp32 on {agree:.1%} < {threshold:.0%} of held-out images"
                )
                continue
        report.update(mode=mode, setup_s=predictor.setup_s)
        return predictor, report
    raise ModeUnavailable(f"no inference mode could run: {report.get('fallback_reason', '')}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
class TrainStep:
    """One full training step in a mode: forward, cross-entropy, backward, SGD update.

    ``step(images, targets)`` returns the loss (a detached tensor; call ``.item()`` when you need it,
    which waits for the device). The SGD is the paper's rule (section 5) with torch's defaults for
    anything it does not say; fused where the mode says so (same update, one pass over the weights).
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
        self.forward: Callable[[torch.Tensor], torch.Tensor] = model
        if spec.engine == "compile":
            _require_compiler(self.device)
            self.forward = torch.compile(model)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.precision):
            loss = F.cross_entropy(self.forward(x).float(), targets.to(self.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()


def prepare_training(
    model: nn.Module, mode: str, *, device: torch.device | str | None = None, **sgd: float
) -> TrainStep:
    """A :class:`TrainStep` for ``model`` (trained in place) in a :data:`TRAINING_MODES` mode;
    ``sgd``: lr, momentum, weight_decay."""
    return TrainStep(model, mode, device=device, **sgd)
