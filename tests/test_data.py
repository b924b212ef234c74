"""Datasets, loaders, the PCA statistics and the digits dataset, on tiny images written in tmp_path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data.loaders import (
    Batch,
    DataWarning,
    ImageFolderDataset,
    collate,
    compute_pca,
    load_or_compute_pca,
    load_rgb,
    make_datasets,
    make_loader,
    stratified_split,
)
from alexnet.data.transforms import decode_transform
from alexnet.errors import UserError
from alexnet.models.card import ModelCard
from reference_transforms import eval_transform

RNG = np.random.default_rng(0)


def _png(path: Path, size: int = 6, value: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        pixels = RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        pixels = np.full((size, size, 3), value, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            _png(root / name / f"{i:03d}.png")
    return root


def _truncated_jpeg(path: Path) -> Path:
    """A JPEG whose header is intact (it passes the scan) but whose data stop halfway (it fails to decode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------------
# load_rgb
# --------------------------------------------------------------------------------------------
def _write(tmp_path: Path, name: str, image: Image.Image) -> Path:
    image.save(tmp_path / name)
    return tmp_path / name


def test_grayscale_and_bilevel_images_load_as_rgb(tmp_path):
    gray = _write(tmp_path, "g.png", Image.new("L", (3, 2), 77))
    assert load_rgb(gray).mode == "RGB" and load_rgb(gray).getpixel((0, 0)) == (77, 77, 77)
    bilevel = _write(tmp_path, "b.bmp", Image.new("1", (3, 2), 1))
    assert load_rgb(bilevel).getpixel((1, 1)) == (255, 255, 255)


def test_palette_images_load_as_rgb_and_transparent_entries_become_white(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    plain = load_rgb(_write(tmp_path, "p.png", p))
    assert plain.mode == "RGB" and [plain.getpixel((x, 0)) for x in range(2)] == [(10, 20, 30), (200, 100, 0)]
    p.info["transparency"] = 0
    clear = load_rgb(_write(tmp_path, "pt.png", p))
    assert [clear.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (200, 100, 0)]


def test_rgba_and_la_images_are_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (200, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 200, 0))
    out = load_rgb(_write(tmp_path, "a.png", rgba))
    assert out.mode == "RGB" and [out.getpixel((x, 0)) for x in range(2)] == [(200, 0, 0), (255, 255, 255)]
    half = load_rgb(_write(tmp_path, "la.png", Image.new("LA", (1, 1), (0, 128))))
    assert half.getpixel((0, 0)) == pytest.approx((127, 127, 127), abs=1)  # black at half alpha on white


@pytest.mark.parametrize("ext", ["tif", "jpg"])
def test_cmyk_images_load_as_rgb(tmp_path, ext):
    rgb = Image.new("RGB", (4, 4), (250, 120, 10))
    path = _write(tmp_path, f"c.{ext}", rgb.convert("CMYK"))
    assert Image.open(path).mode == "CMYK"
    out = load_rgb(path)
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == pytest.approx((250, 120, 10), abs=0 if ext == "tif" else 6)


def test_16_bit_images_are_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = _write(tmp_path, "16.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_rgb(path))
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == [0, 100, 255] and (out[..., 1] == out[..., 0]).all()


# --------------------------------------------------------------------------------------------
# Scanning and unreadable files
# --------------------------------------------------------------------------------------------
def test_scan_finds_classes_in_order_and_ignores_non_images_and_hidden_files(tmp_path):
    _folder(tmp_path, {"b": 2, "a": 1})
    _png(tmp_path / "a" / "nested" / "deep.PNG")  # upper-case extension, sub-folder
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "b" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / ".cache").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ignored silently
        ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["a", "b"]
    assert sorted((p.name, t) for p, t in ds.samples) == [
        ("000.png", 0),
        ("000.png", 1),
        ("001.png", 1),
        ("deep.PNG", 0),
    ]
    assert ds.skipped == [] and len(ds) == 4


def test_corrupt_and_truncated_files_are_skipped_with_a_warning_naming_them(tmp_path):
    _folder(tmp_path, {"a": 2, "b": 2})
    corrupt = tmp_path / "a" / "corrupt.jpg"
    corrupt.write_bytes(RNG.bytes(600))
    good = _png(tmp_path / "b" / "whole.png").read_bytes()
    truncated = tmp_path / "b" / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.warns(DataWarning) as record:
        ds = ImageFolderDataset(tmp_path)
    messages = " | ".join(str(w.message) for w in record)
    assert str(corrupt) in messages and str(truncated) in messages
    assert {p for p, _ in ds.skipped} == {corrupt, truncated}
    assert len(ds) == 5 and corrupt not in {p for p, _ in ds.samples}


def test_strict_turns_an_unreadable_file_into_an_error_naming_it(tmp_path):
    _folder(tmp_path, {"a": 2})
    (tmp_path / "a" / "corrupt.jpg").write_bytes(RNG.bytes(600))
    with pytest.raises(UserError, match="corrupt.jpg"):
        ImageFolderDataset(tmp_path, strict=True)


def test_a_file_that_fails_to_decode_at_load_time_is_none_with_one_warning(tmp_path):
    _folder(tmp_path, {"a": 1})
    bad = _truncated_jpeg(tmp_path / "a" / "broken.jpg")
    ds = ImageFolderDataset(tmp_path, decode_transform(8))
    assert bad in {p for p, _ in ds.samples}  # the header is fine, so the scan keeps it
    index = [p for p, _ in ds.samples].index(bad)
    with pytest.warns(DataWarning, match="broken.jpg"):
        assert ds[index] is None
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert ds[index] is None
    assert not again  # once per file
    image, target = ds[1 - index]
    assert image.shape == (3, 8, 8) and target == 0
    strict = ImageFolderDataset(tmp_path, decode_transform(8), strict=True)
    with pytest.raises(UserError, match="broken.jpg"):
        strict[index]


# --------------------------------------------------------------------------------------------
# make_datasets: layouts and errors
# --------------------------------------------------------------------------------------------
def test_train_and_val_folders_are_used_with_their_own_transforms(tmp_path):
    _folder(tmp_path / "train", {"cat": 3, "dog": 2})
    _folder(tmp_path / "val", {"cat": 1, "dog": 1})
    train_ds, val_ds, classes = make_datasets(tmp_path, train_transform="T", eval_transform="E")
    assert classes == ["cat", "dog"] and len(train_ds) == 5 and len(val_ds) == 2
    assert train_ds.transform == "T" and val_ds.transform == "E"


def test_train_folder_alone_gives_no_validation_set(tmp_path):
    _folder(tmp_path / "train", {"cat": 2})
    train_ds, val_ds, _ = make_datasets(tmp_path)
    assert val_ds is None and len(train_ds) == 2


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("missing", "not found"),
        ("empty", "no class folders"),
        ("empty_class", "dog has no image files"),
        ("only_text", "no images"),
        ("all_unreadable", "no readable images"),
        ("mismatch", "only in train: \\['dog'\\], only in val: \\['fox'\\]"),
    ],
)
def test_bad_layouts_raise_a_user_error_naming_the_problem(tmp_path, layout, match):
    root = tmp_path / "data"
    if layout == "empty":
        root.mkdir()
    elif layout == "empty_class":
        _folder(root, {"cat": 2})
        (root / "dog").mkdir()
        (root / "dog" / "readme.txt").write_text("no images here")
    elif layout == "only_text":
        (root / "cat").mkdir(parents=True)
        (root / "cat" / "a.txt").write_text("x")
    elif layout == "all_unreadable":
        (root / "cat").mkdir(parents=True)
        (root / "cat" / "a.jpg").write_bytes(RNG.bytes(300))
    elif layout == "mismatch":
        _folder(root / "train", {"cat": 1, "dog": 1})
        _folder(root / "val", {"cat": 1, "fox": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(UserError, match=match):
            make_datasets(root)


def test_val_split_must_be_a_fraction_and_not_combined_with_a_val_folder(tmp_path):
    _folder(tmp_path / "train", {"cat": 2})
    _folder(tmp_path / "val", {"cat": 1})
    with pytest.raises(UserError, match="between 0 and 1"):
        make_datasets(tmp_path / "train", val_split=1.5)
    with pytest.raises(UserError, match="already has a val/"):
        make_datasets(tmp_path, val_split=0.1)


def test_seeded_val_split_is_stratified_disjoint_and_reproducible(tmp_path):
    _folder(tmp_path, {"a": 20, "b": 10, "c": 5})
    train, val, classes = make_datasets(tmp_path, val_split=0.2, seed=3, train_transform="T", eval_transform="E")
    assert classes == ["a", "b", "c"]
    assert np.bincount(val.targets).tolist() == [4, 2, 1]
    assert np.bincount(train.targets).tolist() == [16, 8, 4]
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    assert train.transform == "T" and val.transform == "E"
    again = make_datasets(tmp_path, val_split=0.2, seed=3)[1]
    other = make_datasets(tmp_path, val_split=0.2, seed=4)[1]
    assert again.samples == val.samples
    assert other.samples != val.samples


def test_split_keeps_one_training_image_and_gives_small_classes_a_validation_image():
    targets = np.array([0, 1, 1, 2, 2, 2])
    parts = stratified_split(targets, [0.9, 0.1], seed=0)
    assert sorted(targets[parts[1]].tolist()) == [1, 2]  # round(0.1 * 2) = 0, raised to 1
    assert sorted(parts[0] + parts[1]) == list(range(6))
    assert 0 in parts[0]  # a single image stays in training


def test_a_class_split_does_not_change_when_another_class_grows():
    names = ["a", "b"]
    before = stratified_split([0] * 10 + [1] * 10, [0.7, 0.3], seed=0, names=names)
    after = stratified_split([0] * 10 + [1] * 30, [0.7, 0.3], seed=0, names=names)
    assert [i for i in before[1] if i < 10] == [i for i in after[1] if i < 10]


# --------------------------------------------------------------------------------------------
# Batches and loaders
# --------------------------------------------------------------------------------------------
def test_collate_drops_and_counts_failed_samples():
    batch = collate([(torch.zeros(3, 2, 2), 1), None, (torch.ones(3, 2, 2), 0), None])
    assert isinstance(batch, Batch)
    assert batch.images.shape == (2, 3, 2, 2) and batch.targets.tolist() == [1, 0] and batch.skipped == 2
    assert batch.targets.dtype == torch.long
    empty = collate([None])
    assert empty.targets.numel() == 0 and empty.skipped == 1


def test_loader_shuffles_reproducibly_from_the_seed(tmp_path):
    _folder(tmp_path, {str(k): 4 for k in range(4)})
    ds = ImageFolderDataset(tmp_path, decode_transform(4))

    def order(seed: int) -> list[int]:
        loader = make_loader(ds, 4, shuffle=True, workers=0, seed=seed)
        return [t for b in loader for t in b.targets.tolist()]

    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(order(1)) == sorted(ds.targets)


def test_loader_with_workers_counts_files_that_fail_to_decode(tmp_path):
    _folder(tmp_path, {"a": 3, "b": 3})
    _truncated_jpeg(tmp_path / "b" / "broken.jpg")
    ds = ImageFolderDataset(tmp_path, decode_transform(8))
    loader = make_loader(ds, 3, shuffle=False, workers=2, seed=0, pin_memory=False)
    assert not loader.persistent_workers  # restarted each epoch: exact resume (see make_loader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        batches = list(loader)
    assert sum(b.skipped for b in batches) == 1
    assert sum(len(b.targets) for b in batches) == 6
    # Files are in sorted order, so the broken one (b/broken.jpg, the last) makes a batch of its own.
    assert [len(b.targets) for b in batches] == [3, 3, 0]
    assert all(b.images.shape[1:] == (3, 8, 8) and b.images.dtype == torch.uint8 for b in batches[:2])


def test_make_datasets_with_model_transforms_feeds_a_loader(tmp_path):
    _folder(tmp_path, {"a": 3, "b": 3})
    cfg = ModelCard(input_size=4, resize_size=6)
    train, val, _ = make_datasets(tmp_path, val_split=0.34, eval_transform=eval_transform(cfg))
    images, targets, skipped, error = next(iter(make_loader(val, 8, shuffle=False, workers=0, seed=0)))
    assert images.shape == (len(val), 3, 4, 4) and images.dtype == torch.float32 and skipped == 0


# --------------------------------------------------------------------------------------------
# PCA statistics
# --------------------------------------------------------------------------------------------
DIRECTION = np.array([0.8, 0.36, -0.48])  # unit length


def _images_along(root: Path, direction: np.ndarray, n: int = 12) -> list[Path]:
    """Images whose pixels are grey + t * direction (+ a little noise): the covariance's top eigenvector."""
    paths = []
    for i in range(n):
        t = RNG.uniform(-0.3, 0.3, (16, 16, 1))
        rgb = 0.5 + t * direction + RNG.normal(0, 0.01, (16, 16, 3))
        paths.append(root / "x" / f"{i}.png")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def test_compute_pca_recovers_the_direction_the_pixels_vary_along(tmp_path):
    paths = _images_along(tmp_path, DIRECTION)
    eigval, eigvec = compute_pca(paths, n_samples=100)
    assert abs(float(eigvec[:, 0] @ torch.tensor(DIRECTION, dtype=torch.float32))) > 0.999
    assert float(eigval[0]) == pytest.approx(0.6**2 / 12, rel=0.1)  # variance of U(-0.3, 0.3)
    assert eigval[1] < 0.01 * eigval[0] and eigval[0] >= eigval[1] >= eigval[2] >= 0
    torch.testing.assert_close(eigvec.T @ eigvec, torch.eye(3), atol=1e-5, rtol=0)


def test_compute_pca_reads_a_folder_dataset_from_its_files_whatever_its_transform(tmp_path):
    _images_along(tmp_path, DIRECTION)
    ds = ImageFolderDataset(tmp_path, transform=lambda im: "not an image")
    _, eigvec = compute_pca(ds, n_samples=5, seed=1)
    assert abs(float(eigvec[:, 0] @ torch.tensor(DIRECTION, dtype=torch.float32))) > 0.999


def test_pca_is_computed_once_and_reused_from_the_run_dir(tmp_path):
    _images_along(tmp_path / "data", DIRECTION)
    ds = ImageFolderDataset(tmp_path / "data")
    run = tmp_path / "run"
    first = load_or_compute_pca(run, ds)
    saved = json.loads((run / "pca.json").read_text())
    assert saved["eigval"] == pytest.approx(first.eigval.tolist())
    saved["eigval"] = [1.0, 2.0, 3.0]  # a reused file is read, not recomputed
    (run / "pca.json").write_text(json.dumps(saved))
    assert load_or_compute_pca(run, ds).eigval.tolist() == [1.0, 2.0, 3.0]
    (run / "pca.json").write_text("{")
    with pytest.raises(UserError, match="pca.json"):
        load_or_compute_pca(run, ds)


# --------------------------------------------------------------------------------------------
# Links, formats, strictness in workers
# --------------------------------------------------------------------------------------------
def test_a_link_loop_in_a_class_folder_neither_multiplies_images_nor_mixes_classes(tmp_path):
    _folder(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "a" / "up").symlink_to("..")  # a loop that also leads into class b
    (tmp_path / "a" / "self").symlink_to(".")
    (tmp_path / "b" / "to_a").symlink_to("../a")  # class a's images would be read as b's
    with pytest.warns(DataWarning, match="not following the link") as record:
        ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 8
    assert sorted((p.parent.name, t) for p, t in ds.samples) == [("a", 0)] * 4 + [("b", 1)] * 4
    assert {str(w.message).split(" -> ")[0].split()[-1] for w in record} == {
        str(tmp_path / "a" / "up"),
        str(tmp_path / "a" / "self"),
        str(tmp_path / "b" / "to_a"),
    }


def test_links_to_folders_outside_the_dataset_are_followed_once(tmp_path):
    outside = _folder(tmp_path / "elsewhere", {"cats": 3}) / "cats"
    root = _folder(tmp_path / "data", {"a": 2, "b": 2})
    (root / "a" / "more").symlink_to(outside)
    (root / "a" / "again").symlink_to(outside)  # the same folder twice: read once
    with pytest.warns(DataWarning, match="already read"):
        ds = ImageFolderDataset(root)
    assert sum(t == 0 for _, t in ds.samples) == 5


def test_every_format_pil_reads_is_an_image_gif_included(tmp_path):
    _folder(tmp_path, {"a": 2, "b": 2})
    Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "a" / "anim.gif")
    Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "b" / "icon.tga")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, decode_transform(8))
    names = sorted(p.name for p, _ in ds.samples)
    assert "anim.gif" in names and "icon.tga" in names and "notes.txt" not in names
    image, _ = ds[names.index("anim.gif")]
    assert image.shape == (3, 8, 8)


