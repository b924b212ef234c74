"""``alexnet benchmark``: our model in every fast mode against torchvision's AlexNet, in one process.

The baseline is torchvision's ``alexnet`` in eager fp32 (``torchvision-eager-fp32``), measured first,
in the same run, on the same inputs. Every measurement is warm-up calls, then timed repeats; the
median is reported. Achieved GFLOP/s use 2 x the model's multiply-adds per image for inference and
3x that for a training step (forward, backward for inputs and weights); "% of peak" divides by this
machine's dense matmul rate in the mode's precision, which the benchmark measures itself
(:mod:`alexnet.machine`). A mode that cannot run here is listed as skipped, with the reason.
"""

from __future__ import annotations

import gc
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .device import tune_cpu_allocator
from .errors import ModeUnavailable
from .machine import describe_machine, machine_info, measure_peaks, time_call
from .modes import INFERENCE_MODES, TRAINING_MODES, prepare_inference, prepare_training
from .registry import create_model, get_spec

__all__ = [
    "BASELINE",
    "DEFAULT_INFERENCE_MODES",
    "DEFAULT_TRAINING_MODES",
    "run_benchmark",
    "format_table",
    "markdown_report",
    "update_readme",
]

BASELINE = "torchvision-eager-fp32"
BASELINE_TUNED = "torchvision-eager-fp32+malloc"  # the baseline again, with the allocator tuning our modes get
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
DEFAULT_INFERENCE_MODES = tuple(INFERENCE_MODES)
DEFAULT_TRAINING_MODES = tuple(TRAINING_MODES)

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Contention
# --------------------------------------------------------------------------------------------
def _cpu_busy() -> tuple[float, float, float] | None:
    """(wall time, seconds of CPU busy machine-wide incl. VM steal, seconds of CPU used by this process)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
    own = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def _contention(before: tuple[float, float, float] | None) -> float:
    """Fraction of the machine's CPU time that other processes (or the hypervisor) took since ``before``."""
    after = _cpu_busy()
    if before is None or after is None:
        return 0.0
    wall = (after[0] - before[0]) * (os.cpu_count() or 1)
    others = (after[1] - before[1]) - (after[2] - before[2])
    return min(max(others / wall, 0.0), 1.0) if wall > 0 else 0.0


def measure(
    fn: Callable[[], Any], device: torch.device, *, attempts: int = 3, busy: float = 0.1, **timing: Any
) -> tuple[list[float], float]:
    """:func:`time_call`, repeated (up to ``attempts`` times) while other processes took more than ``busy``
    of the machine's CPU; returns the least disturbed attempt's times and how busy the machine was."""
    best: tuple[list[float], float] | None = None
    for _ in range(attempts):
        before = _cpu_busy()
        times = time_call(fn, device, **timing)
        contention = _contention(before)
        if best is None or statistics.median(times) < statistics.median(best[0]):
            best = (times, contention)
        if contention <= busy:
            return times, contention
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------------
def _mult_adds(name: str, input_size: int) -> int:
    from .summary import model_summary

    return model_summary(name, 1000, input_size)[1]["total_mult_adds"]


def _baseline_model(device: torch.device) -> torch.nn.Module:
    import torchvision

    return torchvision.models.alexnet(weights=None).to(device)


