"""The bundled datasets: digits and the real-photo patches, written once as image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data.datasets import PHOTO_SOURCES, PHOTO_SPLITS, _patches, prepare_digits, prepare_photos, resolve_dataset
from alexnet.data.loaders import make_datasets
from alexnet.data.transforms import decode_transform


# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return prepare_digits(tmp_path_factory.mktemp("cache"))


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def test_digits_are_1797_pngs_split_70_10_20_with_every_class_in_every_split(digits):
    counts = {}
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (digits / split).iterdir()) == [str(k) for k in range(10)]
        per_class = [len(list((digits / split / str(k)).glob("*.png"))) for k in range(10)]
        assert min(per_class) > 0
        counts[split] = sum(per_class)
    assert sum(counts.values()) == 1797
    assert counts["train"] == pytest.approx(0.7 * 1797, abs=10)
    assert counts["val"] == pytest.approx(0.1 * 1797, abs=10)
    assert counts["test"] == pytest.approx(0.2 * 1797, abs=10)


def test_digit_files_hold_the_scaled_sklearn_pixels(digits):
    from sklearn.datasets import load_digits

    ref = load_digits()
    some = sorted((digits / "test").rglob("*.png"))[:5]
    for path in some:
        i = int(path.stem)
        image = Image.open(path)
        assert image.mode == "L" and image.size == (8, 8)
        assert int(path.parent.name) == ref.target[i]
        np.testing.assert_array_equal(np.asarray(image), np.rint(ref.images[i] * 255 / 16).astype(np.uint8))


def test_digits_are_reproducible_and_reused(digits, tmp_path):
    marker_time = (digits / ".complete").stat().st_mtime_ns
    assert prepare_digits(digits.parent) == digits
    assert (digits / ".complete").stat().st_mtime_ns == marker_time  # reused, not rewritten
    assert _listing(prepare_digits(tmp_path)) == _listing(digits)


def test_an_interrupted_digits_folder_is_rewritten(tmp_path):
    half = tmp_path / "digits" / "train" / "0"
    half.mkdir(parents=True)
    (half / "0000.png").write_bytes(b"partial")  # no marker: an interrupted write of an older layout
    root = prepare_digits(tmp_path)
    assert len(_listing(root)) == 1797
    assert not [p for p in tmp_path.iterdir() if p.name != "digits"]  # no temporary folder left behind


def test_digits_go_through_the_folder_pipeline(digits):
    train, val, classes = make_datasets(digits, train_transform=decode_transform(8))
    assert classes == [str(k) for k in range(10)] and val is not None
    image, target = train[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8


def test_resolve_dataset_maps_digits_to_the_cache_and_passes_paths_through(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    assert resolve_dataset("digits") == tmp_path / "digits"
    assert (tmp_path / "digits" / ".complete").exists()
    assert resolve_dataset("some/folder") == Path("some/folder")
    assert resolve_dataset(Path("digits")) == Path("digits")
    assert os.fspath(resolve_dataset("./digits")) == "digits"


# --------------------------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return prepare_photos(tmp_path_factory.mktemp("cache"))


def test_photos_have_twelve_classes_with_the_documented_counts_per_split(photos):
    for split, count in PHOTO_SPLITS.items():
        classes = sorted(p.name for p in (photos / split).iterdir())
        assert classes == sorted(PHOTO_SOURCES)
        for c in classes:
            files = list((photos / split / c).glob("*.png"))
            assert len(files) == count
    image = Image.open(next((photos / "test" / "astronaut").glob("*.png")))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_held_out_patches_come_from_strips_that_training_never_touches():
    # Cut patches from an image whose pixel value is its column index: the columns a patch covers are
    # then readable from the patch itself (up to the resize blur), per split.
    width = 500
    image = np.tile(np.linspace(0, 255, width).astype(np.uint8)[None, :, None], (200, 1, 3))
    rng = np.random.default_rng(0)
    seen = {}
    for split in ("train", "val", "test"):
        values = np.concatenate([np.asarray(p)[..., 0].ravel() for p in _patches(image, split, 60, rng)])
        seen[split] = values.astype(float) * (width - 1) / 255
    strip = width / 5
    assert seen["val"].min() >= strip - 2 and seen["val"].max() <= 2 * strip + 2
    assert seen["test"].min() >= 3 * strip - 2 and seen["test"].max() <= 4 * strip + 2
    train = seen["train"]
    assert not ((train > strip + 2) & (train < 2 * strip - 2)).any()
    assert not ((train > 3 * strip + 2) & (train < 4 * strip - 2)).any()


def test_photos_are_deterministic(photos, tmp_path):
    again = prepare_photos(tmp_path)
    for rel in ("train/cat/000.png", "test/rocket/029.png", "val/grass/010.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(photos / rel)), np.asarray(Image.open(again / rel)))


def test_resolve_dataset_knows_photos(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    assert resolve_dataset("photos") == tmp_path / "photos"
    assert (tmp_path / "photos" / ".complete").exists()
