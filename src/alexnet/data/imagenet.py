"""ImageNet (ILSVRC-2012)'s classes and devkit, and the paper's error table.

Class index i is the i-th wnid in sorted order (0 = n01440764, tench), the order of torchvision's ImageNet
weights and of every class-folder loader; :func:`imagenet_words` gives the 1000 wnids with their words, shipped
with the package. The devkit (``data/meta.mat``: each synset's ILSVRC2012_ID, WNID and words;
``data/ILSVRC2012_validation_ground_truth.txt``: one ILSVRC2012_ID per validation image in file-name order)
numbers its synsets otherwise (ILSVRC2012_ID 1 is n02119789, kit fox): :func:`read_devkit` maps those IDs to
wnids through meta.mat, so they are never used as labels. :func:`error_table` lays out a ten-crop evaluation
as the paper's Table 2, next to the paper's and Caffe's figures. The archives themselves are read by
:mod:`alexnet.data.sources`.
"""

from __future__ import annotations

import functools
import io
import os
import re
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = [
    "imagenet_words",
    "class_words",
    "is_imagenet",
    "read_synset_mapping",
    "Devkit",
    "read_meta",
    "read_devkit",
    "error_table",
    "format_error_table",
]

META = "meta.mat"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
WNID = re.compile(r"n\d{8}")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_TABLE = Path(__file__).with_name("imagenet_classes.txt")


# --------------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------------
@functools.cache
def imagenet_words() -> dict[str, str]:
    """wnid -> words of ILSVRC-2012's 1000 classes, in class order (the devkit's words, shipped with the package)."""
    return read_synset_mapping(_TABLE)


def read_synset_mapping(path: str | os.PathLike) -> dict[str, str]:
    """``wnid words`` per line (Kaggle's ``LOC_synset_mapping.txt``); a malformed line is an error naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    words: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            wnid, _, rest = line.strip().partition(" ")
            if not WNID.fullmatch(wnid):
                raise UserError(f"{path}, line {n}: {wnid!r} is not a WordNet id (n01440764 ...)")
            words[wnid] = rest.strip()
    return words


def is_imagenet(classes: Sequence[str]) -> bool:
    """Whether every class is one of ILSVRC-2012's 1000 wnids."""
    table = imagenet_words()
    return bool(classes) and all(c in table for c in classes)


def class_words(classes: Sequence[str], words: Sequence[str] = ()) -> tuple[str, ...]:
    """The words of each class: ``words`` where a dataset brought its own; else ImageNet's when every class is
    one of ILSVRC-2012's wnids; else none (the class names are the names)."""
    if words:
        return tuple(words)
    return tuple(imagenet_words()[c] for c in classes) if is_imagenet(classes) else ()


# --------------------------------------------------------------------------------------------
# The devkit
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Devkit:
    """``wnids``: ILSVRC2012_ID -> wnid of the classes (meta.mat's leaf synsets); ``words``: wnid -> words;
    ``truth``: the ILSVRC2012_ID of each validation image in file-name order (None without the file)."""

    wnids: dict[int, str]
    words: dict[str, str]
    truth: tuple[int, ...] | None
    meta_name: str
    truth_name: str | None


