"""The sources ``alexnet prepare`` reads besides class folders: ImageNet (ILSVRC-2012)'s archives and Kaggle's
copy of it, read in place, and a flat folder with a labels file.

What :func:`plan_source` recognises in ``SRC`` (by contents, not by name):

- **the archives**: the train tar (a tar of one tar per synset, ``n01440764.tar`` ...), the val tar (the
  validation JPEGs, flat) and the devkit (``data/meta.mat``: each synset's ILSVRC2012_ID, WNID and words;
  ``data/ILSVRC2012_validation_ground_truth.txt``: one ILSVRC2012_ID per validation image in file-name
  order), or the devkit's two files given as they are; ``SRC`` may also be one archive, and ``--devkit``
  names a devkit kept elsewhere;
- **Kaggle's copy**: ``ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG``, the flat ``ILSVRC/Data/CLS-LOC/val/``
  labelled by ``LOC_val_solution.csv`` (its PredictionString starts with the wnid), words in
  ``LOC_synset_mapping.txt``;
- **a flat folder with a labels file** (``--labels FILE``: CSV rows of file name, relative to ``SRC``, and
  class), for any dataset shipped that way.

Class index i is the i-th class name in sorted order (for ImageNet: 0 = n01440764, tench); the validation
ground truth, in the devkit's ILSVRC2012_IDs, is mapped to wnids through meta.mat (:mod:`alexnet.data.imagenet`).
Each source is planned as the same images in class folders (``<split>/<class>/<file>``) would be, in the
same order, so the shards are byte for byte those a folder gives. Nothing is extracted: members are read
from the uncompressed tar at their offsets, by the workers that convert them; the inner tars are listed in
parallel, each worker seeking to its inner tar's data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import tarfile
import zlib
from array import array
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import UserError
from . import prepared
from .imagenet import GROUND_TRUTH, META, TAR_SUFFIXES, WNID, Devkit, class_words, read_devkit, read_synset_mapping
from .loaders import _is_image_file, image_files
from .plan import Plan, PrepareOptions, ShardTask, scan_folder

__all__ = ["archive_kind", "plan_source"]

KAGGLE_DATA = Path("ILSVRC", "Data", "CLS-LOC")
KAGGLE_VAL = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
_BLOCK = tarfile.BLOCKSIZE
_MAGICS = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


# --------------------------------------------------------------------------------------------
# Tars read in place
# --------------------------------------------------------------------------------------------
class _Window(io.RawIOBase):
    """Bytes ``[start, start + size)`` of a file, seen as a file of their own (an inner tar)."""

    def __init__(self, file: BinaryIO, start: int, size: int) -> None:
        self.file, self.start, self.size, self.pos = file, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, offset + (0, self.pos, self.size)[whence])
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        self.file.seek(self.start + self.pos)
        data = self.file.read(n)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _list_tar(file: BinaryIO, start: int, size: int, name: str) -> list[tuple[str, int, int, int]]:
    """``(member name, offset of its data in the file, size, mtime)`` of every regular member of the tar at
    ``[start, start + size)``; a tar cut short or damaged is an error naming it."""
    window = _Window(file, start, size)
    members = []
    try:
        with tarfile.open(fileobj=window, mode="r:") as tar:  # type: ignore[call-overload]
            while (m := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every member it has read: 50,000 of the val tar's, for nothing
                if m.offset_data + m.size > size:
                    raise tarfile.ReadError("unexpected end of data")
                if m.isfile():
                    members.append((m.name, start + m.offset_data, m.size, int(m.mtime)))
            end = tar.offset
    except (tarfile.TarError, EOFError) as e:
        raise UserError(f"{name} is truncated or damaged ({e}): download it again") from e
    window.seek(end)
    if window.read(_BLOCK) != bytes(_BLOCK):  # tarfile stops silently at a cut header; a whole tar ends in zeros
        raise UserError(f"{name} is truncated or damaged (no end-of-archive block): download it again")
    return members


def _list_inner(job: tuple[str, str, int, int]) -> list[Row]:
    """The rows of one inner tar's images, its stem their class (a worker's job: it opens the outer tar and
    seeks to the inner one)."""
    archive, inner, start, size = job
    wnid = inner.rsplit("/", 1)[-1][:-4]
    with open(archive, "rb") as f:
        members = _list_tar(f, start, size, f"{archive}: {inner}")
    return [(wnid, f"{inner}/{name}", offset, n, mtime) for name, offset, n, mtime in members if _is_image(name)]


def _is_image(name: str) -> bool:
    """A member the class-folder scan would read: an image file, in no hidden folder."""
    parts = name.split("/")
    return _is_image_file(parts[-1]) and not any(p.startswith(".") for p in parts[:-1] if p)


def _walk_key(name: str) -> list[tuple[int, str]]:
    """The order :func:`alexnet.data.loaders.image_files` walks a folder in: a folder's files (sorted) before its
    subfolders (sorted)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return [(1, p) for p in parts[:-1]] + [(0, parts[-1])]


