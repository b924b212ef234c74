"""Datasets, loaders, the training set's PCA, and the bundled digits dataset.

Input is an ImageFolder layout: ``DATA/train/<class>/*`` and ``DATA/val/<class>/*``, or one
``DATA/<class>/*`` folder split by a seeded, stratified ``val_split``. Any image PIL can read is converted
to RGB. Unreadable files are skipped with a :class:`DataWarning` naming them (at scan time when PIL cannot
identify them, at load time when decoding fails) and counted; ``strict`` turns them into a
:class:`~alexnet.models.registry.UserError`.

The transforms live in :mod:`alexnet.data.transforms` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS as TORCHVISION_EXTENSIONS

from ..errors import UserError
from ..files import atomic_write_bytes
from .transforms import IMAGENET_PCA, PCA, batch_augment, decode_transform

__all__ = [
    "DataWarning",
    "IMG_EXTENSIONS",
    "RASTER_FORMATS",
    "MAX_ASPECT",
    "ImageShapeError",
    "check_shape",
    "load_rgb",
    "image_files",
    "ImageFolderDataset",
    "stratified_split",
    "make_datasets",
    "Batch",
    "collate",
    "make_loader",
    "compute_pca",
    "load_or_compute_pca",
    # re-exported from alexnet.data.transforms
    "PCA",
    "IMAGENET_PCA",
    "decode_transform",
    "batch_augment",
]


class DataWarning(UserWarning):
    """An image was skipped (unreadable at scan or load time)."""


class ImageShapeError(ValueError):
    """An image refused for its shape before decoding: resized, it would be far too large."""


# What PIL raises on a bad file: UnidentifiedImageError and truncation are OSErrors; broken chunks raise
# SyntaxError; odd modes ValueError; oversized images DecompressionBombError; ImageShapeError is a ValueError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# The formats PIL decodes itself, from pixels. Left out: EPS (PIL runs Ghostscript on it), WMF/EMF, BUFR,
# GRIB, HDF5 (they need a handler from outside), MPEG (identified, never decoded), FITS (scientific data).
_RASTER = (
    "AVIF", "BLP", "BMP", "CUR", "DCX", "DDS", "DIB", "FLI", "FTEX", "GBR", "GIF", "ICNS", "ICO", "IM", "IMT",
    "IPTC", "JPEG", "JPEG2000", "MCIDAS", "MSP", "PCD", "PCX", "PIXAR", "PNG", "PPM", "PSD", "QOI", "SGI",
    "SPIDER", "SUN", "TGA", "TIFF", "WEBP", "XBM", "XPM", "XVTHUMB",
)  # fmt: skip
Image.init()
# Every Image.open names them: content in another format is refused whatever the file is called.
RASTER_FORMATS = tuple(f for f in _RASTER if f in Image.OPEN)

# Longer side over shorter: the shorter side is scaled to the resize size and the longer follows, so a
# 1x600,000 strip (2 kB of PNG) would become 256 x 153.6 million pixels; wide panoramas stay well under it.
MAX_ASPECT = 100


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------------------------
# Reading one image
# --------------------------------------------------------------------------------------------
def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    # PIL's own I;16 / I / F -> L conversion clips at 255 instead of rescaling, which turns 16-bit images
    # white. 16-bit data are scaled by 255/65535; float data in [0, 1] by 255.
    a = np.asarray(im, dtype=np.float64)
    peak = a.max(initial=0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and peak > 255):
        a = a / 257.0
    elif im.mode == "F" and peak <= 1.0:
        a = a * 255.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def check_shape(width: int, height: int) -> None:
    """Raise :class:`ImageShapeError` for an image whose longer side is over :data:`MAX_ASPECT` times its
    shorter (or that has no pixels)."""
    if min(width, height) < 1:
        raise ImageShapeError(f"an image of {width}x{height} pixels")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageShapeError(
            f"{width}x{height} pixels is over the limit of {MAX_ASPECT}:1 between its sides (resized, its longer "
            "side would be too large)"
        )


def load_rgb(path: str | os.PathLike | IO[bytes]) -> Image.Image:
    """Decode ``path`` (a file name or a binary file) to an RGB PIL image (EXIF orientation applied, as a
    viewer shows it).

    Only :data:`RASTER_FORMATS` are decoded, and only shapes :func:`check_shape` accepts (checked from the
    header, before decoding). Grayscale, palette, CMYK and 16-bit images are converted; images with
    transparency (RGBA, LA, palette with a transparent colour) are composited on white. Raises what PIL
    raises for unreadable files.
    """
    with Image.open(path, formats=RASTER_FORMATS) as im:
        check_shape(*im.size)
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I") or im.mode == "F":
            im = _high_bit_depth_to_l(im)
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return im.convert("RGB")


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------
def _image_extensions() -> tuple[str, ...]:
    """torchvision's list plus the names of every format in :data:`RASTER_FORMATS`: the promise is "any
    image PIL reads" (formats PIL only recognises, or decodes with an outside program, are left out)."""
    opened = {ext for ext, fmt in Image.registered_extensions().items() if fmt in RASTER_FORMATS}
    return tuple(sorted(set(TORCHVISION_EXTENSIONS) | opened))