def read_meta(data: bytes, name: str) -> tuple[dict[int, str], dict[str, str]]:
    """(ILSVRC2012_ID -> wnid, wnid -> words) of meta.mat's synsets without children (the 1000 classes)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        synsets = np.atleast_1d(loadmat(io.BytesIO(data), squeeze_me=True)["synsets"])
        rows = list(
            zip(synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["words"], synsets["num_children"], strict=True)
        )
    except (MatReadError, ValueError, TypeError, KeyError, IndexError, OSError) as e:
        raise UserError(f"{name} is not the devkit's meta.mat (synsets with ILSVRC2012_ID, WNID, words): {e}") from e
    wnids: dict[int, str] = {}
    words: dict[str, str] = {}
    for ident, wnid, text, children in rows:
        if int(children) != 0:
            continue  # an inner node of the hierarchy, not a class
        wnid = str(wnid)
        if not WNID.fullmatch(wnid) or int(ident) in wnids or wnid in words:
            raise UserError(f"{name}: synset {int(ident)} {wnid!r} is not a new WordNet id (n01440764 ...)")
        wnids[int(ident)] = wnid
        words[wnid] = str(text)
    if not wnids:
        raise UserError(f"{name} lists no synsets without children: it is not ILSVRC-2012's meta.mat")
    return wnids, words


def _read_truth(data: bytes, name: str) -> tuple[int, ...]:
    ids = []
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if line.strip():
            try:
                ids.append(int(line))
            except ValueError:
                raise UserError(f"{name}, line {n}: {line.strip()[:40]!r} is not an ILSVRC2012_ID") from None
    return tuple(ids)


def read_devkit(path: str | os.PathLike) -> Devkit:
    """The devkit archive (``.tar.gz``), a folder holding ``meta.mat`` and the ground truth (directly or in
    ``data/``), or ``meta.mat`` alone."""
    path = Path(path)
    found: dict[str, tuple[bytes, str]] = {}
    if path.is_dir():
        for key in (META, GROUND_TRUTH):
            for where in (path / key, path / "data" / key):
                if where.is_file():
                    found[key] = (_read_file(where), str(where))
                    break
    elif path.is_file() and path.name.endswith(TAR_SUFFIXES):
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar:
                    key = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and key in (META, GROUND_TRUTH) and key not in found:
                        found[key] = (tar.extractfile(m).read(), f"{path}/{m.name}")  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise UserError(f"cannot read the devkit {path}: {e}") from e
    elif path.is_file():
        found[META] = (_read_file(path), str(path))
    else:
        raise UserError(f"devkit not found: {path}")
    if META not in found:
        raise UserError(f"{path} holds no {META}: give ILSVRC2012_devkit_t12.tar.gz or a folder with data/{META}")
    wnids, words = read_meta(*found[META])
    truth = _read_truth(*found[GROUND_TRUTH]) if GROUND_TRUTH in found else None
    return Devkit(wnids, words, truth, found[META][1], found[GROUND_TRUTH][1] if GROUND_TRUTH in found else None)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from e


# --------------------------------------------------------------------------------------------
# The paper's Table 2
# --------------------------------------------------------------------------------------------
# Top-1 and top-5 error on ILSVRC-2012 val: the paper's one CNN (Table 2; its test averages ten crops) and
# Caffe's reference model bvlc_alexnet (centre crop).
REFERENCES = (
    ("Krizhevsky et al. 2012, 1 CNN", 10, 0.407, 0.182),
    ("Caffe's bvlc_alexnet", 1, 0.429, 0.198),
)
VAL_IMAGES = 50_000


def error_table(result: dict[str, Any], classes: int) -> dict[str, Any]:
    """Top-1/top-5 error of a ten-crop evaluation (its centre crop and ten crops) next to the references, and
    torchvision's own figures for its ``alexnet`` weights (centre crop of a 256 resize)."""
    from torchvision.models import AlexNet_Weights

    rows = [
        {"name": "this model", "crops": 1, "top1_error": result["center"]["top1_error"],
         "top5_error": result["center"]["top5_error"], "reference": False},
        {"name": "this model", "crops": 10, "top1_error": result["top1_error"], "top5_error": result["top5_error"],
         "reference": False},
    ]  # fmt: skip
    rows += [
        {"name": n, "crops": c, "top1_error": t1, "top5_error": t5, "reference": True} for n, c, t1, t5 in REFERENCES
    ]
    acc = AlexNet_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]
    rows.append({"name": "torchvision's alexnet weights", "crops": 1, "top1_error": round(1 - acc["acc@1"] / 100, 5),
                 "top5_error": round(1 - acc["acc@5"] / 100, 5), "reference": True})  # fmt: skip
    images = int(result["images"])
    return {"rows": rows, "classes": classes, "images": images, "comparable": classes == 1000 and images == VAL_IMAGES}


def format_error_table(table: dict[str, Any]) -> str:
    """The table as text, in the layout of the paper's Table 2 (error rates, %)."""
    lines = [
        "  error rates on ILSVRC-2012's validation set, laid out as the paper's Table 2:",
        f"  {'model':<38} {'crops':>5} {'top-1 error':>12} {'top-5 error':>12}",
    ]
    for r in table["rows"]:
        digits = 1 if r["reference"] else 2
        lines.append(
            f"  {r['name']:<38} {r['crops']:>5} {r['top1_error']:>11.{digits}%} {r['top5_error']:>11.{digits}%}"
        )
    if not table["comparable"]:
        lines.append(f"  (this run: {table['classes']} classes, {table['images']} images; the references are on all "
                     f"1000 classes and {VAL_IMAGES:,} images)")  # fmt: skip
    return "\n".join(lines)