def _compression(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(6)
    return next((kind for magic, kind in _MAGICS.items() if head.startswith(magic)), None)


def archive_kind(path: str | os.PathLike) -> str | None:
    """``train`` (a tar of ``<wnid>.tar``), ``val`` or ``test`` (a tar of ILSVRC2012_val_/test_ images),
    ``devkit`` (holds ``data/meta.mat``), or None, from the first members of ``path``."""
    path = Path(path)
    if not (path.is_file() and path.name.lower().endswith(TAR_SUFFIXES)):
        return None
    try:
        with tarfile.open(path, "r:*") as tar:
            for n, m in enumerate(tar):
                base = m.name.rstrip("/").rsplit("/", 1)[-1]
                if base == META and m.name.endswith(f"data/{META}"):
                    return "devkit"
                if m.isfile() and base.endswith(".tar") and WNID.fullmatch(base[:-4]):
                    return "train"
                if m.isfile() and _is_image_file(base) and base.startswith(("ILSVRC2012_val_", "ILSVRC2012_test_")):
                    return "val" if "_val_" in base else "test"
                if n >= 64:
                    return None
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return None
    return None


# --------------------------------------------------------------------------------------------
# Planning: the rows of each split, as class folders would hold them, cut into shards
# --------------------------------------------------------------------------------------------
# A row: (class, name inside the source, data offset in the archive or -1 for a file, size, mtime). Sorted as
# tuples, rows come in the order class folders are read: by class, then by name (see _by_class).
Row = tuple[str, str, int, int, int]


@dataclass
class _Split:
    classes: list[str]
    rows: list[Row]
    shown: str  # the archive or folder the row names are relative to
    archive: str | None = None  # rows are members of this tar file
    words: list[str] | None = None


def _by_class(rows: list[Row], what: str) -> tuple[list[str], list[Row]]:
    """The sorted classes, and ``rows`` in the order class folders are read: by class, then in the walk order
    of the names (sorted in place; rows are the index of the whole dataset, so no key object per row)."""
    classes = sorted({r[0] for r in rows})
    if not classes:
        raise UserError(f"{what} holds no images")
    if len({(r[0], r[1].rpartition("/")[0]) for r in rows}) == len(classes):
        rows.sort()  # one folder per class: the walk order is the names' order
    else:
        rows.sort(key=lambda r: (r[0], _walk_key(r[1])))
    return classes, rows


def _tasks(split: str, part: _Split, dst: Path, options: PrepareOptions) -> list[ShardTask]:
    stored = json.dumps(options.stored(), sort_keys=True)
    index = {c: i for i, c in enumerate(part.classes)}
    n = options.shard_images
    tasks = []
    for number, begin in enumerate(range(0, len(part.rows), n)):
        chunk = part.rows[begin : begin + n]
        h = hashlib.sha256(f"{prepared.VERSION}\n{stored}\n{split}\n{part.classes}\n".encode())
        for cls, name, offset, size, mtime in chunk:
            h.update(f"{name}\t{index[cls]}\t{offset}\t{size}\t{mtime}\n".encode())
        tasks.append(
            ShardTask(
                split, number, tuple((f"{part.shown}/{r[1]}", index[r[0]]) for r in chunk), h.hexdigest(),
                dst / split / f"{number:05d}.shard", dst / prepared.JOURNAL / f"{split}-{number:05d}.json",
                archive=part.archive, spans=array("q", (v for r in chunk for v in r[2:4])) if part.archive else (),
            )
        )  # fmt: skip
    return tasks


def plan_source(
    src: Path,
    dst: Path,
    options: PrepareOptions,
    *,
    labels: str | os.PathLike | None = None,
    devkit: str | os.PathLike | None = None,
    workers: int = 0,
    log: Callable[[str], None] = lambda message: None,
) -> Plan | None:
    """The :class:`~alexnet.data.plan.Plan` of ``src`` if it is ImageNet's archives, Kaggle's copy, or a flat
    folder given ``labels``; None for a folder of class folders (planned as before)."""
    notes: list[str] = []  # said once the plan stands, so that a failure is the only line
    if labels is not None:
        splits = _labelled_folder(src, Path(labels), notes.append)
        if devkit is not None:
            raise UserError("--devkit is for ImageNet's archives, not for a folder with --labels")
    elif (src / KAGGLE_DATA).is_dir():
        if devkit is not None:
            raise UserError(f"{src} is Kaggle's copy of ImageNet, labelled by {KAGGLE_VAL}: leave out --devkit")
        splits = _kaggle(src, notes.append)
    else:
        candidates = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.is_file())
        found = {p: kind for p in candidates if (kind := archive_kind(p)) is not None}
        if not found:
            if devkit is not None:
                raise UserError(f"--devkit is for ImageNet's archives; {src} holds none (no train or val tar)")
            return None
        folders = [s for s in prepared.SPLITS if (src / s).is_dir()]
        if folders:
            raise UserError(f"{src} holds both image folders ({', '.join(folders)}) and ImageNet archives "
                            f"({', '.join(p.name for p in found)}): move one of them out")  # fmt: skip
        if devkit is None and src.is_dir() and (src / META).is_file():
            devkit = src  # the devkit's two files, as they are
        splits = _archives(src, found, Path(devkit) if devkit is not None else None, workers, notes.append)
    tasks = []
    for split, part in splits.items():
        tasks += _tasks(split, part, dst, options)
        part.rows = []  # the tasks hold what is needed now
    digest = hashlib.sha256("".join(t.key for t in tasks).encode()).hexdigest()
    words = {s: p.words for s, p in splits.items() if p.words}
    for note in notes:
        log(note)
    return Plan({s: p.classes for s, p in splits.items()}, tasks, digest, words)


