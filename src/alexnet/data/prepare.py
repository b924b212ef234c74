"""``alexnet prepare``: convert an image folder into a prepared dataset (:mod:`alexnet.data.prepared`), once.

Every source image is decoded (this is where files are verified, once), converted to RGB, down-sampled so
its shorter side is ``size`` (and for ``center-crop`` cut to the central square, as the paper did), and
stored raw or re-encoded as JPEG. Shards are converted in parallel, one per task, in worker processes.

Crash safety and resuming: each shard is written under a temporary name and renamed into place, then a
journal record (``DST/.prepare/<split>-<n>.json``: the shard's key, size, skipped files) is written. The
key is a digest of the options and of the shard's source files (names, labels, sizes, modification
times), so a second run skips every shard already done for the same sources and options and converts the
rest; the result is byte for byte the one an uninterrupted run writes. The manifest is written last,
atomically: a dataset without one is never read as complete.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchcodec.encoders import JpegEncoder
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from ..files import TEMP_SUFFIX, atomic_write_bytes
from . import prepared, sources
from .loaders import DECODE_ERRORS, _reason, load_rgb
from .plan import DEFAULT_ENCODING, Plan, PrepareOptions, ShardTask, plan_shards

__all__ = [
    "PrepareOptions",
    "ShardTask",
    "plan_shards",
    "prepare_dataset",
    "describe_result",
    "REPORT",
    "DEFAULT_ENCODING",
]

REPORT = "skipped.tsv"


# --------------------------------------------------------------------------------------------
# Converting one shard (in a worker process)
# --------------------------------------------------------------------------------------------
@dataclass
class ShardResult:
    split: str
    number: int
    images: int = 0
    bytes: int = 0
    crc32: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # under strict: the first unreadable file


_progress: Any = None  # the worker's queue of converted-image counts


def _init_worker(queue: Any) -> None:
    global _progress
    _progress = queue
    torch.set_num_threads(1)  # one process per core already


def _encode(image: Any, options: PrepareOptions) -> tuple[np.ndarray, int, int]:
    short, long = sorted(image.size)
    if options.mode == "shorter-side" and int(options.size * long / short) > 65535:  # torchvision's rounding
        raise ValueError(
            f"{image.width}x{image.height} pixels would be {int(options.size * long / short)} pixels long at "
            f"{options.size}, over the 65535 a shard's index holds"
        )
    x = prepared.downsample(TF.pil_to_tensor(image), options.size, options.mode)
    h, w = x.shape[-2:]
    if options.encoding == "jpeg":
        return JpegEncoder(x.contiguous()).to_tensor(quality=options.quality).numpy(), h, w
    return x.contiguous().numpy().reshape(-1), h, w


def convert_shard(
    task: ShardTask, options: PrepareOptions, strict: bool = False, tell: Callable | None = None
) -> ShardResult:
    """Decode, down-sample and store ``task``'s files; rename the shard into place and journal it.

    Unreadable files are left out and listed in the result (under ``strict`` the shard is abandoned and
    the result carries the error instead). A failed write (a full disk) is a :class:`UserError` naming the
    shard; nothing is left under its name.
    """
    try:
        return _convert(task, options, strict, tell or _tell_queue)
    except OSError as e:
        raise UserError(f"cannot write {task.path}: {e.strerror or e}") from e


def _tell_queue(n: int) -> None:
    if _progress is not None:
        _progress.put(n)


def _convert(task: ShardTask, options: PrepareOptions, strict: bool, tell: Callable[[int], None]) -> ShardResult:
    result = ShardResult(task.split, task.number)
    task.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = task.path.with_name(f".{task.path.name}.{os.getpid()}{TEMP_SUFFIX}")
    writer = prepared.ShardWriter(tmp, len(task.files))
    pending = 0
    try:
        for i, (path, label) in enumerate(task.files):
            try:
                with load_rgb(task.source(i)) as image:
                    data, h, w = _encode(image, options)
            except DECODE_ERRORS as e:
                result.skipped.append((path, _reason(e)))
                if strict:
                    writer.abort()
                    result.error = f"unreadable image {path}: {_reason(e)}"
                    return result
            else:
                writer.add(data, h, w, label)
            pending += 1
            if pending >= 16:
                tell(pending)
                pending = 0
        result.images, result.bytes, result.crc32 = writer.close()
    except BaseException:
        writer.abort()
        raise
    # A stale record must never vouch for the new shard: drop it, rename the shard in, then record it.
    task.record.unlink(missing_ok=True)
    os.replace(tmp, task.path)
    record = {"key": task.key, **asdict(result)}
    atomic_write_bytes(task.record, (json.dumps(record) + "\n").encode())
    tell(pending)
    return result


def _done(task: ShardTask) -> ShardResult | None:
    """The journal's result for ``task`` if its shard is in place for the same key."""
    try:
        record = json.loads(task.record.read_text())
        if record["key"] != task.key or task.path.stat().st_size != record["bytes"]:
            return None
        record.pop("key")
        record["skipped"] = [tuple(s) for s in record["skipped"]]
        return ShardResult(**record)
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------
def _check_destination(src: Path, dst: Path) -> None:
    if dst.resolve() == src.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise UserError(f"the prepared dataset {dst} must not be inside the source folder {src}")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not prepared.is_prepared(dst):
        raise UserError(f"{dst} is a folder with other files in it: choose a new or empty folder for the dataset")


