"""Input-pipeline benchmark: ready training batches per second per core, from JPEG files and from prepared shards.

    python benchmarks/data_pipeline.py [--images 320] [--rounds 3] [--json] [--no-train] [--readme README.md]

Generates ImageNet-like JPEGs (500x375 or 375x500, quality 90: crops of the real photographs scikit-image and
scikit-learn ship, with a little sensor noise) in a temporary folder, then times, on one core (one torch
thread, the loader in the main process), whole epochs of batches of 64 ready for the network (cropped to
224, flipped, normalised float tensors) through:

  (a) torchvision: ImageFolder + RandomResizedCrop(224) + flip + ToTensor + Normalize (the common pipeline)
  (b) torchvision: the paper's resize to 256 (centre 256x256) + random 224 crop + flip + ToTensor + Normalize
  (f) alexnet's image-folder loader: decode + down-sample to 256 in the loader, crop/flip/normalise per batch
  (c) alexnet's prepared loader in each format (see ``alexnet prepare``), crop/flip/normalise per batch

Pipelines alternate within each round; a round's ratio divides a pipeline's images/s by (a)'s in the same
round, and the table shows medians over rounds. ``--json`` prints the result as the last line. Unless
``--no-train``, it also times ``alexnet train`` (model ``alexnet``, batch 64, ``--precision auto``: never bf16
where the CPU would emulate it, two loader workers) from the JPEG folder and from the prepared dataset,
alternating, in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from alexnet.bench.report import write_block
from alexnet.data import loaders, prepared
from alexnet.data.prepare import DEFAULT_ENCODING, PrepareOptions, prepare_dataset
from alexnet.models.card import IMAGENET_MEAN, IMAGENET_STD

BATCH = 64
CROP = 224
RESIZE = 256
FORMATS = [  # (name, encoding, mode); the first is the default of `alexnet prepare`
    ("raw", "raw", "shorter-side"),
    ("raw-square", "raw", "center-crop"),
    ("jpeg", "jpeg", "shorter-side"),
    ("jpeg-square", "jpeg", "center-crop"),
]
assert FORMATS[0][1] == DEFAULT_ENCODING
MARKERS = ("<!-- data-bench:start -->", "<!-- data-bench:end -->")


# --------------------------------------------------------------------------------------------
# ImageNet-like JPEGs
# --------------------------------------------------------------------------------------------
def make_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs in ``root/<photo>/``: random crops (half to all of the shorter side) of the bundled
    photographs, 500x375 (one in five 375x500), bicubic, plus Gaussian noise of sigma 3, quality 90."""
    from alexnet.data.datasets import PHOTO_SOURCES

    rng = np.random.default_rng(seed)
    photos = {}
    for name, load in sorted(PHOTO_SOURCES.items()):
        a = load()
        photos[name] = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    names = sorted(photos)
    for i in range(n):
        name = names[i % len(names)]
        a = photos[name]
        h, w = a.shape[:2]
        width, height = (375, 500) if rng.random() < 0.2 else (500, 375)
        ch = int(min(h, w * height / width) * rng.uniform(0.5, 1.0))
        cw = int(ch * width / height)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        im = Image.fromarray(a[y : y + ch, x : x + cw]).resize((width, height), Image.Resampling.BICUBIC)
        noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, 3, (height, width, 3))
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(root / name / f"{i:05d}.jpg", quality=90)
    return root