# ---- the archives
def _archives(
    src: Path, found: dict[Path, str], devkit_path: Path | None, workers: int, log: Callable[[str], None]
) -> dict[str, _Split]:
    by_kind: dict[str, list[Path]] = {}
    for path, kind in found.items():
        by_kind.setdefault(kind, []).append(path)
    for kind in ("train", "val", "devkit"):
        if len(by_kind.get(kind, [])) > 1:
            raise UserError(
                f"{src} holds {len(by_kind[kind])} {kind} archives "
                f"({', '.join(p.name for p in by_kind[kind])}): keep one"
            )
    for path in by_kind.get("test", []):
        log(f"{path}: unlabelled test images, left out")
    if devkit_path is None and "devkit" in by_kind:
        devkit_path = by_kind["devkit"][0]
    kit = read_devkit(devkit_path) if devkit_path is not None else None
    val = None  # checked first: a devkit that does not fit is found before the long listing of the train tar
    if "val" in by_kind:
        if kit is None or kit.truth is None:
            raise UserError(
                f"{by_kind['val'][0]} needs the devkit's labels: put ILSVRC2012_devkit_t12.tar.gz (or {META} and "
                f"{GROUND_TRUTH}) in {src}, or give --devkit PATH"
            )
        val = _val_tar(by_kind["val"][0], kit, log)
    splits = {"train": _train_tar(by_kind["train"][0], kit, workers, log)} if "train" in by_kind else {}
    if val is not None:
        splits["val"] = val
    if not splits:
        raise UserError(f"{src} holds a devkit but no train or val archive to prepare")
    return splits


