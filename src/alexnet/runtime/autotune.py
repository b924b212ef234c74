"""Which mode ``auto`` runs: the one measured fastest for this job on the machine at hand.

The fastest way to run AlexNet differs by machine class (oneDNN bf16 on one CPU, ONNX Runtime int8 on
another, compiled bf16 on a third), so ``auto`` does not follow a fixed order. It times the candidate
modes on the job's own shapes (model, input size, batch size, device) and keeps each timing in a cache
per machine (``$ALEXNET_MODE_CACHE``, else ``modes.json`` in :func:`~alexnet.files.default_cache_dir`),
so a second run measures nothing. A mode's set-up (compiling, exporting, quantising) is paid on every
run, so the choice minimises set-up plus the job's batches times the seconds per batch. Modes whose
set-up is cheap are always measured; a costly one is tried only when the job is long enough to pay its
set-up back (:data:`PAYBACK` times it), or when a measurement of it is cached (``alexnet benchmark``
measures every mode and fills the same cache).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModeUnavailable, UserError
from ..files import atomic_write_bytes, default_cache_dir

__all__ = [
    "COSTLY_ENGINES",
    "PAYBACK",
    "Timing",
    "TimingCache",
    "Choice",
    "machine_key",
    "shape_key",
    "cache_path",
    "rank_modes",
]

# Engines whose set-up compiles, exports or quantises: seconds to a minute, paid again on every run.
COSTLY_ENGINES = frozenset({"compile", "onnxruntime", "compile-int8", "onnxruntime-int8"})
# Before a costly engine has been measured on this machine: an upper guess of its set-up, used only to
# decide whether the job is long enough to try it (the choice itself uses measured seconds).
SETUP_GUESS_S = {"compile": 30.0, "onnxruntime": 5.0, "compile-int8": 60.0, "onnxruntime-int8": 20.0}
# A costly mode is tried when the job in the best mode known so far takes this many times its set-up:
# then a mode 1.25x faster already pays its set-up back.
PAYBACK = 5.0
CACHE_ENV = "ALEXNET_MODE_CACHE"
_VERSION = 1


def cache_path() -> Path:
    """``$ALEXNET_MODE_CACHE``, else ``modes.json`` in the user's alexnet cache folder."""
    return Path(os.environ.get(CACHE_ENV) or default_cache_dir() / "modes.json")


def machine_key(device: torch.device | str) -> str:
    """What a timing depends on besides the job: the CPU (model, instruction-set class, torch's threads)
    or the GPU (name, compute capability), and the torch version."""
    from .device import cpu_capabilities
    from .machine import machine_info

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        what = f"{torch.cuda.get_device_name(index)} sm{major}{minor}"
    else:
        what = f"{machine_info('cpu')['cpu']} {cpu_capabilities().machine_class} {torch.get_num_threads()} threads"
    return f"{device.type}: {what}, torch {torch.__version__}"


def shape_key(model: torch.nn.Module, phase: str, shape: Sequence[int]) -> str:
    """The job's shapes: the network's structure (a digest of its layers, not its weights), the phase and
    the batch's shape."""
    digest = hashlib.sha1(repr(model).encode()).hexdigest()[:12]
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    return f"{phase} {name}#{digest} {'x'.join(map(str, shape))}"


@dataclass(frozen=True)
class Timing:
    """A mode's measured set-up and seconds per batch."""

    seconds: float
    setup_s: float
    measured: str  # when (UTC)

    def cost(self, batches: float | None, costly: bool) -> float:
        """Seconds for the job: ``batches`` batches, plus the set-up where it is paid again (``costly``);
        an unknown job size ranks by speed alone."""
        if batches is None:
            return self.seconds
        return batches * self.seconds + (self.setup_s if costly else 0.0)


class TimingCache:
    """Measured timings by machine, job shape and mode, kept in one JSON file.

    An unreadable or damaged file is ignored (and rewritten on the next store); a file that cannot be
    written leaves the timings in memory for this process.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else cache_path()
        self._data = self._read()

    def _read(self) -> dict[str, Any]:
        """The file's timings, {machine: {shape: {mode: {...}}}}; anything else in it is dropped."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not (isinstance(data, dict) and data.get("version") == _VERSION and isinstance(data.get("timings"), dict)):
            return {}
        return {
            m: {s: {k: v for k, v in modes.items() if isinstance(v, dict)} for s, modes in shapes.items()
                if isinstance(modes, dict)}
            for m, shapes in data["timings"].items() if isinstance(shapes, dict)
        }  # fmt: skip

    def get(self, machine: str, shape: str, mode: str) -> Timing | None:
        entry = self._data.get(machine, {}).get(shape, {}).get(mode)
        try:
            return Timing(float(entry["seconds"]), float(entry["setup_s"]), str(entry["measured"]))
        except (TypeError, KeyError, ValueError):
            return None

    def setup_guess(self, machine: str, mode: str, engine: str) -> float:
        """The longest set-up measured for ``mode`` on this machine (any job), else :data:`SETUP_GUESS_S`."""
        seen = [s[mode]["setup_s"] for s in self._data.get(machine, {}).values() if isinstance(s.get(mode), dict)]
        seen = [float(v) for v in seen if isinstance(v, int | float)]
        return max(seen) if seen else SETUP_GUESS_S.get(engine, 0.0)

    def put(self, machine: str, shape: str, mode: str, timing: Timing) -> None:
        """Keep ``timing``, in memory and in the file (merged with what other processes wrote since)."""
        merged = self._read()
        for m, shapes in self._data.items():
            for s, modes in shapes.items():
                slot = merged.setdefault(m, {}).setdefault(s, {})
                for k, v in modes.items():
                    slot.setdefault(k, v)
        merged.setdefault(machine, {}).setdefault(shape, {})[mode] = {
            "seconds": timing.seconds,
            "setup_s": timing.setup_s,
            "measured": timing.measured,
        }
        self._data = merged
        body = json.dumps({"version": _VERSION, "timings": merged}, indent=1) + "\n"
        try:
            atomic_write_bytes(self.path, body.encode())
        except UserError:
            pass  # a read-only home: the choice is still made, only not remembered