IMG_EXTENSIONS = _image_extensions()
_FORMATS = "JPEG, PNG, GIF, TIFF, WebP, BMP or another format PIL reads"


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def image_files(folder: Path, *, within: Path | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted, no hidden ones), following links like torchvision.

    A linked directory is followed once: never a directory already walked (a link loop, or two links to
    the same place), never an ancestor of ``folder``, and never another part of ``within`` (the dataset
    root: a link from one class folder into another would relabel its images). Each skipped link gets a
    :class:`DataWarning` naming it.
    """
    folder = Path(folder)
    top = folder.resolve()
    root = within.resolve() if within is not None else None
    seen = {top}
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            path = Path(dirpath) / d
            real = path.resolve()
            reason = None
            if real in seen:
                reason = "a folder already read (a link loop or a second link to it)"
            elif real in top.parents or real == top:
                reason = f"a parent of {folder}"
            elif root is not None and real.is_relative_to(root) and not real.is_relative_to(top):
                reason = f"another part of {within}"
            if reason is not None:
                message = f"not following the link {path} -> {real}: it leads to {reason}"
                warnings.warn(message, DataWarning, stacklevel=2)
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        found += [Path(dirpath) / f for f in sorted(filenames) if _is_image_file(f)]
    return found


def _check_image(path: Path) -> str | None:
    """``None`` if PIL can identify and verify ``path`` (headers and checksums, no full decode)."""
    try:
        with Image.open(path, formats=RASTER_FORMATS) as im:
            check_shape(*im.size)
            im.verify()
    except DECODE_ERRORS as e:
        return _reason(e)
    return None


def _check_all(paths: list[Path]) -> list[str | None]:
    if len(paths) < 64:
        return [_check_image(p) for p in paths]
    # Opening files is I/O bound: threads overlap the reads (map keeps the order).
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(_check_image, paths, chunksize=64))


def _unreadable_error(skipped: list[tuple[Path, str]]) -> UserError:
    path, reason = skipped[0]
    more = f" (and {len(skipped) - 1} more unreadable files)" if len(skipped) > 1 else ""
    return UserError(f"unreadable image {path}: {reason}{more}")


class ImageFolderDataset(Dataset):
    """Images in ``root/<class>/**/<image>``, classes in sorted order; items are ``(transform(image), target)``.

    The scan keeps files with an image extension (torchvision's list, any case), ignores hidden files and
    folders, and checks each with PIL's ``verify`` (no full decode). Files that fail are recorded in
    ``skipped`` as ``(path, reason)`` and warned about, or raise :class:`UserError` with ``strict``.

    ``__getitem__`` returns ``None`` for a file that fails to decode later (warning once per file, or raising
    with ``strict``); :func:`collate` drops and counts those.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        strict: bool = False,
        verify: bool = True,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data folder not found: {root}")
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise UserError(f"no class folders in {root}: expected {root}/<class>/<image files>")
        files = [(p, t) for t, name in enumerate(classes) for p in image_files(root / name, within=root)]
        if not files:
            raise UserError(f"no images in {root}: its class folders hold no image files ({_FORMATS})")
        reasons = _check_all([p for p, _ in files]) if verify else [None] * len(files)
        skipped = [(p, r) for (p, _), r in zip(files, reasons, strict=True) if r is not None]
        samples = [pt for pt, r in zip(files, reasons, strict=True) if r is None]
        if skipped and strict:
            raise _unreadable_error(skipped)
        if not samples:
            raise UserError(f"no readable images in {root}: all {len(skipped)} image files are unreadable")
        found = np.bincount([t for _, t in files], minlength=len(classes))
        readable = np.bincount([t for _, t in samples], minlength=len(classes))
        if (readable == 0).any():
            first = int(np.flatnonzero(readable == 0)[0])
            what = "no readable images" if found[first] else f"no image files ({_FORMATS})"
            others = int((readable == 0).sum()) - 1
            raise UserError(
                f"class folder {root / classes[first]} has {what}" + (f" (nor do {others} more)" if others else "")
            )
        for path, reason in skipped:
            warnings.warn(f"skipping unreadable image {path}: {reason}", DataWarning, stacklevel=2)
        self.root: Path | None = root
        self._init(classes, samples, transform, strict)
        self.skipped = skipped

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[tuple[str | os.PathLike, int]],
        classes: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        strict: bool = False,
    ) -> ImageFolderDataset:
        """A dataset over explicit ``(path, target)`` pairs (no scan; ``skipped`` starts empty)."""
        ds = cls.__new__(cls)
        ds.root = None
        ds._init(list(classes), [(Path(p), int(t)) for p, t in samples], transform, strict)
        ds.skipped = []
        return ds

    def _init(self, classes: list[str], samples: list[tuple[Path, int]], transform: Any, strict: bool) -> None:
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.samples = samples
        self.transform = transform
        self.strict = strict
        self._warned: set[Path] = set()  # per process: each DataLoader worker warns on its own

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        try:
            image = load_rgb(path)
        except DECODE_ERRORS as e:
            if self.strict:
                message = f"unreadable image {path}: {_reason(e)}"
                if get_worker_info() is not None:  # raised in a worker it would arrive wrapped in its traceback
                    return Unreadable(message)
                raise UserError(message) from e
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(f"skipping unreadable image {path}: {_reason(e)}", DataWarning, stacklevel=2)
            return None
        return (self.transform(image) if self.transform is not None else image), target

    def __repr__(self) -> str:
        where = self.root if self.root is not None else "explicit samples"
        return f"{type(self).__name__}({where}, {len(self)} images, {len(self.classes)} classes)"


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def stratified_split(
    targets: Sequence[int], fractions: Sequence[float], *, seed: int = 0, names: Sequence[str] | None = None
) -> list[list[int]]:
    """Split indices class by class into ``len(fractions)`` parts; part 0 takes what the others leave.

    Parts after the first get ``round(fraction * n)`` of each class's ``n`` images, at least one when the
    fraction is positive and ``n >= 2``; part 0 always keeps at least one. Each class is shuffled by its own
    generator, seeded by ``seed`` and the class name, so adding images to one class leaves the others' split
    unchanged. Indices come back sorted.
    """
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    parts: list[list[int]] = [[] for _ in fractions]
    for t, idx in sorted(by_class.items()):
        n = len(idx)
        counts = [max(int(f * n + 0.5), 1 if f > 0 and n >= 2 else 0) for f in fractions[1:]]
        while sum(counts) > n - 1 and any(counts):  # part 0 keeps at least one image
            counts[int(np.argmax(counts))] -= 1
        key = zlib.crc32((names[t] if names is not None else str(t)).encode())
        order = np.random.default_rng([seed, key]).permutation(n)
        start = 0
        for part, count in zip(parts[1:], counts, strict=True):
            part += [idx[j] for j in order[start : start + count]]
            start += count
        parts[0] += [idx[j] for j in order[start:]]
    return [sorted(p) for p in parts]


