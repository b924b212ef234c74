"""The conversion job: pixels against PIL's resize, labels, unreadable sources, resuming after a kill."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from alexnet.cli import main
from alexnet.data import prepared
from alexnet.data.prepare import PrepareOptions, prepare_dataset
from alexnet.data.prepared import PreparedDataset
from alexnet.errors import UserError

RNG = np.random.default_rng(0)
SRC_ROOT = Path(__file__).resolve().parents[1] / "src"

# (height, width) of the sources: landscape, portrait, square, smaller than the stored size, odd sizes.
SHAPES = [(30, 50), (50, 30), (40, 40), (12, 20), (33, 47), (61, 29)]


def _smooth(h: int, w: int) -> np.ndarray:
    """A photo-like image: a colour gradient plus mild noise (JPEG-friendly, every level used)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(h + w - 2, 1)], -1)
    return np.clip(base + RNG.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _source(root: Path, splits: dict[str, dict[str, int]]) -> dict[str, list[tuple[Path, int]]]:
    """Image files in ``root/<split>/<class>/`` (PNG and JPEG, several shapes, one grayscale); returns
    each split's ``(path, label)`` in sorted order, as a reference for the prepared labels."""
    expected = {}
    for split, counts in splits.items():
        rows = []
        for label, (name, n) in enumerate(sorted(counts.items())):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = SHAPES[(i + label) % len(SHAPES)]
                pixels = _smooth(h, w)
                if i == 2:
                    path = folder / f"{i:03d}.png"
                    Image.fromarray(pixels[..., 0]).save(path)  # grayscale: stored as R = G = B
                elif i % 2:
                    path = folder / f"{i:03d}.jpg"
                    Image.fromarray(pixels).save(path, quality=95)
                else:
                    path = folder / f"{i:03d}.png"
                    Image.fromarray(pixels).save(path)
                rows.append((path, label))
        expected[split] = sorted(rows)
    return expected


def _reference(path: Path, size: int, mode: str, library: str = "torchvision") -> np.ndarray:
    """A direct resize of the source, shorter side ``size`` (the longer side truncated, as torchvision
    computes it), by torchvision's antialiased bilinear resize or PIL's bilinear one; for center-crop the
    central square."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    nw, nh = (int(size * w / h), size) if h <= w else (size, int(size * h / w))
    if library == "pil":
        out = np.asarray(im.resize((nw, nh), Image.Resampling.BILINEAR))
    else:
        chw = torch.from_numpy(np.array(im)).permute(2, 0, 1)
        out = torchvision.transforms.v2.functional.resize(chw, [nh, nw], antialias=True).permute(1, 2, 0).numpy()
    if mode == "center-crop":
        top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
        out = out[top : top + size, left : left + size]
    return out


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "src"
    return root, _source(root, {"train": {"cat": 5, "dog": 4, "eel": 3}, "val": {"cat": 2, "dog": 2, "eel": 2}})


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["shorter-side", "center-crop"])
def test_raw_pixels_are_pil_resizes_of_the_sources_and_labels_and_classes_are_kept(source, tmp_path, mode):
    src, expected = source
    dst = tmp_path / "dst"
    prepare_dataset(src, dst, PrepareOptions(size=24, mode=mode, shard_images=4), workers=0, quiet=True)
    manifest = prepared.read_manifest(dst)
    assert manifest["images"] == 18 and manifest["skipped"] == 0 and set(manifest["splits"]) == {"train", "val"}
    for split, rows in expected.items():
        ds = PreparedDataset(dst, split)
        assert ds.classes == ["cat", "dog", "eel"]
        assert ds.targets == [label for _, label in rows]
        assert len(manifest["splits"][split]["shards"]) == -(-len(rows) // 4)
        for i, (path, _) in enumerate(rows):
            stored = ds.image(i).permute(1, 2, 0).numpy().astype(int)
            reference = _reference(path, 24, mode)
            assert stored.shape == reference.shape, path
            assert np.abs(stored - reference).max() <= 1, path
            # PIL's resize: another implementation of the same filter, a level or two apart at most
            pil = np.abs(stored - _reference(path, 24, mode, "pil"))
            assert pil.max() <= 2 and pil.mean() < 0.25, path
            square, _ = ds[i]  # what training reads: the central 24 x 24 of it
            h, w = reference.shape[:2]
            top, left = int(round((h - 24) / 2)), int(round((w - 24) / 2))
            assert np.array_equal(square.permute(1, 2, 0).numpy(), stored[top : top + 24, left : left + 24])


def test_jpeg_shards_are_close_to_the_resized_sources_and_much_smaller(source, tmp_path):
    src, expected = source
    raw, jpeg = tmp_path / "raw", tmp_path / "jpeg"
    prepare_dataset(src, raw, PrepareOptions(size=24), workers=0, quiet=True)
    prepare_dataset(src, jpeg, PrepareOptions(size=24, encoding="jpeg", quality=95), workers=0, quiet=True)
    ds = PreparedDataset(jpeg, "train")
    errors = []
    for i, (path, _) in enumerate(expected["train"]):
        stored = ds.image(i).permute(1, 2, 0).numpy().astype(int)
        errors.append(np.abs(stored - _reference(path, 24, "shorter-side")).mean())
    assert max(errors) < 6  # JPEG at quality 95 of noisy 24-pixel images: a few levels on average
    assert prepared.read_manifest(jpeg)["bytes"] < prepared.read_manifest(raw)["bytes"]


def test_a_folder_without_splits_is_one_split_and_bundled_names_resolve(tmp_path):
    src = tmp_path / "flat"
    rows = _source(tmp_path / "tmp", {"x": {"a": 2, "b": 3}})["x"]
    for path, _ in rows:
        (src / path.parent.name).mkdir(parents=True, exist_ok=True)
        path.rename(src / path.parent.name / path.name)
    prepare_dataset(src, tmp_path / "dst", PrepareOptions(size=16), workers=0, quiet=True)
    ds = PreparedDataset(tmp_path / "dst", prepared.ALL)
    assert ds.classes == ["a", "b"] and ds.targets == [0, 0, 1, 1, 1]


def test_worker_processes_write_the_same_bytes_as_one_process(source, tmp_path):
    src, _ = source
    options = PrepareOptions(size=20, encoding="jpeg", shard_images=3)
    prepare_dataset(src, tmp_path / "one", options, workers=0, quiet=True)
    prepare_dataset(src, tmp_path / "two", options, workers=2, quiet=True)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


# --------------------------------------------------------------------------------------------
# Unreadable sources: verified here, once
# --------------------------------------------------------------------------------------------
def _break(folder: Path) -> list[Path]:
    """Three unreadable files: a JPEG cut in half, text named .png, an empty .jpg."""
    cut = folder / "cut.jpg"
    Image.fromarray(_smooth(32, 32)).save(cut, quality=90)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    text = folder / "text.png"
    text.write_text("not an image")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    return [cut, empty, text]


def test_unreadable_sources_are_listed_in_the_report_and_skipped(source, tmp_path, capsys):
    src, expected = source
    bad = _break(src / "train" / "dog")
    assert main(["prepare", str(src), str(tmp_path / "dst"), "--size", "16", "--workers", "0", "-q"]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 unreadable files" in out and "skipped.tsv" in out
    lines = (tmp_path / "dst" / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "path\treason" and sorted(line.split("\t")[0] for line in lines[1:]) == sorted(map(str, bad))
    assert all(line.split("\t")[1] for line in lines[1:])  # each with its reason
    ds = PreparedDataset(tmp_path / "dst", "train")
    assert len(ds) == len(expected["train"]) and ds.targets == [t for _, t in expected["train"]]
    assert prepared.read_manifest(tmp_path / "dst")["skipped"] == 3


def test_strict_makes_an_unreadable_source_an_error_naming_it_and_writes_no_manifest(source, tmp_path, capsys):
    src, _ = source
    _break(src / "val" / "eel")
    code = main(["prepare", str(src), str(tmp_path / "dst"), "--size", "16", "--workers", "0", "-q", "--strict"])
    assert code == 1
    err = capsys.readouterr().err
    assert "unreadable image" in err and str(src / "val" / "eel") in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dst" / prepared.MANIFEST).exists()
    with pytest.raises(UserError, match="unfinished"):
        PreparedDataset(tmp_path / "dst", "train")


def test_a_class_with_only_unreadable_files_is_an_error(tmp_path):
    (tmp_path / "src" / "good").mkdir(parents=True)
    Image.fromarray(_smooth(8, 8)).save(tmp_path / "src" / "good" / "a.png")
    (tmp_path / "src" / "bad").mkdir()
    (tmp_path / "src" / "bad" / "a.png").write_text("no")
    with pytest.raises(UserError, match="'bad'.*no readable images"):
        prepare_dataset(tmp_path / "src", tmp_path / "dst", workers=0, quiet=True)


# --------------------------------------------------------------------------------------------
# Destinations, re-runs, resuming
# --------------------------------------------------------------------------------------------
def test_a_destination_holding_other_files_or_inside_the_source_is_refused(source, tmp_path):
    src, _ = source
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="other files"):
        prepare_dataset(src, tmp_path / "busy", workers=0, quiet=True)
    with pytest.raises(UserError, match="inside the source"):
        prepare_dataset(src, src / "prepared", workers=0, quiet=True)
    assert main(["prepare", str(src), str(tmp_path / "busy"), "-q"]) == 1  # the folder, not a flag: exit status 1
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_running_again_does_nothing_and_other_options_do_not_overwrite(source, tmp_path):
    src, _ = source
    dst = tmp_path / "dst"
    prepare_dataset(src, dst, PrepareOptions(size=16), workers=0, quiet=True)
    before = _files(dst)
    assert prepare_dataset(src, dst, PrepareOptions(size=16), workers=0, quiet=True)["converted"] == 0
    with pytest.raises(UserError, match="already holds a prepared dataset"):
        prepare_dataset(src, dst, PrepareOptions(size=20), workers=0, quiet=True)
    assert _files(dst) == before


def test_a_prepare_killed_half_way_finishes_on_the_next_run_with_the_uninterrupted_result(source, tmp_path):
    """A named pipe among the sources blocks the conversion at its shard (opening it waits for a writer):
    the job is then SIGKILLed with some shards written and one half-written; the next run, with the pipe
    replaced by the image it stood for, must give the same files as a run that was never interrupted."""
    src, expected = source
    blocker = expected["train"][6][0]  # in the second of three train shards
    saved = blocker.read_bytes()
    blocker.unlink()
    os.mkfifo(blocker)
    dst = tmp_path / "dst"
    env = {**os.environ, "PYTHONPATH": str(SRC_ROOT)}
    command = [sys.executable, "-m", "alexnet", "prepare", str(src), str(dst), "--size", "20", "--shard-images", "4"]
    job = subprocess.Popen([*command, "--workers", "0", "-q"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (dst / "train" / "00000.shard").exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
        time.sleep(0.2)
        assert job.poll() is None, "the job should be blocked on the pipe"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert (dst / "train" / "00000.shard").exists() and not (dst / prepared.MANIFEST).exists()
    assert list((dst / "train").glob(".*.tmp"))  # the shard it was writing, left under its temporary name
    with pytest.raises(UserError, match="unfinished"):
        PreparedDataset(dst, "train")
    blocker.unlink()
    blocker.write_bytes(saved)
    result = prepare_dataset(src, dst, PrepareOptions(size=20, shard_images=4), workers=0, quiet=True)
    assert 0 < result["converted"] < result["images"]  # the first shard was not converted again
    prepare_dataset(src, tmp_path / "straight", PrepareOptions(size=20, shard_images=4), workers=0, quiet=True)
    done = _files(dst)
    assert done == _files(tmp_path / "straight") and not any(".tmp" in name for name in done)


def test_a_resumed_prepare_redoes_the_shards_whose_sources_changed_since(source, tmp_path):
    src, expected = source
    broken = expected["train"][6][0]  # in the second shard: a --strict run stops there, keeping the first
    saved = broken.read_bytes()
    broken.write_bytes(b"broken")
    options = PrepareOptions(size=20, shard_images=4)
    with pytest.raises(UserError, match="unreadable image"):
        prepare_dataset(src, tmp_path / "dst", options, workers=0, strict=True, quiet=True)
    assert (tmp_path / "dst" / "train" / "00000.shard").exists()
    broken.write_bytes(saved)
    edited = expected["train"][0][0]  # a source of the shard already written
    Image.fromarray(_smooth(44, 21)).save(edited)
    prepare_dataset(src, tmp_path / "dst", options, workers=0, quiet=True)
    prepare_dataset(src, tmp_path / "straight", options, workers=0, quiet=True)
    assert _files(tmp_path / "dst") == _files(tmp_path / "straight")


def test_a_source_edited_in_place_at_the_same_size_is_converted_again_on_resume(tmp_path):
    src = tmp_path / "src"
    for name in ("a", "b"):
        (src / name).mkdir(parents=True)
        for i in range(3):  # BMP: the file size depends only on the image size
            Image.fromarray(_smooth(20, 30)).save(src / name / f"{i}.bmp")
    edited = src / "a" / "0.bmp"
    options = PrepareOptions(size=10, shard_images=2)  # shards [a/0, a/1], [a/2, b/0], [b/1, b/2]
    (src / "b" / "2.bmp").write_bytes(b"broken")
    with pytest.raises(UserError, match="unreadable image"):  # --strict stops at the last shard, keeping two
        prepare_dataset(src, tmp_path / "dst", options, workers=0, strict=True, quiet=True)
    Image.fromarray(_smooth(20, 30)).save(src / "b" / "2.bmp")
    before = edited.stat()
    Image.fromarray(_smooth(20, 30)).save(edited)  # other pixels, the same number of bytes, a later mtime
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert edited.stat().st_size == before.st_size
    result = prepare_dataset(src, tmp_path / "dst", options, workers=0, quiet=True)
    assert result["converted"] == 4  # the last shard, and the first, written from the old pixels
    prepare_dataset(src, tmp_path / "straight", options, workers=0, quiet=True)
    assert _files(tmp_path / "dst") == _files(tmp_path / "straight")


def test_a_stray_journal_folder_does_not_make_prepare_delete_or_overwrite_a_users_files(source, tmp_path):
    """A folder holding a ``.prepare`` folder passes for an unfinished job; prepare may then delete or replace
    only what its journal recorded writing there."""
    src, _ = source
    dst = tmp_path / "u"
    (dst / prepared.JOURNAL).mkdir(parents=True)
    (dst / prepared.JOURNAL / "notes.txt").write_text("mine")
    (dst / "train").mkdir()
    mine = {"train/00007.shard": "mine", "train/.draft.tmp": "mine", "train/00000.shard": "mine"}
    for name, text in mine.items():
        (dst / name).write_text(text)
    options = PrepareOptions(size=16, shard_images=4)
    with pytest.raises(UserError, match=rf"{dst / 'train' / '00000.shard'} is no shard this job wrote"):
        prepare_dataset(src, dst, options, workers=0, quiet=True)
    (dst / "train" / "00000.shard").unlink()
    del mine["train/00000.shard"]
    prepare_dataset(src, dst, options, workers=0, quiet=True)
    assert all((dst / name).read_text() == text for name, text in mine.items())
    assert (dst / prepared.JOURNAL / "notes.txt").read_text() == "mine"
    assert len(PreparedDataset(dst, "train")) == 12


def test_shards_of_an_unfinished_longer_plan_are_deleted_as_the_journal_recorded_them(source, tmp_path):
    src, expected = source
    broken = expected["train"][-1][0]  # in the last train shard: a --strict run writes the ones before it
    saved = broken.read_bytes()
    broken.write_bytes(b"broken")
    with pytest.raises(UserError, match="unreadable image"):
        prepare_dataset(
            src, tmp_path / "dst", PrepareOptions(size=16, shard_images=2), strict=True, workers=0, quiet=True
        )
    assert (tmp_path / "dst" / "train" / "00004.shard").exists()
    broken.write_bytes(saved)
    options = PrepareOptions(size=16, shard_images=4)  # 3 train shards now: 00003-00005 are stale
    prepare_dataset(src, tmp_path / "dst", options, workers=0, quiet=True)
    prepare_dataset(src, tmp_path / "straight", options, workers=0, quiet=True)
    assert _files(tmp_path / "dst") == _files(tmp_path / "straight")


def test_postscript_and_extreme_aspects_among_the_sources_are_skipped_and_listed(source, tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    src, expected = source
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args) or 1 / 0)
    Image.new("RGB", (8, 8)).save(src / "train" / "cat" / "drawing.png", format="EPS")
    Image.new("L", (100_000, 1)).save(src / "train" / "dog" / "strip.png")  # 1.6 Mpixel at 16 px
    prepare_dataset(src, tmp_path / "dst", PrepareOptions(size=16), workers=0, quiet=True)
    lines = (tmp_path / "dst" / "skipped.tsv").read_text().splitlines()[1:]
    reasons = {Path(line.split("\t")[0]).name: line.split("\t")[1] for line in lines}
    assert set(reasons) == {"drawing.png", "strip.png"} and calls == []
    assert "cannot identify image file" in reasons["drawing.png"]
    assert "100000x1 pixels is over the limit of 100:1" in reasons["strip.png"]
    assert len(PreparedDataset(tmp_path / "dst", "train")) == len(expected["train"])
    # Within the limit, but longer at 660 px than a shard's index holds (int(660 * 699 / 7) = 65905 > 65535)
    for name, (w, h) in {"a/small.png": (4, 4), "b/small.png": (4, 4), "b/wide.png": (699, 7)}.items():
        (tmp_path / "src2" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h)).save(tmp_path / "src2" / name)
    prepare_dataset(tmp_path / "src2", tmp_path / "dst2", PrepareOptions(size=660), workers=0, quiet=True)
    [line] = (tmp_path / "dst2" / "skipped.tsv").read_text().splitlines()[1:]
    assert line.startswith(str(tmp_path / "src2" / "b" / "wide.png"))
    assert "699x7 pixels would be 65905 pixels long at 660, over the 65535 a shard's index holds" in line


def test_a_full_disk_is_one_clear_error_and_leaves_no_half_shard(source, tmp_path, monkeypatch):
    src, _ = source

    def full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepared.ShardWriter, "add", full)
    with pytest.raises(UserError, match=r"cannot write .*00000\.shard: No space left on device"):
        prepare_dataset(src, tmp_path / "dst", workers=0, quiet=True)
    assert not [p for p in (tmp_path / "dst").rglob("*") if p.is_file()]


def test_a_converting_process_that_dies_is_one_clear_error_and_the_next_run_finishes(source, tmp_path, monkeypatch):
    src, _ = source
    from alexnet.data import prepare

    convert = prepare._convert

    def dies_on_the_second_shard(task, *args):
        if task.split == "train" and task.number == 1:
            os._exit(1)  # as if killed by the OS
        return convert(task, *args)

    monkeypatch.setattr(prepare, "_convert", dies_on_the_second_shard)
    options = PrepareOptions(size=16, shard_images=4)
    with pytest.raises(UserError, match="a converting process died"):
        prepare_dataset(src, tmp_path / "dst", options, workers=2, quiet=True)
    monkeypatch.setattr(prepare, "_convert", convert)
    prepare_dataset(src, tmp_path / "dst", options, workers=2, quiet=True)
    prepare_dataset(src, tmp_path / "straight", options, workers=0, quiet=True)
    assert _files(tmp_path / "dst") == _files(tmp_path / "straight")
