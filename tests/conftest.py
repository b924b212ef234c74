"""Shared fixtures: tiny, learnable image folders written in tmp_path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Under pytest-xdist (`make test` runs two workers) each worker gets its share of the cores, it and the
# processes its tests start: two workers with a thread per core each would fight over every core.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

# The modes' measured timings go to a file of this test session's own, not the user's cache: a test never
# depends on what an earlier run measured, and the processes it starts (torchrun) share the file.
os.environ["ALEXNET_MODE_CACHE"] = str(Path(tempfile.mkdtemp(prefix="alexnet-modes-")) / "modes.json")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run where there is a CUDA device and are skipped, saying so, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA/train and DATA/val with 16 images per class each: enough held-out images for a 99% rule."""
    root = tmp_path_factory.mktemp("colours")
    write_images(root / "train", 16, seed=0)
    write_images(root / "val", 16, seed=1)
    return root


def prepared(path: Path, card) -> torch.Tensor:  # noqa: ANN001 - a ModelCard
    """An image file as a model with ``card`` takes it, written out by hand: shorter side to the resize size
    (antialiased), the central square, the central crop, then ``(x / 255 - mean) / std``."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    x = TF.pil_to_tensor(Image.open(path).convert("RGB"))
    x = TF.center_crop(TF.resize(x, card.resize_size, antialias=True), [card.resize_size] * 2)
    x = TF.center_crop(x, [card.input_size] * 2).float() / 255
    return (x - torch.tensor(card.mean).view(3, 1, 1)) / torch.tensor(card.std).view(3, 1, 1)


@pytest.fixture(scope="session")
def colour_classifier(colour_data: Path):
    """(alexnet_small separating the colour classes, its card): random features with fc8 fitted to the
    training images by least squares, a classifier in one solve, with decisive margins."""
    from alexnet import create_model
    from alexnet.models.registry import get_spec

    card = get_spec("alexnet_small").card.trained("alexnet_small", sorted(COLOURS))
    files = [(p, t) for t, name in enumerate(card.classes) for p in sorted((colour_data / "train" / name).iterdir())]
    images = torch.stack([prepared(p, card) for p, _ in files])
    targets = torch.tensor([t for _, t in files])
    torch.manual_seed(0)
    model = create_model("alexnet_small", len(card.classes)).eval()
    fc8 = model.classifier[-1]
    features = torch.nn.Sequential(*model.features, model.avgpool, torch.nn.Flatten(1), *list(model.classifier)[:-1])
    with torch.no_grad():
        f = torch.cat([features(images), torch.ones(len(images), 1)], 1)
        wanted = torch.nn.functional.one_hot(targets, len(card.classes)).float() * 10 - 5
        solution = torch.linalg.lstsq(f, wanted).solution
        fc8.weight.copy_(solution[:-1].T)
        fc8.bias.copy_(solution[-1])
    return model, card