# --------------------------------------------------------------------------------------------
# The pipelines: each returns a function that runs one epoch and returns the images delivered
# --------------------------------------------------------------------------------------------
def _torchvision(src: Path, paper: bool) -> Callable[[], int]:
    from torchvision import datasets
    from torchvision import transforms as T

    crop = [T.Resize(RESIZE), T.CenterCrop(RESIZE), T.RandomCrop(CROP)] if paper else [T.RandomResizedCrop(CROP)]
    transform = T.Compose([*crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ds = datasets.ImageFolder(str(src), transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)

    def epoch() -> int:
        n = 0
        for images, _ in loader:
            n += images.shape[0]
        return n

    return epoch


def _ours(ds: torch.utils.data.Dataset) -> Callable[[], int]:
    loader = loaders.make_loader(ds, BATCH, shuffle=True, workers=0, pin_memory=False)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)

    def epoch() -> int:
        n = 0
        for batch in loader:
            x = loaders.batch_augment(batch.images, crop=CROP, flip=True, pca=None, mean=mean, std=std)
            n += x.shape[0]
        return n

    return epoch


def _time(epoch: Callable[[], int]) -> float:
    start = time.perf_counter()
    n = epoch()
    return n / (time.perf_counter() - start)


def _folder_bytes(src: Path) -> float:
    files = [p for p in src.rglob("*.jpg")]
    return sum(p.stat().st_size for p in files) / len(files)


def measure(src: Path, work: Path, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Images/s per core of every pipeline (medians over rounds), their ratios to (a), bytes per image."""
    torch.set_num_threads(1)
    n_images = sum(1 for _ in src.rglob("*.jpg"))
    rows: list[dict[str, Any]] = []
    source_bytes = _folder_bytes(src)
    pipelines: dict[str, tuple[Callable[[], int], float]] = {
        "(a) torchvision RandomResizedCrop(224)": (_torchvision(src, paper=False), source_bytes),
        "(b) torchvision Resize(256) + RandomCrop(224)": (_torchvision(src, paper=True), source_bytes),
    }
    start = time.perf_counter()
    folder = loaders.ImageFolderDataset(src, loaders.decode_transform(RESIZE))
    scan = (time.perf_counter() - start) / len(folder)
    pipelines["(f) alexnet image folder"] = (_ours(folder), source_bytes)
    prepare_rates = {}
    for name, encoding, mode in FORMATS:
        dst = work / name
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            result = prepare_dataset(src, dst, PrepareOptions(RESIZE, mode, encoding), workers=0, quiet=True)
        prepare_rates[name] = n_images / (time.perf_counter() - start)
        ds = prepared.PreparedDataset(dst, prepared.ALL, resize=RESIZE)
        pipelines[f"(c) prepared {name}"] = (_ours(ds), result["bytes"] / result["images"])
    log(f"prepared {len(FORMATS)} formats; timing {len(pipelines)} pipelines x {rounds} rounds")
    speeds: dict[str, list[float]] = {k: [] for k in pipelines}
    ratios: dict[str, list[float]] = {k: [] for k in pipelines}
    names = list(pipelines)
    for r in range(rounds):
        # a -> others -> a: each round's ratio uses (a)'s mean either side of it
        before = _time(pipelines[names[0]][0])
        got = {k: _time(pipelines[k][0]) for k in names[1:]}
        after = _time(pipelines[names[0]][0])
        base = (before + after) / 2
        speeds[names[0]] += [before, after]
        for k, v in got.items():
            speeds[k].append(v)
            ratios[k].append(v / base)
        ratios[names[0]].append(1.0)
        log(f"round {r + 1}/{rounds}: (a) {base:.0f} img/s, " + ", ".join(f"{k[:3]} {v:.0f}" for k, v in got.items()))
    for k, (_, nbytes) in pipelines.items():
        rows.append(
            {
                "pipeline": k,
                "images_per_s_per_core": statistics.median(speeds[k]),
                "bytes_per_image": nbytes,
                "ratio": statistics.median(ratios[k]),
                "ratio_range": [min(ratios[k]), max(ratios[k])],
            }
        )
    default = f"(c) prepared {FORMATS[0][0]}"
    return {
        "rows": rows,
        "ratio_prepared_to_torchvision": statistics.median(ratios[default]),
        "default_format": FORMATS[0][0],
        "images": n_images,
        "rounds": rounds,
        "prepare_images_per_s_per_core": prepare_rates,
        "folder_scan_ms_per_file": scan * 1e3,
    }


# --------------------------------------------------------------------------------------------
# End to end: `alexnet train` from the JPEG folder and from the prepared dataset
# --------------------------------------------------------------------------------------------
def end_to_end(src: Path, dst: Path, work: Path, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """``alexnet train`` images/s (the second epoch's) from the JPEG folder and the prepared dataset, and the
    time each takes to open its data (the folder's scan verifies every file)."""
    from alexnet.models.checkpoint import read_metadata
    from alexnet.training.distributed import Context
    from alexnet.training.recipes import resolve_config
    from alexnet.training.train import fit, load_data

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    # auto: the training mode measured fastest here (never bf16 where the CPU would only emulate it); the
    # first run measures, the others read the timing cache, so every run trains in the same mode.
    flags = {"model": "alexnet", "batch_size": BATCH, "precision": "auto", "epochs": 2, "workers": 2, "device": "cpu"}
    cfg = resolve_config("torchvision", None, flags)
    out: dict[str, list[float]] = {"folder": [], "prepared": [], "folder_open_s": [], "prepared_open_s": []}
    modes: set[str | None] = set()
    for r in range(rounds):
        for name, root in (("folder", src), ("prepared", dst)):
            start = time.perf_counter()
            load_data(root, work, cfg, Context())
            out[f"{name}_open_s"].append(time.perf_counter() - start)
            with contextlib.redirect_stderr(io.StringIO()):
                history = fit(root, work / f"run-{name}-{r}", cfg, quiet=True)["history"]
            out[name].append(history[-1]["images_per_s"])  # the second epoch: loaders and allocator warm
            modes.add(read_metadata(work / f"run-{name}-{r}" / "checkpoints" / "last.safetensors").get("training_mode"))
            log(f"train round {r + 1}/{rounds}: {name} {history[-1]['images_per_s']:.1f} img/s")
    ratios = [p / f for p, f in zip(out["prepared"], out["folder"], strict=True)]
    return {
        "model": "alexnet",
        "batch_size": BATCH,
        "precision": "auto: " + ", ".join(sorted(str(m) for m in modes)),
        "workers": 2,
        "folder_images_per_s": statistics.median(out["folder"]),
        "prepared_images_per_s": statistics.median(out["prepared"]),
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "folder_open_s": statistics.median(out["folder_open_s"]),
        "prepared_open_s": statistics.median(out["prepared_open_s"]),
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def machine() -> str:
    """The machine, and how busy it was: the numbers are ratios within a run for a reason."""
    from alexnet.runtime.machine import describe_machine, machine_info

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{describe_machine(machine_info('cpu'))}, load average {load:.1f} at the start"


def format_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Measured {result['date']} by `python benchmarks/data_pipeline.py` on {result['machine']}: "
        f"{result['images']} generated JPEGs (500x375, quality 90, {result['source_kb']:.0f} kB on average), "
        f"{result['rounds']} rounds, one core, batches of {BATCH} cropped to {CROP}, flipped and normalised.",
        "",
        "| pipeline | images/s per core | vs (a) | bytes per image |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        lo, hi = row["ratio_range"]
        spread = f" ({lo:.2f}-{hi:.2f})" if row["ratio"] != 1.0 else ""
        lines.append(
            f"| {row['pipeline']} | {row['images_per_s_per_core']:.0f} | {row['ratio']:.2f}x{spread} | "
            f"{row['bytes_per_image'] / 1e3:.1f} kB |"
        )
    lines += [
        "",
        f"Prepared ({result['default_format']}, the default) over (a): "
        f"**{result['ratio_prepared_to_torchvision']:.1f}x** "
        "(goal 5x). Converting (`alexnet prepare`, one process): "
        + ", ".join(f"{k} {v:.0f}" for k, v in result["prepare_images_per_s_per_core"].items())
        + f" images/s per core. The image-folder loader's start-up scan: {result['folder_scan_ms_per_file']:.2f} ms "
        "per file, before the first step of every run.",
    ]
    e2e = result.get("end_to_end")
    if e2e:
        lo, hi = e2e["ratio_range"]
        lines += [
            "",
            f"`alexnet train` ({e2e['model']}, batch {e2e['batch_size']}, {e2e['precision']}, {e2e['workers']} loader "
            f"workers, both cores): {e2e['folder_images_per_s']:.1f} images/s from the JPEG folder, "
            f"{e2e['prepared_images_per_s']:.1f} from the prepared dataset: **{e2e['ratio']:.2f}x** "
            f"({lo:.2f}-{hi:.2f}). Opening the data (`train.load_data`): {e2e['folder_open_s']:.2f} s for the "
            f"folder, {e2e['prepared_open_s']:.2f} s for the prepared dataset.",
        ]
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=320, help="JPEGs to generate (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every pipeline (default: %(default)s)")
    p.add_argument("--train-rounds", type=int, default=1, help="rounds of the training runs (default: %(default)s)")
    p.add_argument("--no-train", action="store_true", help="skip the end-to-end training comparison")
    p.add_argument("--json", action="store_true", help="print the result as JSON, as the last line")
    p.add_argument("--output", default=str(Path(__file__).with_name("data_pipeline.json")), help="JSON file to keep")
    p.add_argument("--readme", help="rewrite the block between the data-bench markers of this file")
    args = p.parse_args(list(argv) if argv is not None else None)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="data-bench-") as tmp:
        work = Path(tmp)
        log(f"writing {args.images} JPEGs to {work / 'src'}")
        src = make_jpegs(work / "src", args.images)
        result["source_kb"] = _folder_bytes(src) / 1e3
        result.update(measure(src, work, args.rounds, log))
        if not args.no_train:
            result["end_to_end"] = end_to_end(src, work / FORMATS[0][0], work, args.train_rounds, log)
    block = format_markdown(result)
    print(block)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    if args.readme and not write_block(args.readme, *MARKERS, block):
        log(f"{args.readme} has no {MARKERS[0]} ... {MARKERS[1]} block: not updated")
    if args.json:
        rows = [{k: r[k] for k in ("pipeline", "images_per_s_per_core", "bytes_per_image")} for r in result["rows"]]
        print(json.dumps({**result, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
