"""The prepared dataset: images down-sampled once (section 2 of the paper), stored in memory-mapped shards.

Layout of a prepared dataset ``DST``::

    DST/prepared.json          the manifest: format version, encoding, size, mode, and per split its class
                               names and shards (file, images, bytes, CRC-32 of the data); written last
    DST/<split>/00000.shard    shards of up to ``shard_images`` images each, in the source's sorted order
    DST/skipped.tsv            the unreadable source files and why (one per line)

A shard is one file: a 32-byte header (magic, version, image count, data offset), an index of
:data:`INDEX_DTYPE` records (offset, byte count, height, width, label of each image), then the image data,
page-aligned. ``raw`` shards hold uint8 pixels in (3, H, W) order (read by slicing a memory map: no decoding);
``jpeg`` shards hold JPEG files re-encoded from the resized images (about a tenth of the bytes, decoded by
TorchCodec with libjpeg-turbo, or on a CUDA device with nvJPEG).

Opening a split checks the manifest (its keys and types; every shard a file inside ``DST``) and every shard it
names (present, the recorded size, the header's count and data offset against the file, the index laying the
images end to end, each of the prepared size); the first read of each shard checks its data against the
manifest's CRC-32, and each JPEG's frame header is checked against the index before it is decoded. A missing,
truncated or damaged shard, or a manifest of an unknown version, is a :class:`~alexnet.errors.UserError`
naming the file. Nothing is read into memory; datasets larger than RAM
are paged in by the OS. :class:`PreparedDataset` is map-style, so any sampler
(``DistributedSampler`` included) and any number of DataLoader workers split it; each process opens its
own memory maps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchcodec.decoders import decode_jpeg
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from .loaders import Unreadable, stratified_split

__all__ = [
    "MANIFEST",
    "FORMAT",
    "VERSION",
    "ENCODINGS",
    "MODES",
    "INDEX_DTYPE",
    "is_prepared",
    "refuse_split_folder",
    "read_manifest",
    "downsample",
    "to_square",
    "ShardWriter",
    "PreparedDataset",
    "PreparedWarning",
    "make_datasets",
    "eval_split",
    "EncodedItems",
    "EncodedBatch",
    "collate_encoded",
    "DeviceDecodeLoader",
    "decodes_on",
    "make_loader",
    "verify",
]

MANIFEST = "prepared.json"
JOURNAL = ".prepare"  # the unfinished job's records; gone once the manifest is written
FORMAT = "alexnet-prepared"
VERSION = 1
ENCODINGS = ("raw", "jpeg")
MODES = ("shorter-side", "center-crop")
SPLITS = ("train", "val", "test")
ALL = "all"  # the split of a source folder without train/val/test parts

MAGIC = b"AXSHARD\0"
_HEADER = struct.Struct("<8sIIQQ")  # magic, version, images, data offset, reserved
HEADER_BYTES = 32
PAGE = 4096
# One record per image; offsets count from the data offset in the header.
INDEX_DTYPE = np.dtype([("offset", "<u8"), ("nbytes", "<u4"), ("height", "<u2"), ("width", "<u2"), ("label", "<u4")])


class DamagedShard(UserError):
    """A shard whose bytes are not what its manifest and index say (changed, cut, or forged)."""


class PreparedWarning(UserWarning):
    """A prepared dataset is used at another size than it was prepared at (each image is resized again)."""


def is_prepared(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a prepared dataset, finished (a manifest) or not (the job's records)."""
    root = Path(root)
    return (root / MANIFEST).is_file() or (root / JOURNAL).is_dir()


