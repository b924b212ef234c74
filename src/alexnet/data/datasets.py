"""Bundled real datasets, written once as image files in ImageFolder layout (so they go through exactly the
pipeline a user's own folder does):

- ``digits``: scikit-learn's 1,797 8x8 handwritten digits, split 70/10/20 per class.
- ``photos``: 64x64 patches cut from the photographs scikit-image and scikit-learn ship, one class per
  photograph; the train, val and test patches come from disjoint strips of each photograph, so no pixel
  of a held-out patch was ever seen in training.

Each is written to a temporary folder and renamed into place with a marker file, so an interrupted
write never leaves a half dataset; a complete folder of the current version is reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..files import default_cache_dir
from .loaders import stratified_split

__all__ = [
    "DATASETS",
    "default_cache_dir",
    "prepare_digits",
    "prepare_photos",
    "resolve_dataset",
    "PHOTO_SOURCES",
]

_MARKER = ".complete"


def _complete(folder: Path, version: int) -> bool:
    try:
        return json.loads((folder / _MARKER).read_text()).get("version") == version
    except (OSError, ValueError):
        return False


def _write_once(target: Path, version: int, write: Callable[[Path], dict]) -> Path:
    """``write(tmp_folder)`` fills a temporary folder, renamed to ``target`` with a marker when it returns."""
    if _complete(target, version):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as e:
        raise UserError(f"cannot write the dataset to {target}: {e.strerror or e} (set ALEXNET_CACHE)") from e
    try:
        counts = write(tmp)
        (tmp / _MARKER).write_text(json.dumps({"version": version, "counts": counts}) + "\n")
        if target.exists() and not _complete(target, version):
            shutil.rmtree(target)  # a folder left by something else, or an older version
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target, version):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------
DIGITS_SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}  # stratified per class, seed DIGITS_SEED
DIGITS_SEED = 0
_DIGITS_VERSION = 1


def prepare_digits(cache_dir: str | os.PathLike | None = None) -> Path:
    """scikit-learn's 1,797 8x8 digits as ``<cache>/digits/{train,val,test}/<0-9>/<index>.png``.

    8-bit grayscale PNGs (the 0-16 values scaled to 0-255), named by their index in ``load_digits()``;
    split 70/10/20 per class with a fixed seed, so the test split is the same held-out set everywhere.
    """
    target = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "digits"

    def write(tmp: Path) -> dict:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.rint(digits.images * (255 / 16)).clip(0, 255).astype(np.uint8)
        labels = digits.target.astype(int)
        parts = stratified_split(labels, list(DIGITS_SPLITS.values()), seed=DIGITS_SEED)
        for split, indices in zip(DIGITS_SPLITS, parts, strict=True):
            for k in range(10):
                (tmp / split / str(k)).mkdir(parents=True)
            for i in indices:
                Image.fromarray(pixels[i], mode="L").save(tmp / split / str(labels[i]) / f"{i:04d}.png")
        return {s: len(p) for s, p in zip(DIGITS_SPLITS, parts, strict=True)}

    return _write_once(target, _DIGITS_VERSION, write)


# --------------------------------------------------------------------------------------------
# photos
# --------------------------------------------------------------------------------------------
def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]
        return getattr(skimage.data, name)()

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


# One class per photograph, all shipped inside the scikit-image and scikit-learn wheels (no download):
# nine colour photographs and three grayscale textures.
PHOTO_SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "brick": _skimage("brick"),
    "cat": _skimage("chelsea"),
    "china": _sklearn("china.jpg"),
    "coffee": _skimage("coffee"),
    "flower": _sklearn("flower.jpg"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "hubble": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "motorcycle": _skimage("motorcycle"),
    "rocket": _skimage("rocket"),
}
PHOTO_SPLITS = {"train": 100, "val": 30, "test": 30}  # patches per class
PHOTO_SIZE = 64
PHOTO_SEED = 0
_PHOTOS_VERSION = 1
# Five equal strips along each photograph's longer side: strips 0, 2, 4 give training patches, strip 1
# validation patches, strip 3 test patches. Held-out patches share no pixel with training ones.
_STRIPS = {"train": (0, 2, 4), "val": (1,), "test": (3,)}


def _patches(image: np.ndarray, split: str, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """``count`` square patches at random positions and scales inside ``split``'s strips, resized to 64 px."""
    h, w = image.shape[:2]
    along_width = w >= h
    length, across = (w, h) if along_width else (h, w)
    bounds = [(length * i // 5, length * (i + 1) // 5) for i in range(5)]
    out = []
    for k in range(count):
        lo, hi = bounds[_STRIPS[split][k % len(_STRIPS[split])]]
        side = int(rng.integers(min(40, hi - lo), min(hi - lo, across, 160) + 1))
        a = int(rng.integers(lo, hi - side + 1))  # along the strip direction
        b = int(rng.integers(0, across - side + 1))
        y, x = (b, a) if along_width else (a, b)
        crop = Image.fromarray(image[y : y + side, x : x + side])
        out.append(crop.resize((PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.BICUBIC, reducing_gap=None))
    return out


def prepare_photos(cache_dir: str | os.PathLike | None = None) -> Path:
    """12 classes of real photographs as ``<cache>/photos/{train,val,test}/<class>/<n>.png``.

    Each class is one photograph shipped by scikit-image or scikit-learn; 100 training, 30 validation and
    30 test patches per class (64x64, cut at random positions and scales, 40-160 px, from disjoint strips
    of the photograph, fixed seed). A small, fast stand-in for a real-photo benchmark: textures, faces,
    objects, colour and grayscale, where a network must learn from pixels, not from a synthetic rule.
    """
    target = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "photos"

    def write(tmp: Path) -> dict:
        for c, (name, load) in enumerate(sorted(PHOTO_SOURCES.items())):
            image = load()
            if image.ndim == 3 and image.shape[2] == 4:
                image = image[..., :3]
            for split, count in PHOTO_SPLITS.items():
                folder = tmp / split / name
                folder.mkdir(parents=True)
                rng = np.random.default_rng([PHOTO_SEED, c, list(PHOTO_SPLITS).index(split)])
                for i, patch in enumerate(_patches(image, split, count, rng)):
                    patch.save(folder / f"{i:03d}.png")
        return {s: n * len(PHOTO_SOURCES) for s, n in PHOTO_SPLITS.items()}

    return _write_once(target, _PHOTOS_VERSION, write)


DATASETS: dict[str, Callable[[], Path]] = {"digits": prepare_digits, "photos": prepare_photos}


def resolve_dataset(name_or_path: str | os.PathLike) -> Path:
    """A bundled dataset's name (``"digits"``, ``"photos"``) -> its prepared folder; anything else is a path.

    A folder that happens to have such a name can be passed as ``./digits``.
    """
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        return DATASETS[name_or_path]()
    return Path(name_or_path)