def _train_fn(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    return lambda: step(x, y)


def _baseline_train_step(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """torchvision's AlexNet trained the plain way: fp32, NCHW, ``torch.optim.SGD`` with its defaults."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def run_benchmark(
    model: str = "alexnet",
    batch_sizes: Sequence[int] = (1, 64),
    *,
    train: bool = False,
    train_batch_size: int = 64,
    modes: Iterable[str] | None = None,
    train_modes: Iterable[str] | None = None,
    device: torch.device | str = "cpu",
    repeats: int = 10,
    warmup: int = 2,
    max_seconds: float = 3.0,
    min_seconds: float = 1.0,
    peak_size: int = 2048,
    tune_allocator: bool = True,
    log: Log | None = None,
) -> dict[str, Any]:
    """Measure the baseline and ``model`` in each mode; return the JSON-ready result.

    ``{"machine", "peak_gflops": {"fp32", "bf16"[, "fp16"]}, "flops_per_image", "rows": [{"model",
    "mode", "phase", "batch_size", "images_per_s", "ratio_to_baseline", "pct_of_peak", ...}],
    "skipped": [{"mode", "phase", "batch_size", "reason"}]}``. The baseline rows have mode
    ``torchvision-eager-fp32``; they run before :func:`~alexnet.device.tune_cpu_allocator` (``tune_allocator``),
    so they are what a default PyTorch process gets, and ``torchvision-eager-fp32+malloc`` rows show
    the baseline with the tuning. Small ``repeats``/``warmup``/``peak_size`` make a quick run for tests.
    """
    log = log or (lambda _msg: None)
    device = torch.device(device)
    spec = get_spec(model)
    size = spec.card.input_size
    modes = list(DEFAULT_INFERENCE_MODES if modes is None else modes)
    train_modes = list(DEFAULT_TRAINING_MODES if train_modes is None else train_modes) if train else []
    for m in modes:
        if m not in INFERENCE_MODES:
            raise ValueError(f"unknown inference mode {m!r}; choose from {', '.join(INFERENCE_MODES)}")
    for m in train_modes:
        if m not in TRAINING_MODES:
            raise ValueError(f"unknown training mode {m!r}; choose from {', '.join(TRAINING_MODES)}")
    timing = {"warmup": warmup, "repeats": repeats, "max_seconds": max_seconds, "min_seconds": min_seconds}

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    flops = {"torchvision.alexnet": 2 * _mult_adds("alexnet", 224), model: 2 * _mult_adds(model, size)}

    def record(
        name: str, mode: str, phase: str, batch: int, precision: str, measured: tuple[list[float], float], setup: float
    ) -> None:
        times, contention = measured
        per_s = batch / statistics.median(times)
        row = {
            "model": name,
            "mode": mode,
            "phase": phase,
            "batch_size": batch,
            "images_per_s": per_s,
            "ms_per_batch": 1e3 * statistics.median(times),
            "precision": precision,
            "gflops": per_s * flops[name] * (3 if phase == "train" else 1) / 1e9,
            "setup_s": setup,
            "repeats": len(times),
            "contention": contention,  # share of the CPU other processes took while this was measured
        }
        rows.append(row)
        busy = f" (other processes took {contention:.0%} of the CPU)" if contention > _BUSY else ""
        log(f"{phase:9s} batch {batch:3d}  {mode:32s} {per_s:8.1f} images/s{busy}")

    def skip(mode: str, phase: str, batch: int, reason: str) -> None:
        skipped.append({"model": model, "mode": mode, "phase": phase, "batch_size": batch, "reason": reason})
        log(f"{phase:9s} batch {batch:3d}  {mode:32s} skipped: {reason}")

    def baseline(mode: str) -> None:
        net = _baseline_model(device).eval()
        for batch in batch_sizes:
            x = torch.randn(batch, 3, 224, 224, device=device)

            def infer(net=net, x=x) -> torch.Tensor:
                with torch.inference_mode():
                    return net(x)

            record("torchvision.alexnet", mode, "inference", batch, "fp32", measure(infer, device, **timing), 0.0)
        if train:
            x = torch.randn(train_batch_size, 3, 224, 224, device=device)
            y = torch.randint(0, 1000, (train_batch_size,), device=device)
            step = _baseline_train_step(net)
            measured = measure(_train_fn(step, x, y), device, **timing)
            record("torchvision.alexnet", mode, "train", train_batch_size, "fp32", measured, 0.0)
        del net
        gc.collect()

    log(f"benchmarking {model} on {device}: baseline {BASELINE} first")
    baseline(BASELINE)
    tuned = tune_cpu_allocator() if tune_allocator and device.type == "cpu" else False
    if tuned:
        baseline(BASELINE_TUNED)

    peaks = measure_peaks(device, peak_size)
    log("matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))

    net = create_model(model, 1000).to(device).eval()
    for mode in modes:
        for batch in batch_sizes:
            x = torch.randn(batch, 3, size, size, device=device)
            try:
                predictor = prepare_inference(net, mode, x, device)
            except ModeUnavailable as e:
                skip(mode, "inference", batch, str(e))
                continue
            measured = measure(lambda p=predictor, x=x: p(x), device, **timing)
            record(model, mode, "inference", batch, INFERENCE_MODES[mode].precision, measured, predictor.setup_s)
            del predictor
        if INFERENCE_MODES[mode].engine == "compile":
            torch._dynamo.reset()  # drop the compiled graphs and their frozen weight copies
        gc.collect()
    del net

    for mode in train_modes:
        x = torch.randn(train_batch_size, 3, size, size, device=device)
        y = torch.randint(0, 1000, (train_batch_size,), device=device)
        try:
            start = time.perf_counter()
            step = prepare_training(create_model(model, 1000), mode, device=device)
            step(x, y)  # compiles, if the mode does
            setup = time.perf_counter() - start
        except ModeUnavailable as e:
            skip(mode, "train", train_batch_size, str(e))
            continue
        measured = measure(_train_fn(step, x, y), device, **timing)
        record(model, mode, "train", train_batch_size, TRAINING_MODES[mode].precision, measured, setup)
        del step
        if TRAINING_MODES[mode].engine == "compile":
            torch._dynamo.reset()
        gc.collect()

    base = {(r["phase"], r["batch_size"]): r["images_per_s"] for r in rows if r["mode"] == BASELINE}
    for r in rows:
        r["ratio_to_baseline"] = r["images_per_s"] / base[r["phase"], r["batch_size"]]
        peak = peaks.get(r["precision"])
        r["pct_of_peak"] = 100 * r["gflops"] / peak if peak else None
    machine = machine_info(device) | {"allocator_tuned": tuned}
    return {
        "machine": machine,
        "peak_gflops": peaks,
        "flops_per_image": flops,
        "model": model,
        "rows": rows,
        "skipped": skipped,
    }


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
_BUSY = 0.1  # above this share of the CPU taken by other processes, a measurement is retried, then flagged
_BUSY_NOTE = "* other processes took over 10% of the CPU during this measurement, in each of 3 attempts"
_GOALS = {("inference", 64): 2.5, ("inference", 1): 2.0, ("train", 64): 2.5}  # the targets


def best_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The fastest of our modes for each phase and batch size."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in result["rows"]:
        if r["model"] != result["model"]:
            continue
        key = (r["phase"], r["batch_size"])
        if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
            best[key] = r
    return list(best.values())


def _cells(r: dict[str, Any]) -> list[str]:
    pct = "" if r["pct_of_peak"] is None else f"{r['pct_of_peak']:.0f}%"
    setup = f"{r['setup_s']:.1f}" if r["setup_s"] >= 0.05 else ""
    return [
        r["phase"],
        str(r["batch_size"]),
        r["mode"],
        r["precision"],
        f"{r['images_per_s']:.1f}" + ("*" if r.get("contention", 0.0) > _BUSY else ""),
        f"{r['ratio_to_baseline']:.2f}x",
        f"{r['gflops']:.0f}",
        pct,
        setup,
    ]


_HEADER = ["phase", "batch", "mode", "precision", "images/s", "vs baseline", "GFLOP/s", "% of peak", "setup s"]


def _sorted_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    order = {"inference": 0, "train": 1}
    return sorted(result["rows"], key=lambda r: (order[r["phase"]], -r["batch_size"], r["model"] == result["model"]))


def format_table(result: dict[str, Any]) -> Any:
    """A rich renderable: the table, the peaks, the skipped modes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    peaks = ", ".join(f"{k} {v:.0f}" for k, v in result["peak_gflops"].items())
    table = Table(title=f"{result['model']} vs torchvision alexnet (eager fp32) | matmul peak GFLOP/s: {peaks}")
    for i, h in enumerate(_HEADER):
        table.add_column(h, justify="right" if i >= 4 or i == 1 else "left")
    best = {id(r) for r in best_rows(result)}
    previous = None
    for r in _sorted_rows(result):
        if previous is not None and (r["phase"], r["batch_size"]) != previous:
            table.add_section()
        previous = (r["phase"], r["batch_size"])
        table.add_row(
            *_cells(r), style="bold green" if id(r) in best else ("dim" if r["model"] != result["model"] else None)
        )
    parts: list[Any] = [table, Text(describe_machine(result["machine"]), style="dim")]
    if any(r.get("contention", 0.0) > _BUSY for r in result["rows"]):
        parts.append(Text(_BUSY_NOTE, style="yellow"))
    for s in result["skipped"]:
        parts.append(Text(f"skipped {s['phase']} {s['mode']} (batch {s['batch_size']}): {s['reason']}", style="yellow"))
    return Group(*parts)


def markdown_report(result: dict[str, Any]) -> str:
    """The README block: machine, peaks, goals reached, the full table, skipped modes."""
    m = result["machine"]
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in result["peak_gflops"].items())
    lines = [
        f"Measured {m['date']} by `alexnet benchmark --model {result['model']}` on {describe_machine(m)}.",
        f"Matmul peak (2048x2048, median): {peaks} GFLOP/s. Baseline: torchvision's `alexnet`, eager fp32, "
        "measured in the same run"
        + (
            " before the allocator tuning (the `+malloc` rows: the baseline with it)."
            if m.get("allocator_tuned")
            else "."
        ),
        "",
    ]
    for r in sorted(best_rows(result), key=lambda r: (r["phase"], -r["batch_size"])):
        goal = _GOALS.get((r["phase"], r["batch_size"]))
        target = f" (goal {goal}x: {'met' if r['ratio_to_baseline'] >= goal else 'not met'})" if goal else ""
        pct = f", {r['pct_of_peak']:.0f}% of the {r['precision']} peak" if r["pct_of_peak"] is not None else ""
        lines.append(
            f"- {r['phase']}, batch {r['batch_size']}: **{r['ratio_to_baseline']:.2f}x** with `{r['mode']}` "
            f"({r['images_per_s']:.1f} images/s{pct}){target}"
        )
    lines += ["", "| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in _sorted_rows(result)]
    if any(r.get("contention", 0.0) > _BUSY for r in result["rows"]):
        lines += ["", _BUSY_NOTE]
    if result["skipped"]:
        lines.append("")
        lines += [
            f"Skipped: {s['phase']} `{s['mode']}` (batch {s['batch_size']}): {s['reason']}" for s in result["skipped"]
        ]
    return "\n".join(lines)


def update_readme(path: str | os.PathLike, result: dict[str, Any]) -> None:
    """Replace the block between the bench markers in ``path`` (appending a section if it has none)."""
    from .files import atomic_write_bytes

    path = Path(path)
    text = path.read_text() if path.exists() else ""
    block = f"{START}\n{markdown_report(result)}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + f"## Benchmark\n\n{block}\n"
    atomic_write_bytes(path, text.encode())