def _outer(path: Path) -> list[tuple[str, int, int, int]]:
    if (kind := _compression(path)) is not None:
        raise UserError(
            f"{path} is {kind}-compressed: its members are read in place only from a plain tar; decompress it first"
        )
    try:
        with open(path, "rb") as f:
            return _list_tar(f, 0, os.fstat(f.fileno()).st_size, str(path))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from e


def _train_tar(path: Path, kit: Devkit | None, workers: int, log: Callable[[str], None]) -> _Split:
    inner = [(name, start, size) for name, start, size, _ in _outer(path) if name.endswith(".tar")]
    if kit is not None:
        unknown = [n for n, *_ in inner if n.rsplit("/", 1)[-1][:-4] not in kit.words]
        if unknown:
            raise UserError(f"{path}: {unknown[0]} is not a synset of {kit.meta_name} ({len(unknown)} such): a "
                            "devkit of another dataset?")  # fmt: skip
    listed = _map(_list_inner, [(str(path), name, start, size) for name, start, size in inner], workers)
    rows: list[Row] = []
    for (name, *_), members in zip(inner, listed, strict=True):
        if not members:
            raise UserError(f"{path}: {name} holds no image files")
        rows += members
    del listed
    classes, labelled = _by_class(rows, str(path))
    words = [kit.words[c] for c in classes] if kit is not None else list(class_words(classes)) or None
    log(f"{path}: {len(labelled)} images of {len(classes)} classes")
    return _Split(classes, labelled, str(path), str(path), words)


def _val_tar(path: Path, kit: Devkit, log: Callable[[str], None]) -> _Split:
    members = sorted((m for m in _outer(path) if _is_image(m[0])), key=lambda m: _walk_key(m[0]))
    truth = kit.truth or ()
    if len(truth) != len(members):
        raise UserError(
            f"{kit.truth_name} has {len(truth)} labels for {len(members)} images in {path}: the devkit and the "
            "val archive do not belong together"
        )
    rows = []
    for n, ((name, offset, size, mtime), ident) in enumerate(zip(members, truth, strict=True), 1):
        if ident not in kit.wnids:
            raise UserError(f"{kit.truth_name}, line {n}: ILSVRC2012_ID {ident} is not one of the "
                            f"{len(kit.wnids)} classes of {kit.meta_name}")  # fmt: skip
        rows.append((kit.wnids[ident], name, offset, size, mtime))
    classes, labelled = _by_class(rows, str(path))
    log(f"{path}: {len(labelled)} images of {len(classes)} classes, labelled by {kit.truth_name}")
    return _Split(classes, labelled, str(path), str(path), [kit.words[c] for c in classes])


