"""Device and precision policy: which device ``auto`` means, which precision is fast *and* native there,
and the process settings that make a CPU training step fast."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import FlagError, UserError

__all__ = [
    "Precision",
    "DTYPES",
    "resolve_device",
    "resolve_precision",
    "CpuCapabilities",
    "cpu_capabilities",
    "native_bf16",
    "native_int8",
    "emulated_precision_note",
    "default_precision",
    "autocast_context",
    "sgd_kwargs",
    "tune_cpu_allocator",
    "AGREEMENT_THRESHOLD",
]

Precision = Literal["fp32", "bf16", "fp16", "int8"]  # int8: inference only
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# A reduced precision (bf16, fp16, int8) is used only if its top-1 agrees with fp32's on this share of held-out images.
AGREEMENT_THRESHOLD = 0.99


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; a named device must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    unknown = FlagError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise unknown from e
    if device.type not in ("cpu", "cuda", "mps"):  # torch parses meta, xla, ...: devices nothing here runs on
        raise unknown
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FlagError(f"device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FlagError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FlagError(f"device {name}: MPS is not available on this machine")
    return device


def _cpu_flags() -> set[str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _probe(name: str) -> bool:
    """One of torch's CPUID probes (``torch.cpu._is_avx2_supported`` ...): False where this build has none."""
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except RuntimeError:
        return False


@dataclass(frozen=True)
class CpuCapabilities:
    """What the CPU computes natively, as its CPUID answers (torch's probes, else Linux's flags).

    ``bf16``: AVX512-BF16 or AMX-BF16 (or Arm's BF16): without them bf16 is emulated and slower than fp32.
    ``int8``: VNNI or AMX-INT8, four int8 multiply-adds per fp32 FMA; without them int8 runs on AVX2's
    16-bit products (slower, and saturating unless the weights keep 7 bits).
    """

    avx2: bool
    avx512: bool
    bf16: bool
    int8: bool
    amx: bool

    @property
    def machine_class(self) -> str:
        """One phrase for the class of machine: AMX, AVX-512 with bf16/VNNI, AVX-512, AVX2, or neither."""
        if self.amx:
            return "AMX"
        if self.avx512:
            extra = [n for n, on in (("bf16", self.bf16), ("VNNI", self.int8)) if on]
            return "AVX-512" + (f" with {'/'.join(extra)}" if extra else "")
        if self.avx2:
            return "AVX2" + (" with VNNI" if self.int8 else "")
        return platform.machine() or "unknown"


@functools.cache
def cpu_capabilities() -> CpuCapabilities:
    """This CPU's :class:`CpuCapabilities`, asked once."""
    flags = _cpu_flags()
    amx = _probe("_is_amx_tile_supported") or "amx_tile" in flags
    return CpuCapabilities(
        avx2=_probe("_is_avx2_supported") or "avx2" in flags,
        avx512=_probe("_is_avx512_supported") or "avx512f" in flags,
        bf16=_probe("_is_avx512_bf16_supported") or amx or bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}),
        int8=_probe("_is_vnni_supported") or amx or bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        amx=amx,
    )


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively (not emulated, so bf16 is actually faster).

    CPU: :func:`cpu_capabilities` ``.bf16``. CUDA: compute capability 8.0 (Ampere) or newer.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    return cpu_capabilities().bf16


def native_int8(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` is a CPU with int8 dot-product instructions (x86 VNNI or AMX-INT8): four int8
    multiply-adds where an fp32 FMA does one, twice what bf16 does, so int8 inference is faster there."""
    if torch.device(device).type != "cpu":
        return False
    return cpu_capabilities().int8


def emulated_precision_note(precision: str, device: torch.device | str) -> str | None:
    """Why ``precision`` would be slow on ``device`` (emulated or without its fast instructions), else None."""
    device = torch.device(device)
    if device.type != "cpu":
        return None
    if precision == "bf16" and not native_bf16(device):
        return "this CPU has no native bf16 (AVX512-BF16/AMX): bf16 is emulated here and slower than fp32"
    if precision == "int8" and not native_int8(device):
        return "this CPU has no int8 dot products (VNNI/AMX): int8 runs on 16-bit products, with 7-bit weights"
    return None


def default_precision(device: torch.device | str) -> Precision:
    """The precision ``--precision auto`` means on ``device``.

    bf16 where the hardware computes it natively (its range equals fp32's, so training needs no loss
    scaling); fp16 on CUDA GPUs older than Ampere; fp32 everywhere else (emulated bf16 is slower than
    fp32). Inference additionally checks top-1 agreement (:func:`alexnet.runtime.modes.resolve_inference_mode`).
    """
    device = torch.device(device)
    if native_bf16(device):
        return "bf16"
    if device.type == "cuda":
        return "fp16"
    return "fp32"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """A training precision: ``auto`` -> :func:`default_precision`; explicit choices are checked."""
    if requested == "auto":
        return default_precision(device)
    if requested == "int8":
        raise UserError(
            "int8 is an inference precision (evaluate, predict, export --int8); train in auto, bf16 or fp32"
        )
    if requested not in DTYPES:
        raise UserError(f"unknown precision {requested!r}; choose auto, fp32, bf16 or fp16")
    if requested == "fp16" and device.type == "cpu":
        raise UserError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return requested  # type: ignore[return-value]


def autocast_context(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def sgd_kwargs(device: torch.device | str) -> dict[str, bool]:
    """Extra ``torch.optim.SGD`` arguments for speed: the fused kernel (one pass over the weights, the same
    update) where torch has it."""
    return {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {}


_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process heap instead of returning it to the OS (glibc only).

    glibc serves blocks above 32 MB with ``mmap`` and unmaps them when freed, so every training step
    page-faults its large tensors (fc6's weight copies and gradients) back in. ``mallopt(M_MMAP_MAX, 0)``
    sends all allocations to the heap and a 1 GB trim threshold keeps the freed memory there, the effect
    jemalloc/tcmalloc have. Process-wide, idempotent; ``ALEXNET_TUNE_ALLOCATOR=0`` turns it off. Returns
    whether the tuning is in effect.
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
