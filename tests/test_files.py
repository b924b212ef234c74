"""Atomic writes: the old file survives any failure, the new one has ordinary permissions, and a
killed writer's temporary files are cleaned up."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from alexnet.errors import UserError
from alexnet.files import atomic_write_bytes, check_writable, clean_stale_temp_files


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "last.safetensors"
    target.write_bytes(b"old")

    class Boom:
        def __bytes__(self):  # pragma: no cover - never reached
            raise AssertionError

    with pytest.raises(TypeError):
        atomic_write_bytes(target, Boom())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left behind


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_written_file_has_the_permissions_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "metrics.jsonl", b"{}\n")
        (tmp_path / "plain.txt").write_bytes(b"")  # what an ordinary open() gives, for comparison
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "metrics.jsonl").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


def test_a_full_disk_is_one_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.safetensors"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=f"cannot write {target}: No space left on device"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_an_unwritable_folder_is_one_clear_error(unwritable_dir):
    with pytest.raises(UserError, match=f"cannot write {unwritable_dir / 'x.json'}"):
        atomic_write_bytes(unwritable_dir / "x.json", b"{}")
    with pytest.raises(UserError, match="cannot write"):
        check_writable(unwritable_dir / "model.onnx")


def test_a_directory_in_the_way_is_one_clear_error(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        check_writable(tmp_path / "model.onnx")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_bytes(tmp_path / "model.onnx", b"x")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UserError, match="cannot write"):
        check_writable(tmp_path / "file" / "model.onnx")  # a file where a folder should be


def test_check_writable_writes_nothing(tmp_path):
    check_writable(tmp_path / "sub" / "model.onnx")
    assert (tmp_path / "sub").is_dir() and list((tmp_path / "sub").iterdir()) == []


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path):
    stale = tmp_path / ".last.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = [tmp_path / "last.safetensors", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in keep:
        p.write_bytes(b"")
    assert clean_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
    assert clean_stale_temp_files(tmp_path / "missing") == []
