"""``alexnet benchmark``: our model in every fast mode against torchvision's AlexNet, in one run.

The baseline is torchvision's ``alexnet`` in eager fp32 (``torchvision-eager-fp32``) at the same phase
and batch size. Each mode is timed in rounds that alternate with the baseline -- baseline, mode,
baseline, ..., mode, baseline -- and a round's ratio divides the mean of the two baseline measurements
either side of it by the mode's, so a busy moment of the machine slows both sides of a ratio or only
one round of it; rows report the median ratio and the lowest and highest round. Achieved GFLOP/s
count 2 x the model's multiply-adds per image (3x that for a training step: forward, backward for
inputs and weights); "% of peak" divides by this machine's dense matmul rate in the mode's precision,
which the benchmark measures itself (int8: operations/s of an int8 matmul). The int8 modes are timed
calibrated on the timing batch itself (random images): their speed, not their predictions. A mode that
cannot run here is listed as skipped, with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .baseline import Baseline, BaselineProcess, Timer, median_seconds
from .device import tune_cpu_allocator
from .errors import ModeUnavailable
from .machine import machine_info, measure_peaks
from .modes import INFERENCE_MODES, TRAINING_MODES, Mode, prepare_inference, prepare_training
from .registry import create_model, get_spec

__all__ = [
    "BASELINE",
    "DEFAULT_INFERENCE_MODES",
    "DEFAULT_TRAINING_MODES",
    "Row",
    "Skipped",
    "interleave",
    "inference_rows",
    "training_rows",
    "baseline_rows",
    "run_benchmark",
]

BASELINE = "torchvision-eager-fp32"
BASELINE_TUNED = "torchvision-eager-fp32+malloc"  # the baseline again, with the allocator tuning our modes get
TORCHVISION = "torchvision.alexnet"
DEFAULT_INFERENCE_MODES = tuple(INFERENCE_MODES)
DEFAULT_TRAINING_MODES = tuple(TRAINING_MODES)
PHASE_FLOPS = {"inference": 1, "train": 3}  # a training step adds the backward pass for inputs and for weights

Log = Callable[[str], None]


@dataclass(frozen=True)
class Row:
    """One line of the table: a model in a mode, at a phase and batch size."""

    model: str
    mode: str
    phase: str  # "inference" or "train"
    batch_size: int
    precision: str  # the peak it is measured against: a key of ``peak_gflops``
    images_per_s: float  # median over the rounds
    ratio_to_baseline: float  # median over the rounds
    ratio_spread: tuple[float, float]  # the lowest and the highest round's ratio
    gflops: float
    pct_of_peak: float | None  # None where no peak was measured for the precision
    setup_s: float  # packing, compiling or exporting, paid once
    rounds: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ms_per_batch": 1e3 * self.batch_size / self.images_per_s}


@dataclass(frozen=True)
class Skipped:
    """A mode that cannot run here, and why."""

    model: str
    mode: str
    phase: str
    batch_size: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def interleave(
    mode: Callable[[], float], baseline: Callable[[], float], rounds: int
) -> tuple[list[float], list[float]]:
    """Measure baseline, mode, baseline, ..., mode, baseline; return the mode's seconds and each round's ratio.

    A round's ratio is the mean of the two baseline measurements either side of the mode's, divided by
    the mode's: one disturbed measurement moves at most two rounds, which the median of five rounds or more ignores.
    """
    before = baseline()
    seconds, ratios = [], []
    for _ in range(rounds):
        took = mode()
        after = baseline()
        seconds.append(took)
        ratios.append((before + after) / 2 / took)
        before = after
    return seconds, ratios


# --------------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """What every measurement of a run shares."""

    device: torch.device
    baseline: Baseline | BaselineProcess
    timer: Timer
    rounds: int
    flops: dict[str, int]  # per image, forward only, by model name
    peaks: dict[str, float]
    log: Log

    def row(
        self, model: str, mode: str, phase: str, batch: int, precision: str, seconds: list[float], ratios: list[float]
    ) -> Row:
        """A row from its seconds per batch and its ratios to the baseline."""
        per_s = batch / statistics.median(seconds)
        gflops = per_s * self.flops[model] * PHASE_FLOPS[phase] / 1e9
        peak = self.peaks.get(precision)
        return Row(
            model=model,
            mode=mode,
            phase=phase,
            batch_size=batch,
            precision=precision,
            images_per_s=per_s,
            ratio_to_baseline=statistics.median(ratios),
            ratio_spread=(min(ratios), max(ratios)),
            gflops=gflops,
            pct_of_peak=100 * gflops / peak if peak else None,
            setup_s=0.0,
            rounds=len(ratios),
        )

    def against_baseline(
        self, fn: Callable[[], Any], model: str, mode: str, phase: str, batch: int, precision: str, setup_s: float = 0.0
    ) -> Row:
        """``fn`` timed in rounds interleaved with the baseline at the same phase and batch size."""
        seconds, ratios = interleave(lambda: self.timer(fn), lambda: self.baseline.measure(phase, batch), self.rounds)
        row = dataclasses.replace(self.row(model, mode, phase, batch, precision, seconds, ratios), setup_s=setup_s)
        lo, hi = row.ratio_spread
        self.log(
            f"{phase:9s} batch {batch:3d}  {mode:32s} {row.images_per_s:8.1f} images/s  "
            f"{row.ratio_to_baseline:.2f}x ({lo:.2f}-{hi:.2f})"
        )
        return row

    def skip(self, model: str, mode: str, phase: str, batch: int, reason: str) -> Skipped:
        self.log(f"{phase:9s} batch {batch:3d}  {mode:32s} skipped: {reason}")
        return Skipped(model, mode, phase, batch, reason)


def _release(mode: Mode) -> None:
    if mode.engine in ("compile", "compile-int8"):
        torch._dynamo.reset()  # drop the compiled graphs and their frozen weight copies
    gc.collect()


def inference_rows(
    ctx: Context, model: str, modes: Sequence[str], batch_sizes: Sequence[int]
) -> tuple[list[Row], list[Skipped]]:
    """``model`` in each inference mode at each batch size."""
    size = get_spec(model).card.input_size
    net = create_model(model, 1000).to(ctx.device).eval()
    rows, skipped = [], []
    for mode in modes:
        for batch in batch_sizes:
            x = torch.randn(batch, 3, size, size, device=ctx.device)
            try:
                predictor = prepare_inference(net, mode, x, ctx.device)
            except ModeUnavailable as e:
                skipped.append(ctx.skip(model, mode, "inference", batch, str(e)))
                continue
            precision = INFERENCE_MODES[mode].precision
            fn = functools.partial(predictor, x)
            rows.append(ctx.against_baseline(fn, model, mode, "inference", batch, precision, predictor.setup_s))
            del predictor, fn
        _release(INFERENCE_MODES[mode])
    return rows, skipped


def training_rows(ctx: Context, model: str, modes: Sequence[str], batch: int) -> tuple[list[Row], list[Skipped]]:
    """One training step of ``model`` (forward, backward, SGD update) in each training mode."""
    size = get_spec(model).card.input_size
    rows, skipped = [], []
    for mode in modes:
        x = torch.randn(batch, 3, size, size, device=ctx.device)
        y = torch.randint(0, 1000, (batch,), device=ctx.device)
        try:
            start = time.perf_counter()
            step = prepare_training(create_model(model, 1000), mode, device=ctx.device)
            step(x, y)  # compiles, if the mode does
            setup = time.perf_counter() - start
        except ModeUnavailable as e:
            skipped.append(ctx.skip(model, mode, "train", batch, str(e)))
            continue
        fn = functools.partial(step, x, y)
        rows.append(ctx.against_baseline(fn, model, mode, "train", batch, TRAINING_MODES[mode].precision, setup))
        del step, fn
        _release(TRAINING_MODES[mode])
    return rows, skipped


def baseline_rows(ctx: Context, shapes: Sequence[tuple[str, int]], tuned_allocator: bool = False) -> list[Row]:
    """The baseline's rows, each from all its measurements at that phase and batch size (so this runs
    last; the spread is each measurement against their median); with ``tuned_allocator``, then the
    baseline in this process, with the allocator tuning (``+malloc``), timed like a mode."""
    tuned_rows = []
    if tuned_allocator:  # first, so that the baseline's rows include the measurements these take
        with Baseline(ctx.device, ctx.timer) as here:
            tuned_rows = [
                ctx.against_baseline(here.call(p, b), TORCHVISION, BASELINE_TUNED, p, b, "fp32") for p, b in shapes
            ]
    rows = []
    for phase, batch in shapes:
        while len(ctx.baseline.seconds.get((phase, batch), [])) <= ctx.rounds:  # no mode ran at this shape
            ctx.baseline.measure(phase, batch)
        seconds = ctx.baseline.seconds[phase, batch]
        typical = statistics.median(seconds)
        row = ctx.row(TORCHVISION, BASELINE, phase, batch, "fp32", seconds, [typical / s for s in seconds])
        rows.append(dataclasses.replace(row, ratio_to_baseline=1.0))
    return rows + tuned_rows


def _mult_adds(name: str, input_size: int) -> int:
    from .summary import model_summary

    return model_summary(name, 1000, input_size)[1]["total_mult_adds"]


def _checked(names: Iterable[str] | None, table: dict[str, Mode], phase: str) -> list[str]:
    names = list(table if names is None else names)
    for name in names:
        if name not in table:
            raise ValueError(f"unknown {phase} mode {name!r}; choose from {', '.join(table)}")
    return names


def run_benchmark(
    model: str = "alexnet",
    batch_sizes: Sequence[int] = (1, 64),
    *,
    train: bool = False,
    train_batch_size: int = 64,
    modes: Iterable[str] | None = None,
    train_modes: Iterable[str] | None = None,
    device: torch.device | str = "cpu",
    rounds: int = 5,
    repeats: int = 10,
    warmup: int = 1,
    max_seconds: float = 1.0,
    min_seconds: float = 0.5,
    peak_size: int = 2048,
    tune_allocator: bool = True,
    timer: Timer | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Measure ``model`` in each mode against the baseline; return the JSON-ready result.

    ``{"machine", "peak_gflops": {"fp32", "bf16"[, "int8"][, "fp16"]}, "flops_per_image", "model", "rounds",
    "rows": [Row.to_json(): {"model", "mode", "phase", "batch_size", "images_per_s", "ratio_to_baseline",
    "ratio_spread", "pct_of_peak", ...}], "skipped": [{"model", "mode", "phase", "batch_size", "reason"}]}``.
    Each measurement is :func:`~alexnet.machine.time_call` with ``warmup``, ``repeats``, ``max_seconds``
    and ``min_seconds``; ``timer`` replaces it in this process (the tests pass a fake one). With
    ``tune_allocator`` (CPU), this process gets :func:`~alexnet.device.tune_cpu_allocator`, the baseline
    runs in a separate default process, and ``torchvision-eager-fp32+malloc`` rows show the baseline
    with the tuning.
    """
    log = log or (lambda _msg: None)
    device = torch.device(device)
    modes = _checked(modes, INFERENCE_MODES, "inference")
    train_modes = _checked(train_modes, TRAINING_MODES, "training") if train else []
    timing = {"warmup": warmup, "repeats": repeats, "max_seconds": max_seconds, "min_seconds": min_seconds}
    timer = timer or functools.partial(median_seconds, device=device, **timing)
    shapes = [("inference", b) for b in batch_sizes] + ([("train", train_batch_size)] if train else [])
    tuned = tune_cpu_allocator() if tune_allocator and device.type == "cpu" else False
    log(f"benchmarking {model} on {device} against {BASELINE}, {rounds} interleaved rounds per mode")
    with BaselineProcess(device, timing) if tuned else Baseline(device, timer) as baseline:
        peaks = measure_peaks(device, peak_size)
        log("matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
        flops = {
            TORCHVISION: 2 * _mult_adds("alexnet", 224),
            model: 2 * _mult_adds(model, get_spec(model).card.input_size),
        }
        ctx = Context(device, baseline, timer, rounds, flops, peaks, log)
        inference, skipped = inference_rows(ctx, model, modes, batch_sizes)
        training, skipped_train = training_rows(ctx, model, train_modes, train_batch_size)
        base = baseline_rows(ctx, shapes, tuned)
    return {
        "machine": machine_info(device) | {"allocator_tuned": tuned},
        "peak_gflops": peaks,
        "flops_per_image": flops,
        "model": model,
        "rounds": rounds,
        "rows": [r.to_json() for r in base + inference + training],
        "skipped": [s.to_json() for s in skipped + skipped_train],
    }