def refuse_split_folder(root: str | os.PathLike) -> None:
    """A split folder of a prepared dataset is no image folder: say which folder to pass instead."""
    root = Path(root)
    if is_prepared(root.parent) and root.is_dir() and any(root.glob("*.shard")):
        raise UserError(f"{root} is a split of the prepared dataset {root.parent}: pass {root.parent} instead")


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the prepared dataset ``root``, checked for its format and version."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        if (root / JOURNAL).is_dir():
            raise UserError(
                f"{root} is an unfinished prepared dataset (no {MANIFEST}): run the same `alexnet prepare` "
                "command again to finish it"
            )
        raise UserError(f"{root} is not a prepared dataset: {path} not found")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f'{path} is not a prepared-dataset manifest (no "format": "{FORMAT}")')
    if manifest.get("version") != VERSION:
        raise UserError(
            f"{path} is format version {manifest.get('version')}; this alexnet reads version {VERSION}: prepare "
            "the dataset again with this version (or use the alexnet that wrote it)"
        )
    if manifest.get("encoding") not in ENCODINGS:
        raise UserError(f"{path} names an unknown encoding {manifest.get('encoding')!r} (known: {ENCODINGS})")
    _check_manifest(manifest, path)
    return manifest


def _count(value: Any, most: float = float("inf")) -> bool:
    """A whole number in ``[0, most]`` (JSON's true and false are no counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most


def _check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Every key the readers use is there with its type, and every shard is a file inside the dataset's folder
    (a manifest naming ``../x`` or ``/dev/zero`` is refused before anything is opened)."""

    def damaged(what: str) -> UserError:
        return UserError(f"{path} is damaged: {what}; prepare the dataset again")

    if not _count(manifest.get("size"), 65535) or manifest["size"] < 1:
        raise damaged('"size" is missing or not a number of pixels')
    if manifest.get("mode") not in MODES:
        raise damaged(f'"mode" is {manifest.get("mode")!r}, not one of {", ".join(MODES)}')
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise damaged('"splits" is missing or not a table of splits')
    top = path.parent.resolve()
    for name, split in splits.items():
        where = f"splits.{name}"
        if not isinstance(split, dict):
            raise damaged(f"{where} is not a table")
        classes = split.get("classes")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise damaged(f"{where}.classes is missing or not a list of names")
        if not _count(split.get("images")):
            raise damaged(f"{where}.images is missing or not a count")
        shards = split.get("shards")
        if not isinstance(shards, list):
            raise damaged(f"{where}.shards is missing or not a list")
        for k, shard in enumerate(shards):
            at = f"{where}.shards[{k}]"
            if not isinstance(shard, dict):
                raise damaged(f"{at} is not a table")
            if not isinstance(shard.get("file"), str) or not shard["file"]:
                raise damaged(f"{at}.file is missing or not a file name")
            for key, most in (("images", float("inf")), ("bytes", float("inf")), ("crc32", 0xFFFFFFFF)):
                if not _count(shard.get(key), most):
                    raise damaged(f"{at}.{key} is missing or not a count")
            # Resolved, links included: only the dataset's own files are read (and their sizes told).
            if not (path.parent / shard["file"]).resolve().is_relative_to(top):
                raise UserError(
                    f"{path} names a shard outside the dataset folder {path.parent}: {shard['file']!r}; a prepared "
                    "dataset reads only its own files"
                )


# --------------------------------------------------------------------------------------------
# Resizing: the same tensor ops as the image-folder pipeline (transforms.decode_transform)
# --------------------------------------------------------------------------------------------
def downsample(image: Tensor, size: int, mode: str) -> Tensor:
    """uint8 (3, H, W) -> shorter side ``size`` (antialiased bilinear), and for ``center-crop`` the central
    ``size`` x ``size`` square (the paper's 256x256 images)."""
    if min(image.shape[-2:]) != size:
        image = TF.resize(image, size, antialias=True)
    if mode == "center-crop":
        image = TF.center_crop(image, [size, size])
    return image


def to_square(image: Tensor, size: int) -> Tensor:
    """A stored image -> uint8 (3, size, size): resized only if its shorter side is not ``size``, then the
    central square (a view when no resize is needed)."""
    if min(image.shape[-2:]) != size:
        image = TF.resize(image, size, antialias=True)
    h, w = image.shape[-2:]
    if h == size and w == size:
        return image
    # The window TF.center_crop takes, as a view instead of a copy.
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[..., top : top + size, left : left + size]


