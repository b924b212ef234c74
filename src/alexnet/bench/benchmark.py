"""``alexnet benchmark``: our model in every fast mode against torchvision's AlexNet, in one run.

The baseline is torchvision's ``alexnet`` in eager fp32 (``torchvision-eager-fp32``) at the same phase
and batch size. A run has two steps at each phase and batch size. First every candidate mode is
*screened*: prepared (packed, compiled, exported or quantised; a mode the machine refuses is listed as
skipped, with the reason) and timed for a few calls, which ranks the modes and fills the timing cache
``auto`` chooses from (:mod:`alexnet.runtime.autotune`). Then the fastest screened mode of each precision (every
screened mode with ``full``) is timed in rounds that alternate with the baseline -- baseline, mode,
baseline, ..., mode, baseline -- and a round's ratio divides the mean of the two baseline measurements
either side of it by the mode's, so a busy moment of the machine slows both sides of a ratio or only
one round of it; rows report the median ratio and the lowest and highest round. Without ``full`` the
run keeps to a time budget: screening goes from the quickest set-up to the slowest and stops where the
budget would run out (those modes are listed as not measured). ``auto`` names, at each phase and batch
size, the mode ``--precision auto`` picks from the screening (for a long job; the agreement rule, which
needs trained weights, is not applied to the random ones timed here) and its ratio next to the best row's.

Achieved GFLOP/s count 2 x the model's multiply-adds per image (3x that for a training step: forward,
backward for inputs and weights); "% of peak" divides by this machine's dense matmul rate in the mode's
precision, which the benchmark measures itself (int8: operations/s of an int8 matmul). The int8 modes
are timed calibrated on the timing batch itself (random images): their speed, not their predictions.
Precisions the machine would only emulate (bf16 without AVX512-BF16/AMX) are skipped unless named.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ModeUnavailable, first_line
from ..models.registry import create_model, get_spec
from ..runtime import autotune
from ..runtime import device as _device
from ..runtime.device import emulated_precision_note, tune_cpu_allocator
from ..runtime.machine import machine_info, measure_peaks
from ..runtime.modes import (
    INFERENCE_MODES,
    TRAINING_MODES,
    Mode,
    inference_candidates,
    prepare_inference,
    prepare_training,
    training_candidates,
)
from .baseline import Baseline, BaselineProcess, Timer, median_seconds

__all__ = [
    "BASELINE",
    "DEFAULT_BUDGET_S",
    "Row",
    "Skipped",
    "interleave",
    "Progress",
    "screen",
    "measure_shape",
    "baseline_rows",
    "run_benchmark",
]

BASELINE = "torchvision-eager-fp32"
BASELINE_TUNED = "torchvision-eager-fp32+malloc"  # the baseline again, with the allocator tuning our modes get
TORCHVISION = "torchvision.alexnet"
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
    screen_timer: Timer | None = None  # a few calls of a prepared mode; default: ``timer``
    progress: Progress | None = None

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
        self.say(
            f"{phase:9s} batch {batch:3d}  {mode:32s} {row.images_per_s:8.1f} images/s  "
            f"{row.ratio_to_baseline:.2f}x ({lo:.2f}-{hi:.2f})"
        )
        return row

    def skip(self, model: str, mode: str, phase: str, batch: int, reason: str) -> Skipped:
        self.say(f"{phase:9s} batch {batch:3d}  {mode:32s} skipped: {reason}")
        return Skipped(model, mode, phase, batch, reason)

    def say(self, message: str) -> None:
        """A progress line: what was just measured, and how much of the run is left."""
        self.log(message if self.progress is None else f"{self.progress.step()} {message}")


class Progress:
    """The run's steps (one per mode screened or timed in rounds) and its time budget: ``[k/n]`` and an
    estimate of the time left, from the average step so far."""

    def __init__(self, total: int, budget_s: float | None) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.deadline = None if budget_s is None else self.start + budget_s

    def step(self) -> str:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * max(self.total - self.done, 0)
        if self.deadline is not None:
            left = min(left, max(self.deadline - time.perf_counter(), 0.0))
        return f"[{self.done}/{self.total}, ~{_duration(left)} left]"

    def add(self, steps: int) -> None:
        self.total += steps

    def share(self, weight: float, weights_left: float) -> float | None:
        """The time by which the next shape should be done: its ``weight``'s share of what is left, out of
        the ``weights_left`` of the shapes still to do (None without a budget)."""
        if self.deadline is None:
            return None
        now = time.perf_counter()
        return now + max(self.deadline - now, 0.0) * weight / max(weights_left, 1e-9)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


@dataclass
class Screened:
    """A mode prepared and timed for a few calls: its seconds per batch, its set-up, the call itself."""

    mode: str
    precision: str
    seconds: float
    setup_s: float
    call: Callable[[], Any] = field(repr=False)


def _release(*modes: Mode) -> None:
    if any(mode.engine in ("compile", "compile-int8") for mode in modes):
        torch._dynamo.reset()  # drop the compiled graphs and their frozen weight copies
    gc.collect()


def _table(phase: str) -> dict[str, Mode]:
    return INFERENCE_MODES if phase == "inference" else TRAINING_MODES


def _screen_order(modes: Sequence[str], table: dict[str, Mode], guess: Callable[[str], float]) -> list[str]:
    """The cheap set-ups first (in the table's order), then the costly ones, quickest first."""
    costly = [m for m in modes if table[m].engine in autotune.COSTLY_ENGINES]
    return [m for m in modes if m not in costly] + sorted(costly, key=guess)


def screen(
    ctx: Context,
    model: str,
    phase: str,
    batch: int,
    modes: Sequence[str],
    *,
    named: bool,
    deadline: float | None = None,
    cache: autotune.TimingCache | None = None,
) -> tuple[list[Screened], list[Skipped]]:
    """Prepare and time each mode at one phase and batch size (see the module's docstring); the timings
    go to the cache ``auto`` reads. ``named``: the modes were asked for, so they are timed whatever the
    precision or the budget; else a costly mode is screened only if it and the rounds that follow fit
    before ``deadline`` (a ``time.perf_counter()`` value)."""
    table = _table(phase)
    size = get_spec(model).card.input_size
    x = torch.randn(batch, 3, size, size, device=ctx.device)
    y = torch.randint(0, 1000, (batch,), device=ctx.device)
    net = create_model(model, 1000).to(ctx.device).eval()  # inference runs it; training steps build their own
    machine = autotune.machine_key(ctx.device)
    shape = autotune.shape_key(net, phase, tuple(x.shape))
    cache = cache if cache is not None else autotune.TimingCache()
    timer = ctx.screen_timer or ctx.timer
    screened: list[Screened] = []
    skipped: list[Skipped] = []
    order = _screen_order(modes, table, lambda m: cache.setup_guess(machine, m, table[m].engine))
    for mode in order:
        spec = table[mode]
        note = emulated_precision_note(spec.precision, ctx.device) if spec.precision == "bf16" else None
        if note and not named:
            skipped.append(ctx.skip(model, mode, phase, batch, f"{note} (name it in --modes to time it)"))
            continue
        typical = min((s.seconds for s in screened), default=1.0)
        guess = cache.setup_guess(machine, mode, spec.engine) + 4 * typical
        if not named and deadline is not None and spec.engine in autotune.COSTLY_ENGINES:
            # the rounds to come: the fastest mode of each precision and the baseline, alternating
            rounds = len({table[m].precision for m in modes}) * (2 * ctx.rounds + 1) * max(0.6, 3 * typical)
            if time.perf_counter() + guess + rounds > deadline:
                reason = f"not measured: its set-up and timing (~{guess:.0f} s) do not fit the run's budget; --full"
                skipped.append(ctx.skip(model, mode, phase, batch, reason))
                continue
        start = time.perf_counter()
        try:
            if phase == "inference":
                predictor = prepare_inference(net, mode, x, ctx.device)
                call: Callable[[], Any] = functools.partial(predictor, x)
            else:
                step = prepare_training(create_model(model, 1000), mode, device=ctx.device)
                step(x, y)  # compiles, if the mode does
                call = functools.partial(step, x, y)
        except ModeUnavailable as e:
            skipped.append(ctx.skip(model, mode, phase, batch, str(e)))
            continue
        setup = time.perf_counter() - start
        seconds = timer(call)
        cache.put(machine, shape, mode, autotune.Timing(seconds, setup, autotune._now()))
        screened.append(Screened(mode, spec.precision, seconds, setup, call))
        ctx.say(
            f"{phase:9s} batch {batch:3d}  {mode:32s} screened: {1e3 * seconds:8.1f} ms/batch, set-up {setup:.1f} s"
        )
    return screened, skipped


def measure_shape(
    ctx: Context,
    model: str,
    phase: str,
    batch: int,
    modes: Sequence[str],
    *,
    named: bool,
    full: bool,
    deadline: float | None = None,
) -> tuple[list[Row], list[Skipped], dict[str, Any] | None]:
    """Screen ``modes`` at one phase and batch size (within ``deadline``), time the fastest of each
    precision (``full``: all) in rounds against the baseline; returns the rows, the skipped modes and what
    ``auto`` picks there."""
    screened, skipped = screen(ctx, model, phase, batch, modes, named=named, deadline=deadline)
    best: dict[str, Screened] = {}
    for s in screened:
        if s.precision not in best or s.seconds < best[s.precision].seconds:
            best[s.precision] = s
    timed = screened if full or named else sorted(best.values(), key=lambda s: s.seconds)
    if ctx.progress is not None:  # the plan counted every mode (or every precision) in rounds
        planned = len(modes) if full or named else len({_table(phase)[m].precision for m in modes})
        ctx.progress.add(len(timed) - planned)
    rows = []
    for s in timed:
        try:
            rows.append(ctx.against_baseline(s.call, model, s.mode, phase, batch, s.precision, s.setup_s))
        except (RuntimeError, MemoryError) as e:  # a mode that ran once and then failed is a row, not the end
            skipped.append(ctx.skip(model, s.mode, phase, batch, f"failed while timed: {first_line(e)}"))
    table = _table(phase)
    auto_modes = (
        inference_candidates("auto", ctx.device) if phase == "inference" else training_candidates("auto", ctx.device)
    )
    eligible = [s for s in screened if s.mode in auto_modes]
    del screened, best, timed
    _release(*(table[m] for m in modes))
    if not eligible or not rows:
        return rows, skipped, None
    pick = min(eligible, key=lambda s: s.seconds).mode
    by_mode = {r.mode: r for r in rows}
    top = max(rows, key=lambda r: r.ratio_to_baseline)
    auto = {"phase": phase, "batch_size": batch, "mode": pick, "best_mode": top.mode,
            "best_ratio_to_baseline": top.ratio_to_baseline}  # fmt: skip
    if pick in by_mode:
        auto["ratio_to_baseline"] = by_mode[pick].ratio_to_baseline
        auto["of_best"] = by_mode[pick].ratio_to_baseline / top.ratio_to_baseline
    ctx.log(f"{phase:9s} batch {batch:3d}  auto picks {pick}" + (f" ({auto['of_best']:.0%} of the best row, {top.mode})"
                                                                  if "of_best" in auto else ""))  # fmt: skip
    return rows, skipped, auto


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
    from ..models.summary import model_summary

    return model_summary(name, 1000, input_size)[1]["total_mult_adds"]


def _checked(names: Iterable[str] | None, table: dict[str, Mode], phase: str) -> list[str] | None:
    if names is None:
        return None
    names = list(names)
    for name in names:
        if name not in table:
            raise ValueError(f"unknown {phase} mode {name!r}; choose from {', '.join(table)}")
    return names


DEFAULT_BUDGET_S = 160.0  # the default run ends within 3 minutes, starting and the peaks included
_SHAPE_WEIGHT = {"inference": 1.0, "train": 2.0}  # a training step's rounds take about twice the time


def _plan(
    device: torch.device,
    batch_sizes: Sequence[int],
    train_batch_size: int | None,
    modes: Iterable[str] | None,
    train_modes: Iterable[str] | None,
    full: bool,
) -> list[tuple[str, int, list[str], bool]]:
    """(phase, batch size, modes, whether they were named) of each shape measured; training only with a
    ``train_batch_size``."""
    named_modes = _checked(modes, INFERENCE_MODES, "inference")
    default_modes = [m for m in INFERENCE_MODES if device.type in INFERENCE_MODES[m].devices]
    plan = [("inference", b, named_modes or default_modes, named_modes is not None) for b in batch_sizes]
    if train_batch_size is not None:
        named_train = _checked(train_modes, TRAINING_MODES, "training")
        # eager-fp32 trains the way the baseline does (NCHW, plain SGD): the default leaves it to --full
        default_train = [
            m for m in TRAINING_MODES if device.type in TRAINING_MODES[m].devices and (full or m != "eager-fp32")
        ]
        plan.append(("train", train_batch_size, named_train or default_train, train_modes is not None))
    return plan


def run_benchmark(
    model: str = "alexnet",
    batch_sizes: Sequence[int] = (1, 64),
    *,
    train: bool = False,
    train_batch_size: int = 64,
    modes: Iterable[str] | None = None,
    train_modes: Iterable[str] | None = None,
    device: torch.device | str = "cpu",
    full: bool = False,
    budget_s: float | None = DEFAULT_BUDGET_S,
    rounds: int = 3,
    repeats: int = 10,
    warmup: int = 1,
    max_seconds: float = 1.0,
    min_seconds: float = 0.5,
    peak_size: int = 2048,
    tune_allocator: bool = True,
    timer: Timer | None = None,
    screen_timer: Timer | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Measure ``model`` in its modes against the baseline; return the JSON-ready result.

    ``{"machine", "machine_class", "peak_gflops": {"fp32", "bf16"[, "int8"][, "fp16"]}, "flops_per_image",
    "model", "rounds", "rows": [Row.to_json(): {"model", "mode", "phase", "batch_size", "images_per_s",
    "ratio_to_baseline", "ratio_spread", "pct_of_peak", ...}], "skipped": [{"model", "mode", "phase",
    "batch_size", "reason"}], "auto": [{"phase", "batch_size", "mode", "ratio_to_baseline", "best_mode",
    "best_ratio_to_baseline", "of_best"}], "seconds"}``.

    ``modes``/``train_modes``: the modes to time (all of them, whatever the budget); default: every mode of
    the device, the fastest screened mode of each precision timed in rounds (``full``: every one), within
    ``budget_s`` seconds (``full``: no budget). Each round's measurement is :func:`~alexnet.runtime.machine.time_call`
    with ``warmup``, ``repeats``, ``max_seconds`` and ``min_seconds``; ``timer`` replaces it in this
    process and ``screen_timer`` the screening's few calls (the tests pass fake ones). With
    ``tune_allocator`` (CPU), this process gets :func:`~alexnet.runtime.device.tune_cpu_allocator`, the baseline
    runs in a separate default process, and ``torchvision-eager-fp32+malloc`` rows show the baseline with
    the tuning.
    """
    begin = time.perf_counter()
    log = log or (lambda _msg: None)
    device = torch.device(device)
    plan = _plan(device, batch_sizes, train_batch_size if train else None, modes, train_modes, full)
    timing = {"warmup": warmup, "repeats": repeats, "max_seconds": max_seconds, "min_seconds": min_seconds}
    fake = timer is not None
    timer = timer or functools.partial(median_seconds, device=device, **timing)
    if screen_timer is None:  # what auto measures: the fastest of a few calls
        screen_timer = timer if fake else functools.partial(autotune.time_prepared, device=device)
    shapes = [(phase, batch) for phase, batch, _, _ in plan]
    # the baseline with the allocator tuning (+malloc rows): a few more rounds per shape, left to --full
    tuned = tune_cpu_allocator() if tune_allocator and device.type == "cpu" else False
    tuned_rows = tuned and full
    machine = machine_info(device)
    what = machine.get("gpu") or f"{machine['cpu']} ({_device.cpu_capabilities().machine_class})"
    budget = None if full else budget_s
    log(f"benchmarking {model} on {device}: {what}, {torch.get_num_threads()} threads; against {BASELINE}, "
        f"{rounds} interleaved rounds per mode" + (f", within ~{_duration(budget)}" if budget else ""))  # fmt: skip
    # each mode is screened, and in rounds too with --full or when named (else about one mode per precision)
    rounds_planned = [
        len(m) if full or named else len({_table(phase)[x].precision for x in m}) for phase, _, m, named in plan
    ]
    progress = Progress(sum(len(m) for _, _, m, _ in plan) + sum(rounds_planned), budget)
    with BaselineProcess(device, timing) if tuned else Baseline(device, timer) as baseline:
        peaks = measure_peaks(device, peak_size)
        log("matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
        flops = {
            TORCHVISION: 2 * _mult_adds("alexnet", 224),
            model: 2 * _mult_adds(model, get_spec(model).card.input_size),
        }
        ctx = Context(device, baseline, timer, rounds, flops, peaks, log, screen_timer, progress)
        rows: list[Row] = []
        skipped: list[Skipped] = []
        autos: list[dict[str, Any]] = []
        weights = [_SHAPE_WEIGHT[phase] for phase, *_ in plan]
        for i, (phase, batch, modes_here, named) in enumerate(plan):
            deadline = progress.share(weights[i], sum(weights[i:]))
            r, s, a = measure_shape(ctx, model, phase, batch, modes_here, named=named, full=full, deadline=deadline)
            rows, skipped = rows + r, skipped + s
            autos += [a] if a is not None else []
        progress.add(len(shapes) if tuned_rows else 0)
        base = baseline_rows(ctx, shapes, tuned_rows)
    return {
        "machine": machine | {"allocator_tuned": tuned},
        "machine_class": machine.get("gpu") or _device.cpu_capabilities().machine_class,
        "peak_gflops": peaks,
        "flops_per_image": flops,
        "model": model,
        "rounds": rounds,
        "rows": [r.to_json() for r in base + rows],
        "skipped": [s.to_json() for s in skipped],
        "auto": autos,
        "full": full,
        "seconds": round(time.perf_counter() - begin, 1),
    }