def make_datasets(
    root: str | os.PathLike,
    *,
    val_split: float | None = None,
    seed: int = 0,
    strict: bool = False,
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    split_names: tuple[str, str] = ("train", "val"),
) -> tuple[ImageFolderDataset, ImageFolderDataset | None, list[str]]:
    """``(train_ds, val_ds, classes)`` from ``root``.

    ``root/train`` (and ``root/val``) when present; otherwise ``root`` itself is the class folder set. Without
    a validation folder, ``val_split`` holds out that fraction of every class (seeded, stratified); without
    either, ``val_ds`` is ``None``. Files skipped at scan time are all reported on ``train_ds.skipped`` (and
    ``val_ds.skipped`` for a separate validation folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    if val_split is not None and not 0 < val_split < 1:
        raise UserError(f"--val-split must be between 0 and 1, got {val_split}")
    train_name, val_name = split_names
    train_dir = root / train_name if (root / train_name).is_dir() else root
    val_dir = root / val_name if train_dir != root and (root / val_name).is_dir() else None

    full = ImageFolderDataset(train_dir, train_transform, strict=strict)
    classes = full.classes
    if val_dir is not None:
        if val_split is not None:
            raise UserError(f"{root} already has a {val_name}/ folder; --val-split is for a folder without one")
        val_ds = ImageFolderDataset(val_dir, eval_transform, strict=strict)
        if val_ds.classes != classes:
            only_train = sorted(set(classes) - set(val_ds.classes))
            only_val = sorted(set(val_ds.classes) - set(classes))
            raise UserError(
                f"{train_dir} and {val_dir} have different class folders: only in {train_name}: "
                f"{only_train[:5] or 'none'}, only in {val_name}: {only_val[:5] or 'none'}"
            )
        return full, val_ds, classes
    if val_split is None:
        return full, None, classes
    train_idx, val_idx = stratified_split(full.targets, (1 - val_split, val_split), seed=seed, names=classes)
    train_ds = ImageFolderDataset.from_samples(
        [full.samples[i] for i in train_idx], classes, train_transform, strict=strict
    )
    val_ds = ImageFolderDataset.from_samples([full.samples[i] for i in val_idx], classes, eval_transform, strict=strict)
    train_ds.root, val_ds.root = train_dir, train_dir
    train_ds.skipped = full.skipped
    return train_ds, val_ds, classes


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
class Unreadable(str):
    """What a worker returns for an unreadable file under ``strict``: the error message, raised as a
    :class:`UserError` in the main process (see :func:`collate`, :class:`Batch`)."""


class Batch(NamedTuple):
    images: Tensor
    targets: Tensor  # int64
    skipped: int  # samples of this batch that failed to decode (dropped)
    error: str | None = None  # under strict: why a file could not be read


def collate(batch: Sequence[tuple[Tensor, int] | Unreadable | None]) -> Batch:
    """Stack the readable samples; count the ``None`` ones (files that failed to decode) in ``skipped``."""
    errors = [b for b in batch if isinstance(b, Unreadable)]
    items = [b for b in batch if b is not None and not isinstance(b, Unreadable)]
    skipped = len(batch) - len(items)
    error = str(errors[0]) if errors else None
    if not items:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped, error)
    images = torch.stack([torch.as_tensor(x).as_subclass(Tensor) for x, _ in items])
    return Batch(images, torch.tensor([t for _, t in items], dtype=torch.long), skipped, error)


def make_loader(
    ds: Dataset,
    batch_size: int,
    *,
    workers: int,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    seed: int = 0,
    pin_memory: bool | None = None,
    collate_fn: Callable[[Sequence[Any]], Any] = collate,
) -> DataLoader:
    """A DataLoader of :class:`Batch` es (or of what ``collate_fn`` makes): in ``sampler``'s order if given
    (training uses a seeded shard of each epoch), else shuffled by a generator seeded with ``seed``, or in
    order.

    Memory is pinned only when CUDA is available (``pin_memory`` overrides).
    """
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed) if sampler is None else None,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )


# --------------------------------------------------------------------------------------------
# Fancy PCA statistics (section 4.1)
# --------------------------------------------------------------------------------------------
def _pixels(image: Any, size: int | None) -> np.ndarray:
    """(P, 3) float64 RGB in [0, 1] from a PIL image, a path, or a (3, H, W) tensor (uint8 or [0, 1] float)."""
    if isinstance(image, str | os.PathLike):
        image = load_rgb(image)
    if isinstance(image, Image.Image):
        short = min(image.size)
        if size is not None and short > size:
            image = image.resize((round(image.width * size / short), round(image.height * size / short)))
        return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0
    t = torch.as_tensor(image).as_subclass(Tensor)
    a = t.reshape(3, -1).T.double().numpy()
    return a / 255.0 if t.dtype == torch.uint8 else a


def compute_pca(
    dataset_or_paths: Dataset | Iterable[str | os.PathLike],
    n_samples: int = 1000,
    seed: int = 0,
    size: int | None = 256,
    *,
    as_served: bool = False,
) -> PCA:
    """Eigen-decomposition of the RGB pixel covariance (pixels in [0, 1]) over a seeded sample of images.

    An :class:`ImageFolderDataset` (or a list of paths) is read from its files, shrunk so the shorter side is
    at most ``size`` (the paper's 256 down-sampled images), unless ``as_served``; any other dataset's items
    ``(image, target)`` are used as they come. Eigenvalues descending; each eigenvector (a column) has its
    largest component positive.
    """
    paths = None if as_served else getattr(dataset_or_paths, "samples", None)
    if paths is not None:
        items: Sequence[Any] = [p for p, _ in paths]
    elif isinstance(dataset_or_paths, Dataset):
        items = dataset_or_paths  # type: ignore[assignment]
    else:
        items = list(dataset_or_paths)
    n = len(items)
    if n == 0:
        raise UserError("cannot compute the PCA colour statistics of an empty dataset")
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=min(n_samples, n), replace=False))
    total, outer, count = np.zeros(3), np.zeros((3, 3)), 0
    for i in chosen:
        item = items[int(i)]
        if isinstance(items, Dataset):
            if item is None:
                continue
            item = item[0]
        try:
            px = _pixels(item, size)
        except DECODE_ERRORS:
            continue  # already warned about and counted by the dataset
        total += px.sum(0)
        outer += px.T @ px
        count += len(px)
    if count == 0:
        raise UserError("no readable images to compute the PCA colour statistics from")
    mu = total / count
    cov = outer / count - np.outer(mu, mu)
    eigval, eigvec = np.linalg.eigh(cov)
    eigval, eigvec = np.clip(eigval[::-1], 0, None), eigvec[:, ::-1]
    signs = np.sign(eigvec[np.abs(eigvec).argmax(0), range(3)])
    eigvec = eigvec * np.where(signs == 0, 1, signs)
    return PCA(torch.tensor(eigval.copy(), dtype=torch.float32), torch.tensor(eigvec.copy(), dtype=torch.float32))


def load_or_compute_pca(run_dir: str | os.PathLike, train_ds: Dataset, *, n_samples: int = 1000, seed: int = 0) -> PCA:
    """The training set's PCA from ``run_dir/pca.json``, computed (and written atomically) the first time
    from the images as ``train_ds`` serves them: the down-sampled images training sees, so an image folder
    and its prepared dataset give the same statistics."""
    path = Path(run_dir) / "pca.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            return PCA(torch.tensor(saved["eigval"]), torch.tensor(saved["eigvec"]))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read {path} ({_reason(e)}); delete it to recompute") from e
    # A prepared dataset checks each shard on its first read; a thousand images would touch most shards.
    deferred = getattr(train_ds, "checksums_deferred", contextlib.nullcontext)
    with deferred():
        pca = compute_pca(train_ds, n_samples=n_samples, seed=seed, as_served=True)
    record = {
        "eigval": pca.eigval.tolist(),
        "eigvec": pca.eigvec.tolist(),
        "convention": "RGB pixels in [0, 1]; eigvec[:, i] is the eigenvector of eigval[i]",
        "n_samples": n_samples,
        "seed": seed,
    }
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    return pca