# --------------------------------------------------------------------------------------------
# Writing one shard
# --------------------------------------------------------------------------------------------
def _data_offset(capacity: int) -> int:
    end = HEADER_BYTES + capacity * INDEX_DTYPE.itemsize
    return (end + PAGE - 1) // PAGE * PAGE


class ShardWriter:
    """Streams up to ``capacity`` images into ``path`` (index space reserved up front, header last).

    ``add(data, height, width, label)`` appends one encoded image; ``close()`` writes the header and index,
    fsyncs, and returns ``(images, bytes, crc32 of the data)``. The caller renames the finished file into
    place, so a reader never sees a half-written shard under its final name.
    """

    def __init__(self, path: str | os.PathLike, capacity: int) -> None:
        self.path = Path(path)
        self.index = np.zeros(capacity, dtype=INDEX_DTYPE)
        self.count = 0
        self.position = 0
        self.crc = 0
        self.data_offset = _data_offset(capacity)
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self.file.seek(self.data_offset)

    def add(self, data: bytes | memoryview, height: int, width: int, label: int) -> None:
        n = len(data)
        self.index[self.count] = (self.position, n, height, width, label)
        self.file.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.position += n
        self.count += 1

    def close(self) -> tuple[int, int, int]:
        f = self.file
        f.seek(0)
        f.write(_HEADER.pack(MAGIC, VERSION, self.count, self.data_offset, 0))
        f.write(self.index.tobytes())
        f.seek(0, os.SEEK_END)
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
        f.close()
        return self.count, size, self.crc

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def _read_index(
    path: Path, entry: dict[str, Any], classes: int, encoding: str, size: int, mode: str
) -> tuple[int, np.ndarray]:
    """(data offset, index) of the shard at ``path``, checked against its manifest ``entry`` and the dataset's
    ``encoding``, ``size`` and ``mode``: the index lays the images end to end through the data, each of the
    prepared size (and raw ones of exactly 3 x height x width bytes). Reads the header and index only."""

    def damaged(what: str) -> DamagedShard:
        return DamagedShard(f"shard {path} is damaged: {what}; prepare the dataset again")

    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"missing shard {path}: the prepared dataset is incomplete; prepare it again") from None
    except OSError as e:
        raise UserError(f"cannot read shard {path}: {e.strerror or e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path} is not a shard of a prepared dataset (not a file)")
    nbytes = st.st_size
    if nbytes != entry["bytes"]:
        what = "truncated" if nbytes < entry["bytes"] else "changed"
        raise UserError(
            f"{what} shard {path}: {nbytes} bytes, the manifest says {entry['bytes']}; prepare the dataset again"
        )
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES:
            raise damaged("it is shorter than a shard's header")
        magic, version, count, data_offset, _ = _HEADER.unpack(head)
        if magic != MAGIC:
            raise UserError(f"{path} is not a shard of a prepared dataset (bad magic bytes)")
        if version != VERSION:
            raise UserError(f"shard {path} is format version {version}; this alexnet reads version {VERSION}")
        if count != entry["images"]:
            raise UserError(f"shard {path} holds {count} images, the manifest says {entry['images']}")
        index_end = HEADER_BYTES + count * INDEX_DTYPE.itemsize
        if index_end > nbytes:  # checked before the index is read: a forged count would ask for gigabytes
            raise damaged(f"its header counts {count} images, more than its {nbytes} bytes can index")
        index = np.frombuffer(f.read(index_end - HEADER_BYTES), dtype=INDEX_DTYPE)
    if count == 0:
        return data_offset, index
    if data_offset % PAGE or not index_end <= data_offset <= nbytes:
        raise damaged(f"its header's data offset {data_offset} is not a page after its index")
    ends = np.cumsum(index["nbytes"], dtype=np.int64)
    if (index["offset"] != ends - index["nbytes"]).any() or int(ends[-1]) != nbytes - data_offset:
        raise damaged("its index does not lay out its data (each image after the last, to the end of the file)")
    h, w = index["height"].astype(np.int64), index["width"].astype(np.int64)
    wrong = (np.minimum(h, w) != size) | ((h != w) if mode == "center-crop" else False)
    if encoding == "raw":
        wrong |= index["nbytes"] != 3 * h * w
    if wrong.any():
        j = int(np.flatnonzero(wrong)[0])
        raise damaged(
            f"image {j} is {h[j]}x{w[j]} in its index, in {index['nbytes'][j]} bytes (the dataset is {encoding} "
            f"{mode} {size})"
        )
    if int(index["label"].max()) >= classes:
        raise damaged(f"a label is not one of the {classes} classes")
    return data_offset, index


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # the JPEG frame headers (C4, C8, CC are other markers)


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(height, width) in a JPEG file's frame header, read by walking its markers (nothing is decoded); ``None``
    for a file without one before its image data. Opening it with PIL would add a noticeable share to every
    decode it guards; walking the few markers before the frame costs next to nothing."""
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    at, end = 2, len(data)
    while at + 9 <= end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _SOF:
            return (data[at + 5] << 8) | data[at + 6], (data[at + 7] << 8) | data[at + 8]
        if marker == 0xDA:  # the image data start: no frame header came first
            return None
        at += 2 + ((data[at + 2] << 8) | data[at + 3])
    return None


# --------------------------------------------------------------------------------------------
# Reading: a map-style dataset over one split
# --------------------------------------------------------------------------------------------
class PreparedDataset(Dataset):
    """One split of a prepared dataset; items are ``(uint8 (3, resize, resize) tensor, target)``.

    Each item is the stored image's central ``resize`` x ``resize`` square; a dataset prepared at another
    size is resized again when an item is read (a :class:`PreparedWarning` says so once). ``target_map``
    renumbers the stored labels (evaluation maps a split's classes by name onto a model's).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        resize: int | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        manifest = manifest if manifest is not None else read_manifest(self.root)
        splits = manifest["splits"]
        if split not in splits:
            raise UserError(f"{self.root} has no {split!r} split (it has: {', '.join(splits)})")
        self.split = split
        self.encoding: str = manifest["encoding"]
        self.size: int = manifest["size"]
        self.mode: str = manifest["mode"]
        self.resize = resize or self.size
        entry = splits[split]
        self.classes: list[str] = list(entry["classes"])
        self.words: list[str] = [str(w) for w in entry.get("words", ())]  # each class's words, where known
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.shard_files = [self.root / s["file"] for s in entry["shards"]]
        self._crc = [int(s["crc32"]) for s in entry["shards"]]
        self._start: list[int] = []  # each shard's data offset
        shard, local, offset, nbytes, height, width, label = [], [], [], [], [], [], []
        for k, (path, s) in enumerate(zip(self.shard_files, entry["shards"], strict=True)):
            start, index = _read_index(path, s, len(self.classes), self.encoding, self.size, self.mode)
            self._start.append(start)
            shard.append(np.full(len(index), k, dtype=np.int32))
            local.append(np.arange(len(index), dtype=np.int32))
            offset.append(index["offset"].astype(np.int64) + start)
            nbytes.append(index["nbytes"].astype(np.int64))
            height.append(index["height"].astype(np.int32))
            width.append(index["width"].astype(np.int32))
            label.append(index["label"].astype(np.int64))
        cat = np.concatenate
        self._shard = cat(shard) if shard else np.zeros(0, np.int32)
        self._local = cat(local) if local else np.zeros(0, np.int32)  # the image's place in its shard
        self._offset = cat(offset) if offset else np.zeros(0, np.int64)
        self._nbytes = cat(nbytes) if nbytes else np.zeros(0, np.int64)
        self._height = cat(height) if height else np.zeros(0, np.int32)
        self._width = cat(width) if width else np.zeros(0, np.int32)
        self._label = cat(label) if label else np.zeros(0, np.int64)
        self.target_map: np.ndarray | None = None
        self.skipped: list[tuple[Path, str]] = []  # unreadable sources were left out (and listed) when prepared
        self._maps: dict[int, np.ndarray] = {}
        self._pid = os.getpid()
        # Which shards' data matched their CRC-32, in shared memory: each shard is checked once, not again by
        # each loader worker (forked anew every epoch) nor by each subset.
        self._checked = torch.zeros(len(self.shard_files), dtype=torch.bool).share_memory_()
        self._confirmed: set[int] = set()  # the shards this process has seen checked (a read's fast path)
        self._deferred = False
        if self.resize != self.size:
            warnings.warn(
                f"{self.root} was prepared at {self.size} px and is read at {self.resize} px: every image is "
                f"resized again as it is loaded (slower); `alexnet prepare --size {self.resize}` matches it",
                PreparedWarning,
                stacklevel=2,
            )

    # ---- the sample table
    def __len__(self) -> int:
        return len(self._label)

    @property
    def targets(self) -> list[int]:
        labels = self._label if self.target_map is None else self.target_map[self._label]
        return labels.tolist()

    def subset(self, indices: Sequence[int]) -> PreparedDataset:
        """The same split restricted to ``indices`` (in that order); shares the shard files."""
        idx = np.asarray(indices, dtype=np.int64)
        sub = object.__new__(PreparedDataset)
        sub.__dict__.update(self.__dict__)
        for name in ("_shard", "_local", "_offset", "_nbytes", "_height", "_width", "_label"):
            setattr(sub, name, getattr(self, name)[idx])
        sub._maps, sub._pid, sub._confirmed, sub._deferred = {}, os.getpid(), set(), False
        return sub

    # ---- reading
    def _map(self, k: int) -> np.ndarray:
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own maps
            self._maps, self._pid, self._confirmed = {}, os.getpid(), set()
        m = self._maps.get(k)
        if m is None:
            # Copy-on-write: writable for torch.from_numpy without a warning, never written, never copied.
            m = self._maps[k] = np.memmap(self.shard_files[k], dtype=np.uint8, mode="c")
        if k not in self._confirmed and not self._deferred:
            if not self._checked[k]:
                with open(self.shard_files[k], "rb") as f:
                    # One process checks a shard; the others wait for its verdict. A file system without locks
                    # (some NFS and Lustre mounts) refuses: then each process checks it itself.
                    with contextlib.suppress(OSError):
                        fcntl.flock(f, fcntl.LOCK_EX)
                    if not self._checked[k]:
                        self.check(k, m)
            self._confirmed.add(k)
        return m

    @contextlib.contextmanager
    def checksums_deferred(self) -> Iterator[None]:
        """Reads inside leave each shard's CRC check to its first read outside: a sample of a thousand images
        (the PCA's) from a large dataset touches most of its shards, and would otherwise read all of them."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def check(self, k: int, m: np.ndarray | None = None) -> None:
        """Raise :class:`DamagedShard` unless shard ``k``'s data match the manifest's CRC-32 (the first read of
        each shard does this: one pass over its bytes at zlib's speed)."""
        m = np.memmap(self.shard_files[k], dtype=np.uint8, mode="r") if m is None else m
        if zlib.crc32(m[self._start[k] :]) != self._crc[k]:
            raise DamagedShard(
                f"shard {self.shard_files[k]} is damaged: its data do not match the manifest's CRC-32; prepare the "
                "dataset again"
            )
        self._checked[k] = True

    def _damaged(self, i: int, what: str) -> DamagedShard:
        return DamagedShard(
            f"image {self._local[i]} of shard {self.shard_files[self._shard[i]]} is damaged: {what}; prepare the "
            "dataset again"
        )

    def data(self, i: int) -> Tensor:
        """The stored bytes of item ``i`` (raw pixels or a JPEG file), a 1-D uint8 view of the shard; a JPEG
        file whose frame header does not give the index's height and width is refused here, undecoded."""
        start = int(self._offset[i])
        data = self._map(int(self._shard[i]))[start : start + int(self._nbytes[i])]
        if self.encoding == "jpeg":
            size, expected = jpeg_size(memoryview(data)), (int(self._height[i]), int(self._width[i]))
            if size is None:
                raise self._damaged(i, "it is not a JPEG file")
            if size != expected:  # a decompression bomb, or a swapped image
                raise self._damaged(
                    i, f"its JPEG header says {size[0]}x{size[1]}, its index {expected[0]}x{expected[1]}"
                )
        return torch.from_numpy(data)

    def image(self, i: int) -> Tensor:
        """Item ``i`` as stored: uint8 (3, height, width)."""
        data = self.data(i)
        if self.encoding == "raw":
            return data.view(3, int(self._height[i]), int(self._width[i]))
        try:
            return decode_jpeg(data)
        except RuntimeError as e:  # TorchCodec's error for any libjpeg failure; its last part says which
            raise self._damaged(i, f"it cannot be decoded ({str(e).splitlines()[0].rsplit(', ', 1)[-1]})") from e

    def target(self, i: int) -> int:
        t = int(self._label[i])
        return int(self.target_map[t]) if self.target_map is not None else t

    def __getitem__(self, i: int) -> tuple[Tensor, int] | Unreadable:
        try:
            image = self.image(i)
        except DamagedShard as e:
            if get_worker_info() is not None:  # raised in a worker it would arrive wrapped in its traceback
                return Unreadable(str(e))
            raise
        return to_square(image, self.resize), self.target(i)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps are opened again by each process, never pickled
        return state

    def __repr__(self) -> str:
        return (
            f"PreparedDataset({self.root}, {self.split!r}, {len(self)} images, {len(self.classes)} classes, "
            f"{self.encoding} {self.mode} {self.size}, read at {self.resize})"
        )


def make_datasets(
    root: str | os.PathLike,
    *,
    resize: int,
    val_split: float | None = None,
    seed: int = 0,
) -> tuple[PreparedDataset, PreparedDataset | None, list[str]]:
    """``(train_ds, val_ds, classes)`` of a prepared dataset, as :func:`alexnet.data.loaders.make_datasets` gives for
    its source folder: the ``train`` and ``val`` splits, or the one split of a folder without them, held out
    by ``val_split`` with the same seeded, stratified split (so the same images)."""
    root = Path(root)
    manifest = read_manifest(root)
    splits = manifest["splits"]
    if val_split is not None and not 0 < val_split < 1:
        raise UserError(f"--val-split must be between 0 and 1, got {val_split}")
    name = "train" if "train" in splits else ALL if ALL in splits else None
    if name is None:
        raise UserError(f"{root} has no training split (it has: {', '.join(splits)})")
    common = {"resize": resize, "manifest": manifest}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PreparedWarning)
        full = PreparedDataset(root, name, **common)
        val_ds = PreparedDataset(root, "val", **common) if name == "train" and "val" in splits else None
    for w in caught[:1]:  # one note for the whole dataset, not one per split
        warnings.warn(w.message, PreparedWarning, stacklevel=2)
    classes = full.classes
    if val_ds is not None:
        if val_split is not None:
            raise UserError(f"{root} already has a val split; --val-split is for a dataset without one")
        if val_ds.classes != classes:
            raise UserError(f"{root}: the train and val splits have different classes")
        return full, val_ds, classes
    if val_split is None:
        return full, None, classes
    train_idx, val_idx = stratified_split(full.targets, (1 - val_split, val_split), seed=seed, names=classes)
    return full.subset(train_idx), full.subset(val_idx), classes


