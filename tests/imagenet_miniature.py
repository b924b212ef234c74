"""A miniature ILSVRC-2012 made by the tests: images (with a CMYK JPEG, a grayscale one, a PNG named .JPEG and an
unreadable file, as the real set has), the train tar of per-synset tars, the val tar, a devkit with a real
meta.mat written by scipy, the same images in class folders, and the hand-written expectations."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from alexnet.data import prepared
from alexnet.data.prepare import PrepareOptions

SRC_ROOT = Path(__file__).resolve().parents[1] / "src"
OPTIONS = PrepareOptions(size=16, shard_images=4)

# The miniature devkit, in the devkit's own order: ILSVRC2012_ID, WNID, words, children. IDs 1-4 are the real
# devkit's first four synsets (1 is kit fox, not tench); two inner nodes of the hierarchy are no classes.
SYNSETS = [
    (1, "n02119789", "kit fox, Vulpes macrotis", 0),
    (2, "n02100735", "English setter", 0),
    (3, "n02110185", "Siberian husky", 0),
    (4, "n02096294", "Australian terrier", 0),
    (5, "n01440764", "tench, Tinca tinca", 0),
    (1001, "n02075296", "carnivore", 4),
    (1002, "n01473806", "aquatic vertebrate", 1),
]
# Class index = sorted wnid: written out by hand.
CLASSES = ["n01440764", "n02096294", "n02100735", "n02110185", "n02119789"]
WORDS = ["tench, Tinca tinca", "Australian terrier", "English setter", "Siberian husky", "kit fox, Vulpes macrotis"]
# Validation image k (ILSVRC2012_val_0000000k) has ground-truth ID TRUTH[k - 1]; its label, by hand:
TRUTH = [1, 5, 3, 1, 4, 2, 5]
VAL_LABELS = {1: 4, 2: 0, 3: 3, 4: 4, 5: 1, 6: 2, 7: 0}
# Member names in an order the tars do not sort: the prepared order is the class folders' (sorted) one.
TRAIN_NAMES = ["512", "10026", "3"]


def photo(seed: int, h: int = 18, w: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), np.full((h, w), 40.0 * (seed % 6))], -1)
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def make_images() -> tuple[dict[str, dict[str, bytes]], dict[str, bytes]]:
    """Train images per wnid (with a CMYK JPEG, a grayscale one, a PNG named .JPEG and an unreadable file, as
    the real set has) and the validation images, each a uniform colour that names it."""
    train: dict[str, dict[str, bytes]] = {}
    for c, wnid in enumerate(CLASSES):
        files = {}
        for k, n in enumerate(TRAIN_NAMES):
            rgb = Image.fromarray(photo(10 * c + k, 18 + k, 24 - 2 * c))
            files[f"{wnid}_{n}.JPEG"] = encode(rgb)
        train[wnid] = files
    train[CLASSES[1]][f"{CLASSES[1]}_77.JPEG"] = encode(Image.fromarray(photo(91)).convert("CMYK"))
    train[CLASSES[2]][f"{CLASSES[2]}_78.JPEG"] = encode(Image.fromarray(photo(92)).convert("L"))
    train[CLASSES[3]][f"{CLASSES[3]}_79.JPEG"] = encode(Image.fromarray(photo(93)), "PNG")
    train[CLASSES[4]][f"{CLASSES[4]}_80.JPEG"] = b"\xff\xd8 not a whole JPEG"
    val = {
        f"ILSVRC2012_val_{k:08d}.JPEG": encode(Image.new("RGB", (20 + k, 16), (30 * k, 100, 150)))
        for k in range(1, len(TRUTH) + 1)
    }
    return train, val


def tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_330_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def meta_mat(synsets: list[tuple[int, str, str, int]]) -> bytes:
    """meta.mat as the devkit stores it: a struct array ``synsets`` with the devkit's fields."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]  # fmt: skip
    rows = [(i, w, words, f"gloss of {w}", n, np.zeros((1, n)), 0, 1300 if n == 0 else 0) for i, w, words, n in synsets]
    out = io.BytesIO()
    savemat(out, {"synsets": np.array(rows, dtype=[(f, "O") for f in fields]).reshape(-1, 1)})
    return out.getvalue()


def devkit(truth: list[int], synsets: list = SYNSETS) -> bytes:
    ground_truth = "".join(f"{t}\n" for t in truth).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in [
            ("ILSVRC2012_devkit_t12/COPYING", b"the devkit's licence"),
            ("ILSVRC2012_devkit_t12/data/meta.mat", meta_mat(synsets)),
            ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", ground_truth),
        ]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def archives(root: Path, train: dict, val: dict, *, truth: list[int] = TRUTH, synsets: list = SYNSETS) -> Path:
    """ILSVRC2012_img_train.tar (synsets in reverse order, members unsorted), ILSVRC2012_img_val.tar (reversed)
    and the devkit, in ``root``."""
    root.mkdir(parents=True)
    inner = {w: tar(list(files.items())) for w, files in train.items()}
    (root / "ILSVRC2012_img_train.tar").write_bytes(tar([(f"{w}.tar", inner[w]) for w in reversed(list(inner))]))
    (root / "ILSVRC2012_img_val.tar").write_bytes(tar(list(reversed(list(val.items())))))
    (root / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit(truth, synsets))
    return root


def folders(root: Path, train: dict, val: dict) -> Path:
    """The same images in class folders: the reference."""
    for wnid, files in train.items():
        for name, data in files.items():
            (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
            (root / "train" / wnid / name).write_bytes(data)
    for k, (name, data) in enumerate(val.items(), 1):
        folder = root / "val" / CLASSES[VAL_LABELS[k]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return root


def shards(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.shard"))}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same_dataset(a: Path, b: Path) -> None:
    """The same shard bytes, and a manifest equal but for the source, its digest and the words."""
    assert shards(a) and shards(a) == shards(b)
    ma, mb = prepared.read_manifest(a), prepared.read_manifest(b)
    for m in (ma, mb):
        for key in ("source", "digest"):
            m.pop(key)
        for split in m["splits"].values():
            split.pop("words", None)
    assert ma == mb