def _run(
    tasks: list[ShardTask], options: PrepareOptions, workers: int, strict: bool, advance: Callable[[int], None]
) -> Iterator[ShardResult]:
    if workers == 0 or len(tasks) <= 1:
        for task in tasks:
            yield convert_shard(task, options, strict, advance)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    with ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(queue,)
    ) as pool:
        pending: set[Future] = {pool.submit(convert_shard, t, options, strict) for t in tasks}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while not queue.empty():
                    advance(queue.get())
                for f in finished:
                    try:
                        yield f.result()
                    except BrokenProcessPool:
                        raise UserError(
                            "a converting process died (killed, or out of memory); the shards written so far are "
                            "kept: run the same command again (with fewer --workers if memory is short)"
                        ) from None
        finally:
            for f in pending:
                f.cancel()
    while not queue.empty():
        advance(queue.get())


def prepare_dataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    options: PrepareOptions | None = None,
    *,
    workers: int | None = None,
    strict: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
    labels: str | os.PathLike | None = None,
    devkit: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Convert the image folder ``src`` into the prepared dataset ``dst`` (resuming an unfinished one).

    ``src`` may also be ImageNet's archives, Kaggle's copy of it, or a flat folder with a ``labels`` CSV
    (see :mod:`alexnet.data.sources`; ``devkit``: the ILSVRC-2012 devkit when it is not in ``src``).

    ``workers`` processes convert shards in parallel (default: one per core; 0 converts in this process).
    Unreadable sources are skipped and listed in ``dst/skipped.tsv`` (``strict``: the first one is a
    :class:`UserError`, and the shards already written are kept for the next run). Returns the manifest
    plus ``converted`` (images converted by this call) and ``seconds``.
    """
    from .datasets import resolve_dataset

    options = options or PrepareOptions()
    src, dst = resolve_dataset(src), Path(dst)
    log = log or (lambda message: None)
    if not src.is_dir() and sources.archive_kind(src) is None:
        raise UserError(f"source folder not found: {src}")
    _check_destination(src, dst)
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    kw = {"labels": labels, "devkit": devkit, "workers": workers, "log": log}
    plan = sources.plan_source(src, dst, options, **kw) or plan_shards(src, dst, options)
    if (dst / prepared.MANIFEST).is_file():
        manifest = prepared.read_manifest(dst)
        if manifest.get("digest") == plan.digest:
            _drop_journal(dst)
            log(f"{dst} is already prepared from {src} with these options: nothing to do")
            return {**manifest, "converted": 0, "seconds": 0.0}
        raise UserError(
            f"{dst} already holds a prepared dataset of {manifest.get('source')} ({manifest['encoding']}, "
            f"{manifest['mode']} {manifest['size']}) and {src} or the options differ: choose another folder, "
            "or delete it to prepare it again"
        )
    try:
        (dst / prepared.JOURNAL).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {dst}: {e.strerror or e}") from e
    for folder in [dst / s for s in plan.splits]:
        if folder.is_dir():
            for stale in folder.glob(f".[0-9]*.shard.*{TEMP_SUFFIX}"):  # left by a killed run (named in _convert)
                stale.unlink(missing_ok=True)

    results: dict[tuple[str, int], ShardResult] = {}
    todo = []
    for task in plan.tasks:
        done = _done(task)
        if done is not None:
            results[(task.split, task.number)] = done
        else:
            _refuse_foreign(task.path)
            todo.append(task)
    already = sum(len(t.files) for t in plan.tasks) - sum(len(t.files) for t in todo)
    if already:
        log(f"resuming: {len(plan.tasks) - len(todo)} of {len(plan.tasks)} shards ({already} images) already written")
    begin = time.perf_counter()
    with _bar(quiet, plan.images, already) as advance:
        try:
            with contextlib.closing(_run(todo, options, workers, strict, advance)) as finished:
                for r in finished:
                    if r.error is not None:
                        raise UserError(
                            f"{r.error} (--strict stops at unreadable files; the shards written so far are kept for "
                            "the next run; without --strict unreadable files are skipped and listed)"
                        )
                    results[(r.split, r.number)] = r
        except KeyboardInterrupt:
            log(f"interrupted: {len(results)} of {len(plan.tasks)} shards are written; run the same command again "
                "to finish")  # fmt: skip
            raise
    seconds = time.perf_counter() - begin
    manifest = _finish(src, dst, plan, options, results)
    converted = plan.images - already
    return {**manifest, "converted": converted, "seconds": seconds}


def describe_result(result: dict[str, Any], dst: str | os.PathLike) -> list[str]:
    """:func:`prepare_dataset`'s result as ``alexnet prepare`` prints it: what ``dst`` holds, how fast it was
    converted, and where the skipped files are listed."""
    rate = f", {result['converted'] / result['seconds']:.0f} images/s" if result["seconds"] > 0 else ""
    splits = ", ".join(f"{name} {s['images']}" for name, s in result["splits"].items())
    lines = [
        f"{dst}: {result['images']} images ({splits}), {result['encoding']} {result['mode']} {result['size']}, "
        f"{result['bytes'] / 1e6:.1f} MB ({result['bytes'] / max(result['images'], 1) / 1e3:.1f} kB per image); "
        f"converted {result['converted']} in {result['seconds']:.1f} s{rate}"
    ]
    if result["skipped"]:
        lines.append(f"skipped {result['skipped']} unreadable files, listed in {Path(dst) / result['report']}")
    return lines


def _finish(
    src: Path, dst: Path, plan: Plan, options: PrepareOptions, results: dict[tuple[str, int], ShardResult]
) -> dict[str, Any]:
    """Check every class kept an image, write the report and then the manifest; drop the journal."""
    splits: dict[str, Any] = {}
    skipped: list[tuple[str, str]] = []
    for split, classes in plan.splits.items():
        shards = [results[(t.split, t.number)] for t in plan.tasks if t.split == split]
        counts = np.zeros(len(classes), dtype=np.int64)
        for t in plan.tasks:
            if t.split == split:
                bad = {p for p, _ in results[(split, t.number)].skipped}
                for p, label in t.files:
                    counts[label] += p not in bad
        if (counts == 0).any():
            empty = classes[int(np.flatnonzero(counts == 0)[0])]
            raise UserError(
                f"class {empty!r} of the {split} split has no readable images; fix or remove them and run the same "
                "command again (the shards written so far are kept)"
            )
        splits[split] = {
            "classes": classes,
            **({"words": plan.words[split]} if split in plan.words else {}),
            "images": int(sum(r.images for r in shards)),
            "bytes": int(sum(r.bytes for r in shards)),
            "skipped": int(sum(len(r.skipped) for r in shards)),
            "shards": [
                {"file": f"{split}/{r.number:05d}.shard", "images": r.images, "bytes": r.bytes, "crc32": r.crc32}
                for r in shards
            ],
        }
        skipped += [s for r in shards for s in r.skipped]
        for stale in (dst / split).glob("*.shard"):  # shards of an older, longer plan, as the journal recorded
            journaled = (dst / prepared.JOURNAL / f"{split}-{stale.stem}.json").is_file()
            if journaled and stale.name not in {f"{r.number:05d}.shard" for r in shards}:
                stale.unlink()
    report = "path\treason\n" + "".join(f"{p}\t{reason}\n" for p, reason in skipped)
    atomic_write_bytes(dst / REPORT, report.encode())
    manifest = {
        "format": prepared.FORMAT,
        "version": prepared.VERSION,
        **options.stored(),
        "source": str(src.resolve()),
        "digest": plan.digest,
        "images": int(sum(s["images"] for s in splits.values())),
        "bytes": int(sum(s["bytes"] for s in splits.values())),
        "skipped": len(skipped),
        "report": REPORT,
        "splits": splits,
    }
    atomic_write_bytes(dst / prepared.MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    _drop_journal(dst)
    return manifest


def _refuse_foreign(path: Path) -> None:
    """A file where a shard is to go that is no shard (a user's, in a folder that only looks like an
    unfinished job) is refused rather than replaced; a shard there without its record (a run killed between
    renaming it in and recording it) is replaced."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(prepared.MAGIC))
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from e
    if magic != prepared.MAGIC:
        raise UserError(
            f"{path} is no shard this job wrote: move it away, or choose a new or empty folder for the dataset"
        )


def _drop_journal(dst: Path) -> None:
    """Delete the journal's records (and their temporary files), then its folder if nothing else is in it."""
    journal = dst / prepared.JOURNAL
    for record in [*journal.glob("*-[0-9]*.json"), *journal.glob(f".*-[0-9]*.json.*{TEMP_SUFFIX}")]:
        record.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        journal.rmdir()


class _bar:
    """A rich progress bar over images (images/s, ETA); nothing when quiet."""

    def __init__(self, quiet: bool, total: int, done: int) -> None:
        self.quiet, self.total, self.done = quiet, total, done

    def __enter__(self) -> Callable[[int], None]:
        if self.quiet:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task("prepare", total=self.total, completed=self.done, rate="-")
        self.begin, self.count = time.perf_counter(), 0

        def advance(n: int) -> None:
            self.count += n
            rate = self.count / max(time.perf_counter() - self.begin, 1e-9)
            self.progress.update(self.task, advance=n, rate=f"{rate:.0f}")

        return advance

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.progress.stop()
