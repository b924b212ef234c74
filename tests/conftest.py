"""Shared fixtures: tiny, learnable image folders written in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Three classes a small network separates in a few steps: a dominant colour plus noise.
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 60, 230)}


def write_images(folder: Path, per_class: int, *, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 25, (size, size, 3))
            pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i:03d}.png")
    return folder


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """DATA/train (8 per class) and DATA/val (3 per class), 40x40 RGB PNGs, three colour classes."""
    root = tmp_path / "data"
    write_images(root / "train", 8, seed=0)
    write_images(root / "val", 3, seed=1)
    return root


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Path:
    """A folder the OS refuses to create files in: a read-only folder, or (as root, whom permissions do
    not stop) a sysfs folder, which refuses new files even to root."""
    import os
    import tempfile

    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys/kernel")
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        yield folder
        return
    os.close(fd)
    os.unlink(probe)
    pytest.skip("no folder here refuses writes to root")