def _map(fn: Callable, jobs: list, workers: int) -> list:
    """``[fn(j) for j in jobs]``, in ``workers`` processes when there are several jobs."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    try:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context(method)) as pool:
            return list(pool.map(fn, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    except BrokenProcessPool:
        raise UserError("a listing process died (killed, or out of memory): run the same command again") from None


# ---- files in folders
def _file_rows(folder: Path, names: list[tuple[str, str]]) -> list[Row]:
    """The rows of the files ``(name relative to folder, class)``."""
    rows = []
    for name, cls in names:
        st = (folder / name).stat()
        rows.append((cls, name, -1, st.st_size, st.st_mtime_ns))
    return rows


def _folder_split(folder: Path, classes: list[str], files: list[tuple[Path, int]], words: list[str] | None) -> _Split:
    rows = _file_rows(folder, [(str(p.relative_to(folder)), classes[t]) for p, t in files])
    return _Split(*_by_class(rows, str(folder)), str(folder), None, words)


def _kaggle(src: Path, log: Callable[[str], None]) -> dict[str, _Split]:
    data = src / KAGGLE_DATA
    mapping = src / KAGGLE_SYNSETS
    words = read_synset_mapping(mapping) if mapping.is_file() else {}
    splits: dict[str, _Split] = {}
    if (data / "train").is_dir():
        classes, files = scan_folder(data / "train")
        if words and (unknown := [c for c in classes if c not in words]):
            raise UserError(f"{data / 'train'}: class folder {unknown[0]} is not a synset of {mapping}")
        splits["train"] = _folder_split(data / "train", classes, files, [words[c] for c in classes] if words else None)
    if (data / "val").is_dir():
        solution = src / KAGGLE_VAL
        if not solution.is_file():
            raise UserError(f"{data / 'val'} needs its labels: {solution} not found")
        truth: dict[str, str] = {}
        for n, row in enumerate(_csv_rows(solution), 1):
            if n == 1 and row and row[0] == "ImageId":
                continue
            wnid = row[1].split()[0] if len(row) > 1 and row[1].split() else ""
            if not WNID.fullmatch(wnid):
                raise UserError(f"{solution}, line {n}: the PredictionString does not start with a wnid")
            if words and wnid not in words:
                raise UserError(f"{solution}, line {n}: {wnid} is not a synset of {mapping}")
            truth[row[0]] = wnid
        names = [str(p.relative_to(data / "val")) for p in image_files(data / "val")]
        missing = [name for name in names if Path(name).stem not in truth]
        if missing or len(names) != len(truth):
            raise UserError(
                f"{solution} has {len(truth)} labels for {len(names)} images in {data / 'val'}"
                + (f" ({missing[0]} has none)" if missing else "")
            )
        classes, labelled = _by_class(
            _file_rows(data / "val", [(n, truth[Path(n).stem]) for n in names]), str(solution)
        )
        splits["val"] = _Split(
            classes, labelled, str(data / "val"), None, [words[c] for c in classes] if words else None
        )
        log(f"{data / 'val'}: {len(labelled)} images of {len(classes)} classes, labelled by {solution}")
    if not splits:
        raise UserError(f"{data} has neither train/ nor val/")
    return splits


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from e


def _labelled_folder(src: Path, labels: Path, log: Callable[[str], None]) -> dict[str, _Split]:
    """One split of the files ``labels`` names, with their classes (a first row that names no image file is a
    header)."""
    if not src.is_dir():
        raise UserError(f"--labels needs a folder of images, not {src}")
    rows = _csv_rows(labels)
    if rows and not _is_image_file(rows[0][0].rsplit("/", 1)[-1]):
        rows = rows[1:]
    named: dict[str, str] = {}
    for n, row in enumerate(rows, 1):
        if len(row) < 2 or not row[1].strip():
            raise UserError(f"{labels}: row {n} is not 'file,class'")
        name, cls = row[0].strip().replace("\\", "/"), row[1].strip()
        if name in named:
            raise UserError(f"{labels}: {name} is listed twice")
        if not (src / name).is_file():
            raise UserError(f"{labels}, row {n}: {src / name} not found")
        named[name] = cls
    if not named:
        raise UserError(f"{labels} lists no images")
    unlisted = len(image_files(src)) - len(named)
    if unlisted > 0:
        log(f"{src}: {unlisted} image files are not in {labels} and are left out")
    classes, labelled = _by_class(_file_rows(src, list(named.items())), str(labels))
    return {prepared.ALL: _Split(classes, labelled, str(src), None, None)}