def test_strict_with_workers_raises_the_one_line_error_in_the_main_process(tmp_path):
    _folder(tmp_path, {"a": 3, "b": 3})
    _truncated_jpeg(tmp_path / "a" / "broken.jpg")
    ds = ImageFolderDataset(tmp_path, decode_transform(8), strict=True)  # the header passes the scan
    from alexnet.runtime.engine import Meter, _batches

    loader = make_loader(ds, 4, shuffle=False, workers=2, seed=0, pin_memory=False)
    with pytest.raises(UserError) as info:
        list(_batches(loader, Meter(), torch.device("cpu")))
    message = str(info.value)
    assert message.startswith(f"unreadable image {tmp_path / 'a' / 'broken.jpg'}") and "\n" not in message


# --------------------------------------------------------------------------------------------
# What is decoded at all: raster formats only, and no shape whose resize would be huge
# --------------------------------------------------------------------------------------------
def _eps(path: Path) -> Path:
    """A PostScript file (PIL writes one without Ghostscript; reading its pixels would run Ghostscript)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path, format="EPS")
    return path


@pytest.fixture
def ghostscript_calls(monkeypatch) -> list:
    """Every call PIL makes to Ghostscript, refused (so a test never runs the program)."""
    from PIL import EpsImagePlugin

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    return calls


def test_postscript_under_an_image_name_is_skipped_and_never_handed_to_ghostscript(tmp_path, ghostscript_calls):
    _folder(tmp_path, {"a": 2, "b": 2})
    eps = _eps(tmp_path / "a" / "drawing.jpg")
    with pytest.warns(DataWarning, match="drawing.jpg"):
        ds = ImageFolderDataset(tmp_path, decode_transform(8))
    assert [p for p, _ in ds.skipped] == [eps]
    with pytest.raises(OSError, match="cannot identify image file"):
        load_rgb(eps)
    assert ghostscript_calls == []


def test_the_formats_decoded_are_one_list_of_raster_formats_and_the_extensions_follow_it():
    from alexnet.data import loaders

    assert {"JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP", "TGA"} <= set(loaders.RASTER_FORMATS)
    assert not {"EPS", "WMF", "MPEG", "PDF", "BUFR", "GRIB", "HDF5", "FITS"} & set(loaders.RASTER_FORMATS)
    assert (
        ".eps" not in loaders.IMG_EXTENSIONS
        and ".ps" not in loaders.IMG_EXTENSIONS
        and ".jpg" in loaders.IMG_EXTENSIONS
    )


def test_an_image_of_extreme_aspect_is_refused_from_its_header_and_skipped(tmp_path):
    """1x600,000 pixels is 1.8 kB of PNG and passes any pixel limit, but its shorter side resized to 256 makes
    the longer 153.6 million pixels: refused before decoding, and skipped by the folder loader."""
    from alexnet.data import loaders

    _folder(tmp_path, {"a": 2, "b": 2})
    thin = tmp_path / "a" / "thin.png"
    Image.new("L", (600_000, 1)).save(thin)
    assert thin.stat().st_size < 4000
    with pytest.raises(loaders.ImageShapeError, match="600000x1 .*over the limit"):
        load_rgb(thin)
    wide = tmp_path / "b" / "panorama.png"  # a wide panorama is still an image
    Image.new("RGB", (loaders.MAX_ASPECT * 3, 3)).save(wide)
    assert load_rgb(wide).size == (loaders.MAX_ASPECT * 3, 3)
    with pytest.warns(DataWarning, match="thin.png"):
        ds = ImageFolderDataset(tmp_path, decode_transform(8))
    assert [p for p, _ in ds.skipped] == [thin] and wide in {p for p, _ in ds.samples}
