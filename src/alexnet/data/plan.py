"""The plan of ``alexnet prepare``: how images are stored (:class:`PrepareOptions`) and which source files go
into which shard (:class:`ShardTask`, :class:`Plan`), for a folder of class folders (:func:`plan_shards`).

:mod:`alexnet.data.sources` plans ImageNet's archives, Kaggle's copy and a labelled flat folder into the same
types; :mod:`alexnet.data.prepare` converts the shards a plan lists.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FlagError, UserError
from . import prepared
from .loaders import _FORMATS, image_files

__all__ = ["DEFAULT_ENCODING", "PrepareOptions", "ShardTask", "Plan", "plan_shards", "scan_folder"]

DEFAULT_ENCODING = "raw"


@dataclass(frozen=True)
class PrepareOptions:
    """How images are stored: shorter side (or square) ``size``, ``encoding`` raw or jpeg (at ``quality``),
    up to ``shard_images`` images per shard."""

    size: int = 256
    mode: str = "shorter-side"
    encoding: str = DEFAULT_ENCODING
    quality: int = 90
    shard_images: int = 1024

    def __post_init__(self) -> None:
        if self.mode not in prepared.MODES:
            raise FlagError(f"--mode must be one of {', '.join(prepared.MODES)}, not {self.mode!r}")
        if self.encoding not in prepared.ENCODINGS:
            raise FlagError(f"--format must be one of {', '.join(prepared.ENCODINGS)}, not {self.encoding!r}")
        if not 1 <= self.size <= 65535:
            raise FlagError(f"--size must be between 1 and 65535, got {self.size}")
        if not 1 <= self.quality <= 100:
            raise FlagError(f"--quality must be between 1 and 100, got {self.quality}")
        if self.shard_images < 1:
            raise FlagError(f"--shard-images must be at least 1, got {self.shard_images}")

    def stored(self) -> dict[str, Any]:
        """What the manifest records (the JPEG quality only for jpeg shards)."""
        d = {"encoding": self.encoding, "size": self.size, "mode": self.mode}
        return {**d, "quality": self.quality} if self.encoding == "jpeg" else d


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its sources ``(path, label)`` in order, and the key that names this content."""

    split: str
    number: int
    files: tuple[tuple[str, int], ...]
    key: str
    path: Path  # the shard's final name
    record: Path  # its journal record
    archive: str | None = None  # the sources are members of this tar, file i's bytes at offset spans[2i]
    spans: Sequence[int] = ()  # (offset, size) of each, flat: an array of 16 bytes per image, not 2 objects

    @property
    def name(self) -> str:
        return f"{self.split}/{self.number:05d}.shard"

    def source(self, i: int) -> str | io.BytesIO:
        """The ``i``-th source: its file, or its bytes read from the archive (nothing is extracted)."""
        if self.archive is None:
            return self.files[i][0]
        offset, size = self.spans[2 * i], self.spans[2 * i + 1]
        with open(self.archive, "rb") as f:
            f.seek(offset)
            return _Member(f.read(size), self.files[i][0])


class _Member(io.BytesIO):
    """An archive member's bytes, named in messages (PIL's included) as a file would be."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __repr__(self) -> str:
        return repr(self.name)


@dataclass
class Plan:
    splits: dict[str, list[str]]  # split -> class names
    tasks: list[ShardTask]
    digest: str  # of every shard's key: equal digests, equal datasets
    words: dict[str, list[str]] = field(default_factory=dict)  # split -> each class's words, where known

    @property
    def images(self) -> int:
        return sum(len(t.files) for t in self.tasks)


def _source_splits(src: Path) -> dict[str, Path]:
    parts = {s: src / s for s in prepared.SPLITS if (src / s).is_dir()}
    return parts or {prepared.ALL: src}


def scan_folder(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and ``(path, label)`` of an ImageFolder, in the order :class:`ImageFolderDataset` reads it
    (no file is opened here: conversion verifies each file by decoding it)."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
    files = []
    for t, name in enumerate(classes):
        found = image_files(folder / name, within=folder)
        if not found:
            raise UserError(f"class folder {folder / name} has no image files ({_FORMATS})")
        files += [(p, t) for p in found]
    return classes, files


def plan_shards(src: str | os.PathLike, dst: str | os.PathLike, options: PrepareOptions) -> Plan:
    """Scan ``src`` (``src/train``, ``src/val``, ``src/test`` where present, else ``src`` itself) and cut each
    split into shards of ``options.shard_images`` files in sorted order."""
    src, dst = Path(src), Path(dst)
    splits: dict[str, list[str]] = {}
    tasks: list[ShardTask] = []
    stored = json.dumps(options.stored(), sort_keys=True)
    for split, folder in _source_splits(src).items():
        classes, files = scan_folder(folder)
        splits[split] = classes
        n = options.shard_images
        for number, start in enumerate(range(0, len(files), n)):
            chunk = files[start : start + n]
            h = hashlib.sha256(f"{prepared.VERSION}\n{stored}\n{split}\n{classes}\n".encode())
            for path, label in chunk:
                st = path.stat()
                h.update(f"{path.relative_to(folder)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            tasks.append(
                ShardTask(
                    split, number, tuple((str(p), t) for p, t in chunk), h.hexdigest(),
                    dst / split / f"{number:05d}.shard", dst / prepared.JOURNAL / f"{split}-{number:05d}.json",
                )
            )  # fmt: skip
    digest = hashlib.sha256("".join(t.key for t in tasks).encode()).hexdigest()
    return Plan(splits, tasks, digest)
