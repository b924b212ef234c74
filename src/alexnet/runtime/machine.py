"""The machine a benchmark runs on: what it is, how to time a call on it, and its dense matmul peak in each
precision (int8: the best of the int8 matrix products PyTorch reaches, counted in operations/s)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["time_call", "matmul_peak", "int8_matmul_peak", "measure_peaks", "machine_info", "describe_machine"]

PEAK_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": torch.int8,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    warmup: int = 1,
    repeats: int = 10,
    max_seconds: float = 1.0,
    min_seconds: float = 0.5,
) -> list[float]:
    """Seconds per call: ``warmup`` untimed calls, then up to ``repeats`` timed ones.

    Slow calls stop before a next call would end past ``max_seconds`` (one call at least); fast ones go on
    until ``min_seconds`` have passed (up to 20x ``repeats``), so that a median of millisecond calls is
    not at the mercy of one busy moment of the machine.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    begin = time.perf_counter()
    while True:
        n, elapsed = len(times), time.perf_counter() - begin
        if n and (n >= repeats or elapsed + times[-1] > max_seconds) and (elapsed >= min_seconds or n >= 20 * repeats):
            return times
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)


def matmul_peak(dtype: torch.dtype, device: torch.device | str = "cpu", n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n matmul in ``dtype``, median of ``repeats``: the machine's practical peak.

    On the CPU the better of ``torch.mm`` and oneDNN's matmul with a pre-packed operand: for fp32,
    ``torch.mm`` calls MKL, which on AMD CPUs is slower than oneDNN (and so than our convolutions).
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    candidates: list[Callable[[], Any]] = [lambda: a @ b]
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(b, n)
            candidates.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
        except (RuntimeError, AttributeError):
            pass
    best = 0.0
    for fn in candidates:
        times = time_call(fn, device, warmup=3, repeats=repeats, max_seconds=3.0, min_seconds=0.0)
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


def int8_matmul_peak(device: torch.device | str = "cpu", n: int = 2048, repeats: int = 10) -> float:
    """Giga-operations/s (2 per multiply-add) of an n x n int8 matmul, median of ``repeats``.

    The best of ``torch._int_mm`` (int8 x int8 -> int32) and, on the CPU, oneDNN's quantised linear
    (uint8 activations x int8 weights, pre-packed: the kernel the int8 inference modes reach) with fp32
    output and with uint8 output (requantised, as one int8 layer feeds the next): the one that uses the
    CPU's VNNI / AMX-INT8 instructions where it has them.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (n, n), generator=gen, dtype=torch.int8).to(device)
    b = torch.randint(-128, 128, (n, n), generator=gen, dtype=torch.int8).to(device)
    candidates: list[Callable[[], Any]] = [lambda: torch._int_mm(a, b)]
    if device.type == "cpu" and hasattr(torch.ops.onednn, "qlinear_prepack"):
        x = torch.randint(0, 256, (n, n), generator=gen, dtype=torch.uint8)
        one, zero = torch.tensor(1.0), torch.tensor(0, dtype=torch.long)
        scales, zeros = torch.full((n,), 1e-3), torch.zeros(n, dtype=torch.long)
        try:
            packed = torch.ops.onednn.qlinear_prepack(b, [n, n])
        except (RuntimeError, AttributeError):
            packed = None
        for out_scale, out_dtype in ((one, torch.float32), (torch.tensor(50.0), torch.uint8)):
            if packed is not None:
                args = (x, torch.tensor(0.02), zero, packed, scales, zeros, None, out_scale, zero, out_dtype)
                candidates.append(lambda a=args: torch.ops.onednn.qlinear_pointwise.tensor(*a, "none", [], ""))
    best = 0.0
    for fn in candidates:
        try:
            times = time_call(fn, device, warmup=3, repeats=repeats, max_seconds=3.0, min_seconds=0.0)
        except RuntimeError:  # not built for this device
            continue
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


def measure_peaks(device: torch.device, n: int = 2048) -> dict[str, float]:
    """The matmul peak (GFLOP/s; int8: GOP/s) of each precision the device computes: fp32, bf16, int8 on
    the CPU, and fp16 on CUDA."""
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    peaks = {p: matmul_peak(PEAK_DTYPES[p], device, n) for p in precisions}
    if device.type == "cpu":
        int8 = int8_matmul_peak(device, n)
        if int8 > 0:
            peaks["int8"] = int8
    return peaks


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_flags() -> list[str]:
    flags = set((_cpuinfo("flags") or "").split())
    wanted = {
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_fp16",
        "avx512_vnni",
        "avx_vnni",
        "amx_bf16",
        "amx_int8",
        "amx_tile",
    }
    return sorted(flags & wanted)


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "device": device.type,
        "cpu": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": _cpu_flags(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_machine(machine: dict[str, Any]) -> str:
    """One line: the CPU (or GPU), cores and flags, torch version."""
    what = machine.get("gpu") or f"{machine['cpu']}, {machine['cpu_count']} cores"
    flags = f" ({', '.join(machine['cpu_flags'])})" if machine.get("cpu_flags") and "gpu" not in machine else ""
    return f"{what}{flags}, {machine['torch_threads']} torch threads, torch {machine['torch']}, {machine['platform']}"