def eval_split(root: str | os.PathLike) -> str:
    """The split evaluation reads: ``test``, else ``val``, else the one split of a folder without parts."""
    splits = read_manifest(root)["splits"]
    for name in ("test", "val", ALL):
        if name in splits:
            return name
    raise UserError(f"{root} has no test, val or single split to evaluate on (it has: {', '.join(splits)})")


# --------------------------------------------------------------------------------------------
# Loaders; decoding JPEG shards on the training device
# --------------------------------------------------------------------------------------------
class EncodedItems(Dataset):
    """The items of a jpeg :class:`PreparedDataset` as ``(1-D uint8 tensor of the JPEG file, target)``."""

    def __init__(self, dataset: PreparedDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | Unreadable:
        try:
            return self.dataset.data(i), self.dataset.target(i)
        except DamagedShard as e:
            if get_worker_info() is not None:  # raised in a worker it would arrive wrapped in its traceback
                return Unreadable(str(e))
            raise


class EncodedBatch(NamedTuple):
    data: list[Tensor]  # one 1-D uint8 JPEG file per image
    targets: Tensor
    skipped: int
    error: str | None = None  # why a shard could not be read


def collate_encoded(batch: Sequence[tuple[Tensor, int] | Unreadable]) -> EncodedBatch:
    errors = [b for b in batch if isinstance(b, Unreadable)]
    items = [b for b in batch if not isinstance(b, Unreadable)]
    targets = torch.tensor([t for _, t in items], dtype=torch.long)
    return EncodedBatch([d for d, _ in items], targets, 0, str(errors[0]) if errors else None)


@dataclass
class DeviceDecodeLoader:
    """Wraps a loader of :class:`EncodedBatch` es: decodes each batch's JPEG files in one call on ``device``
    (nvJPEG on CUDA) and yields :class:`~alexnet.data.loaders.Batch` es of uint8 (N, 3, resize, resize) on it."""

    loader: DataLoader
    device: torch.device
    resize: int

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        from .loaders import Batch

        for batch in self.loader:
            if batch.error is not None:
                yield Batch(torch.empty(0), torch.empty(0, dtype=torch.long), batch.skipped, batch.error)
                continue
            try:
                images = decode_jpeg(batch.data, device=self.device)
            except RuntimeError as e:  # the whole batch's error: the files' headers were checked already
                reason = str(e).splitlines()[0].rsplit(", ", 1)[-1]
                raise UserError(
                    f"a JPEG image of {self.dataset.dataset.root} cannot be decoded on {self.device} ({reason}): the "
                    "dataset is damaged; prepare it again"
                ) from e
            squares = torch.stack([to_square(x, self.resize) for x in images])
            yield Batch(squares, batch.targets, batch.skipped)


def decodes_on(dataset: Dataset, device: torch.device | str | None) -> bool:
    """Whether batches of ``dataset`` are decoded on ``device``: JPEG shards on a CUDA device (nvJPEG decodes
    a whole batch at once there, instead of the loader workers decoding image by image)."""
    return (
        isinstance(dataset, PreparedDataset)
        and dataset.encoding == "jpeg"
        and device is not None
        and torch.device(device).type == "cuda"
    )


def make_loader(
    dataset: PreparedDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    workers: int,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> DataLoader | DeviceDecodeLoader:
    """:func:`alexnet.data.loaders.make_loader` over a prepared split (uint8 batches, the same :class:`Batch`
    contract); JPEG shards on a CUDA ``device`` are decoded there, a batch at a time."""
    from .loaders import make_loader as folder_loader

    if not decodes_on(dataset, device):
        return folder_loader(dataset, batch_size, shuffle=shuffle, workers=workers, **kwargs)
    loader = folder_loader(
        EncodedItems(dataset), batch_size, shuffle=shuffle, workers=workers, collate_fn=collate_encoded, **kwargs
    )
    return DeviceDecodeLoader(loader, torch.device(device), dataset.resize)


def verify(root: str | os.PathLike, splits: Iterable[str] | None = None) -> None:
    """Check every shard of ``root`` now, in full, against the manifest's CRC-32 (reading checks each shard
    the first time it is read)."""
    root = Path(root)
    manifest = read_manifest(root)
    for name in splits or manifest["splits"]:
        ds = PreparedDataset(root, name, manifest=manifest)
        for k in range(len(ds.shard_files)):
            ds.check(k)