@dataclass
class Choice:
    """One candidate, ranked: its timing (None where it was not measured), where the timing came from
    (``measured`` now, ``cached``), the prepared object when it was measured now, and why it was passed
    over (``skipped``) if it was."""

    mode: str
    timing: Timing | None = None
    source: str = ""
    prepared: Any = None
    skipped: str = ""
    failed: bool = False  # tried, and it cannot run here


def named(mode: str, reason: object) -> str:
    """``reason`` with the mode's name in front, unless it names it already."""
    return str(reason) if mode in str(reason) else f"{mode}: {reason}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def time_prepared(run: Callable[[], Any], device: torch.device, *, calls: int = 3, budget_s: float = 1.0) -> float:
    """The fastest of up to ``calls`` calls of ``run`` (already warmed up), stopping after ``budget_s``: another
    process can only make a call slower, so the fastest is the least disturbed."""
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < calls and (not times or time.perf_counter() - begin + times[-1] <= budget_s):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def rank_modes(
    candidates: Sequence[str],
    *,
    engines: dict[str, str],
    device: torch.device,
    shape: str,
    prepare: Callable[[str], Any],
    timer: Callable[[Any], float],
    batches: float | None,
    cache: TimingCache | None = None,
    measure: bool = True,
) -> list[Choice]:
    """The ``candidates`` (mode names, in the order to fall back on) ranked by their cost for the job.

    ``engines`` maps each mode to its engine (costly ones are :data:`COSTLY_ENGINES`); ``prepare(mode)``
    builds a mode (raising :class:`ModeUnavailable` where it cannot run, and running it once) and
    ``timer(prepared)`` gives its seconds per batch; ``batches`` is the job's size (None: unknown). With
    ``measure=False`` only cached timings are used. Returns every candidate: the timed ones first, by
    cost, then the untimed in the given order (a costly one not tried says why in ``skipped``), then
    those that could not run (``skipped`` holds the reason).
    """
    cache = cache if cache is not None else TimingCache()
    machine = machine_key(device)
    choices = {m: Choice(m) for m in candidates}
    for c in choices.values():
        if (t := cache.get(machine, shape, c.mode)) is not None:
            c.timing, c.source = t, "cached"

    def measure_one(c: Choice) -> None:
        start = time.perf_counter()
        try:
            c.prepared = prepare(c.mode)
        except ModeUnavailable as e:
            c.skipped, c.failed = named(c.mode, e), True
            return
        setup = time.perf_counter() - start
        c.timing, c.source = Timing(timer(c.prepared), setup, _now()), "measured"
        cache.put(machine, shape, c.mode, c.timing)

    def best_job_seconds() -> float | None:
        timed = [c.timing.cost(batches, engines[c.mode] in COSTLY_ENGINES) for c in choices.values() if c.timing]
        return min(timed) if timed and batches is not None else None

    if measure:
        for c in choices.values():  # the cheap ones first: they tell how long the job is
            if c.timing is None and engines[c.mode] not in COSTLY_ENGINES:
                measure_one(c)
        guesses = {m: cache.setup_guess(machine, m, engines[m]) for m in candidates}
        for c in sorted(choices.values(), key=lambda c: guesses[c.mode]):  # the quicker set-ups first
            if c.timing is not None or c.skipped:
                continue
            guess = guesses[c.mode]
            job = best_job_seconds()
            if job is None and batches is not None and not any(x.timing for x in choices.values()):
                job = float("inf")  # nothing cheap ran: the costly modes are all there is
            if job is not None and job >= PAYBACK * guess:
                measure_one(c)
            else:
                c.skipped = (
                    f"not tried: its set-up (~{guess:.0f} s) would not pay back on this job"
                    if job is not None
                    else "not tried: a costly set-up and no job size to weigh it against (no cached timing)"
                )
    order = {m: i for i, m in enumerate(candidates)}
    timed = sorted(
        (c for c in choices.values() if c.timing is not None),
        key=lambda c: (c.timing.cost(batches, engines[c.mode] in COSTLY_ENGINES), order[c.mode]),  # type: ignore[union-attr]
    )
    untimed = [c for c in choices.values() if c.timing is None and not c.failed]
    untimed.sort(key=lambda c: (bool(c.skipped), order[c.mode]))  # never measured, then not worth trying
    return timed + untimed + [c for c in choices.values() if c.failed]
