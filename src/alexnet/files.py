"""Writing files so that a crash, a full disk or a read-only folder never leaves a half-written one."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import UserError

__all__ = ["atomic_write_bytes", "check_writable", "clean_stale_temp_files", "default_cache_dir", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"


def default_cache_dir() -> Path:
    """Where the bundled datasets and the measured mode timings are kept: ``$ALEXNET_CACHE``, else
    ``~/.cache/alexnet``."""
    return Path(os.environ.get("ALEXNET_CACHE") or Path.home() / ".cache" / "alexnet")


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and ``os.replace``.

    The new file gets the permissions an ordinary ``open`` would give it (0666 minus the umask), not
    ``mkstemp``'s private 0600. Any OS failure (disk full, read-only folder, a directory in the way)
    raises :class:`UserError` naming the path; the old file, if any, is left as it was.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, before long work, when ``path`` cannot be written: a directory is in the way, or its
    folder cannot be created or written to. Creates the folder; writes nothing else."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A real probe, not os.access: permissions do not tell a read-only mount or a full disk.
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from e


def clean_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files :func:`atomic_write_bytes` left in ``folder`` when a process was killed
    mid-write (``.<name>.<random>.tmp``). Call only when no other process writes there."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
