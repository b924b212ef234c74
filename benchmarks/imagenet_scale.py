"""ImageNet's scale, measured: `alexnet prepare` straight from the ILSVRC-2012 archives against the same images
extracted, memory against the number of images, bytes per image, time from `alexnet train` to its first step;
each extrapolated to ImageNet's 1,281,167 training and 50,000 validation images.

    python benchmarks/imagenet_scale.py [--sizes 4:2000,10:10000] [--work DIR] [--json] [--readme README.md]

Writes synthetic archives in the exact layout (ILSVRC2012_img_train.tar of 1,000 per-synset tars named by
ImageNet's wnids, ILSVRC2012_img_val.tar of flat ILSVRC2012_val_*.JPEG, ILSVRC2012_devkit_t12.tar.gz with a
meta.mat whose ILSVRC2012_IDs are not in wnid order and the ground truth), at each size in ``--sizes``
(images per synset : validation images), and the same images extracted into train/<wnid>/ and val/<wnid>/
folders. The JPEGs are crops of the photographs scikit-image and scikit-learn ship, at ImageNet's usual sizes
(500x375 and its relatives, a few larger), quality 95 with sensor noise (about ImageNet's 110 kB on average);
a few are CMYK, grayscale or PNG files named .JPEG, as in the real set. A pool of distinct images is reused
across synsets (decoding costs the same; only throughput and memory are measured).

At each size, in subprocesses (the figures are what a user's command costs):
  - `alexnet prepare` on one core (--workers 1), from the archives and from the folders, alternating twice:
    images/s per core and peak memory;
  - the plan alone (listing the tars; the folders' scan): seconds and memory above the imports;
  - opening the prepared dataset (train.load_data's call): memory above the imports;
  - `alexnet train DST` (the default recipe) until its first optimiser step: seconds from the command's start
    (and within them, opening the data with its PCA), peak memory; a first run at the first size, not counted,
    pays the training mode's timing, which is cached per machine.
Memory is anonymous memory polled from /proc every 0.1 s: the pages of memory-mapped shards a process has read
are the OS's file cache (reclaimable) and are left out. Memory and times are fitted as a + b x images over the
sizes and extrapolated to ImageNet. The archives are read from the page cache here (just written): a disk would
add its own limit, the same for both sources.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alexnet.bench.report import write_block
from alexnet.data.imagenet import imagenet_words

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
MARKERS = ("<!-- imagenet-bench:start -->", "<!-- imagenet-bench:end -->")
# (width, height) of ImageNet-like photos and how often each comes
SHAPES = [((500, 375), 40), ((375, 500), 15), ((500, 333), 20), ((500, 500), 10), ((333, 500), 5),
          ((400, 300), 5), ((800, 600), 4), ((1024, 768), 1)]  # fmt: skip
POOL = 400  # distinct JPEGs
MTIME = 1_330_000_000


# --------------------------------------------------------------------------------------------
# The synthetic archives
# --------------------------------------------------------------------------------------------
def make_pool(n: int = POOL, seed: int = 0) -> list[bytes]:
    """``n`` JPEG files: ImageNet's shapes, quality 95 plus noise; the last few CMYK, grayscale and a PNG."""
    from alexnet.data.datasets import PHOTO_SOURCES

    rng = np.random.default_rng(seed)
    photos = []
    for load in PHOTO_SOURCES.values():
        a = load()
        photos.append(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])
    shapes = [s for s, weight in SHAPES for _ in range(weight)]
    pool = []
    for i in range(n):
        a = photos[i % len(photos)]
        h, w = a.shape[:2]
        width, height = shapes[int(rng.integers(len(shapes)))]
        ch = int(min(h, w * height / width) * rng.uniform(0.5, 1.0))
        cw = int(ch * width / height)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        im = Image.fromarray(a[y : y + ch, x : x + cw]).resize((width, height), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(im, dtype=np.float32) + rng.normal(0, 7, (height, width, 3)), 0, 255)
        im = Image.fromarray(noisy.astype(np.uint8))
        out = io.BytesIO()
        if i >= n - 1:
            im.save(out, "PNG")  # a PNG under a .JPEG name
        elif i >= n - 3:
            im.convert("CMYK").save(out, "JPEG", quality=95)
        elif i >= n - 8:
            im.convert("L").save(out, "JPEG", quality=95)
        else:
            im.save(out, "JPEG", quality=95)
        pool.append(out.getvalue())
    return pool


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), MTIME
    tar.addfile(info, io.BytesIO(data))


def _meta_mat(wnids: list[str], words: dict[str, str], ids: dict[str, int]) -> bytes:
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]  # fmt: skip
    rows = sorted((ids[w], w, words[w], "", 0, np.zeros((1, 0)), 0, 1300) for w in wnids)
    rows.append((len(wnids) + 1, "n00001740", "entity", "", 3, np.array([1, 2, 3]), 18, 0))  # an inner node
    out = io.BytesIO()
    savemat(out, {"synsets": np.array(rows, dtype=[(f, "O") for f in fields]).reshape(-1, 1)})
    return out.getvalue()


def write_imagenet(root: Path, per_synset: int, val: int, pool: list[bytes], seed: int = 0) -> dict[str, Any]:
    """``root/archives`` (train tar of tars, val tar, devkit) and ``root/folders`` (the same images extracted)."""
    rng = np.random.default_rng(seed)
    words = imagenet_words()
    wnids = list(words)
    ids = {w: int(i) + 1 for w, i in zip(wnids, rng.permutation(len(wnids)), strict=True)}  # not wnid order
    archives, folders = root / "archives", root / "folders"
    archives.mkdir(parents=True)
    k = total = 0
    with tarfile.open(archives / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as outer:
        for wnid in rng.permutation(wnids):  # the tar's own order, not sorted
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for n in rng.choice(20000, per_synset, replace=False):
                    name, data = f"{wnid}_{n}.JPEG", pool[k % len(pool)]
                    _add(tar, name, data)
                    (folders / "train" / wnid).mkdir(parents=True, exist_ok=True)
                    (folders / "train" / wnid / name).write_bytes(data)
                    k, total = k + 1, total + len(data)
            _add(outer, f"{wnid}.tar", inner.getvalue())
    # every class in the validation set, as in ImageNet's (50 each): train and val must hold the same classes
    truth = [ids[wnids[int(i) % len(wnids)]] for i in rng.permutation(val)]
    by_id = {i: w for w, i in ids.items()}
    with tarfile.open(archives / "ILSVRC2012_img_val.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(1, val + 1):
            name, data = f"ILSVRC2012_val_{i:08d}.JPEG", pool[k % len(pool)]
            _add(tar, name, data)
            (folders / "val" / by_id[truth[i - 1]]).mkdir(parents=True, exist_ok=True)
            (folders / "val" / by_id[truth[i - 1]] / name).write_bytes(data)
            k, total = k + 1, total + len(data)
    with tarfile.open(archives / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", _meta_mat(wnids, words, ids))
        _add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
             "".join(f"{t}\n" for t in truth).encode())  # fmt: skip
    return {"train": per_synset * len(wnids), "val": val, "source_bytes": total}


# --------------------------------------------------------------------------------------------
# Measuring a command: seconds, and memory polled from /proc
# --------------------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command``; its seconds and peak memory (MB): the main process's anonymous memory (its own: the
    pages of memory-mapped shards it has read are the OS's file cache, reclaimable, and left out) and the
    process tree's proportional share of it (loader and converting workers included), polled every 0.1 s."""
    begin = time.perf_counter()
    job = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    anon = tree = 0
    while job.poll() is None:
        anon = max(anon, _kb(f"/proc/{job.pid}/status", "RssAnon:"))
        tree = max(tree, sum(_kb(f"/proc/{p}/smaps_rollup", "Pss_Anon:") for p in _tree(job.pid)))
        time.sleep(0.1)
    out, err = job.communicate()
    seconds = time.perf_counter() - begin
    if job.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({job.returncode}): {err.decode()[-2000:]}")
    return {"seconds": seconds, "anon_mb": anon / 1024, "tree_anon_mb": tree / 1024, "stdout": out.decode()}


_MB = """
def mb(key="RssAnon:"):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
"""

_OPEN = (
    _MB
    + """
import json, sys
from alexnet.data import prepared
before = mb()
train, val, classes = prepared.make_datasets(sys.argv[1], resize=256)
print(json.dumps({"images": len(train) + len(val), "above_imports_mb": mb() - before}))
"""
)

_PLAN = (
    _MB
    + """
import json, sys, time
from pathlib import Path
import scipy.io, tarfile, csv  # what the plan imports, before the baseline
from alexnet.data.sources import plan_source
from alexnet.data.prepare import PrepareOptions, plan_shards
src, before, begin = Path(sys.argv[1]), mb(), time.perf_counter()
if sys.argv[2] == "archives":
    plan = plan_source(src, Path("unused"), PrepareOptions(), workers=int(sys.argv[3]))
else:
    plan = plan_shards(src, Path("unused"), PrepareOptions())
print(json.dumps({"images": plan.images, "seconds": time.perf_counter() - begin, "above_imports_mb": mb() - before}))
"""
)

_FIRST_STEP = (
    _MB
    + """
import json, os, sys, time
import alexnet.training.train as T
one_epoch, load_data, timing = T.train_one_epoch, T.load_data, {}
def timed_load_data(*args, **kw):  # opening the data, PCA included
    begin = time.perf_counter()
    out = load_data(*args, **kw)
    timing["load_data_s"] = time.perf_counter() - begin
    return out
def first_step(*args, on_step=None, **kw):
    def stop(*_):
        timing["first_step_s"] = time.time() - float(os.environ["BENCH_START"])
        print(json.dumps({**timing, "anon_mb": mb()}))
        sys.stdout.flush()
        os._exit(0)
    return one_epoch(*args, on_step=stop, **kw)
T.train_one_epoch, T.load_data = first_step, timed_load_data
from alexnet.cli import main
main(["train", sys.argv[1], "--output", sys.argv[2], "-q"])
"""
)


def _last_json(text: str) -> dict[str, Any]:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def measure_size(work: Path, per_synset: int, val: int, pool: list[bytes], log: Any, warm_up: bool) -> dict[str, Any]:
    root = work / f"imagenet-{per_synset}x1000-{val}"
    log(f"writing {per_synset} x 1000 training and {val} validation images to {root}")
    begin = time.perf_counter()
    info = write_imagenet(root, per_synset, val, pool)
    images = info["train"] + info["val"]
    log(f"  written in {time.perf_counter() - begin:.0f} s ({info['source_bytes'] / images / 1e3:.0f} kB per image)")
    out: dict[str, Any] = {"per_synset": per_synset, "train": info["train"], "val": info["val"], "images": images,
                           "source_kb_per_image": info["source_bytes"] / images / 1e3}  # fmt: skip
    for name in ("archives", "folders"):
        r = run([sys.executable, "-c", _PLAN, str(root / name), name, "0"])
        out[f"plan_{name}"] = plan = _last_json(r["stdout"])
        assert plan["images"] == images, (plan["images"], images)
        log(f"  the plan of the {name}, one core: {plan['seconds']:.1f} s, {plan['above_imports_mb']:.1f} MB")
    python = [sys.executable, "-m", "alexnet", "prepare"]
    for name in ("archives", "folders", "archives", "folders"):  # alternating: a busy spell hits both
        dst = work / f"prepared-{name}"
        shutil.rmtree(dst, ignore_errors=True)
        r = run([*python, str(root / name), str(dst), "--workers", "1", "-q"])
        r["images_per_s_per_core"] = images / r["seconds"]
        out.setdefault(f"prepare_{name}", []).append({k: v for k, v in r.items() if k != "stdout"})
        log(f"  prepare from the {name}, one core: {r['images_per_s_per_core']:.0f} images/s, peak memory "
            f"{r['anon_mb']:.0f} MB (with the worker {r['tree_anon_mb']:.0f} MB)")  # fmt: skip
    a, f = work / "prepared-archives", work / "prepared-folders"
    same = sorted(p.read_bytes() == (f / p.relative_to(a)).read_bytes() for p in a.rglob("*.shard"))
    out["same_shards"] = bool(same) and all(same)
    manifest = json.loads((a / "prepared.json").read_text())
    out["prepared_bytes_per_image"] = manifest["bytes"] / manifest["images"]
    out["skipped"] = manifest["skipped"]
    shutil.rmtree(f)
    r = run([sys.executable, "-c", _OPEN, str(a)])
    out["open"] = {**_last_json(r["stdout"]), "seconds": r["seconds"]}
    log(f"  opening the prepared set: {out['open']['above_imports_mb']:.1f} MB above the imports")
    runs = work / "runs"
    for _ in range(2 if warm_up else 1):  # a warm-up pays the training mode's timing, once per machine (cached)
        shutil.rmtree(runs, ignore_errors=True)
        r = run([sys.executable, "-c", _FIRST_STEP, str(a), str(runs)], env={"BENCH_START": repr(time.time())})
    out["first_step"] = {**_last_json(r["stdout"]), "tree_anon_mb": r["tree_anon_mb"]}
    step = out["first_step"]
    log(f"  alexnet train to its first step: {step['first_step_s']:.1f} s (opening the data and its PCA "
        f"{step['load_data_s']:.1f} s), peak memory {r['anon_mb']:.0f} MB (with the loader workers "
        f"{r['tree_anon_mb']:.0f} MB)")  # fmt: skip
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(a)
    shutil.rmtree(root)
    return out


# --------------------------------------------------------------------------------------------
# Extrapolation and report
# --------------------------------------------------------------------------------------------
def fit(sizes: list[dict[str, Any]], value: Any) -> dict[str, Any]:
    """``value(size)`` as a + b x images over the sizes, and its value at ImageNet's size; a fitted b of zero or
    less is no growth measured (the spread between runs), and ImageNet's value is then the largest measured."""
    x = np.array([s["images"] for s in sizes], dtype=float)
    y = np.array([value(s) for s in sizes], dtype=float)
    b, a = np.polyfit(x, y, 1) if len(x) > 1 else (0.0, y[0])
    grows = bool(b > 0)
    at = float(a + b * (IMAGENET_TRAIN + IMAGENET_VAL)) if grows else float(y.max())
    return {"at_sizes": y.tolist(), "per_image": float(b), "intercept": float(a), "grows": grows, "at_imagenet": at}


def summarise(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    def median(s: dict[str, Any], runs: str, key: str) -> float:
        return float(np.median([r[key] for r in s[runs]]))

    total = IMAGENET_TRAIN + IMAGENET_VAL
    rate_archives = float(np.median([median(s, "prepare_archives", "images_per_s_per_core") for s in sizes]))
    rate_folders = float(np.median([median(s, "prepare_folders", "images_per_s_per_core") for s in sizes]))
    return {
        "rate_archives": rate_archives,
        "rate_folders": rate_folders,
        "ratio": rate_archives / rate_folders,
        "hours_per_core": total / rate_archives / 3600,
        "hours_here": total / rate_archives / 3600 / (os.cpu_count() or 1),
        "prepare_mb": fit(sizes, lambda s: median(s, "prepare_archives", "anon_mb")),
        "prepare_tree_mb": fit(sizes, lambda s: median(s, "prepare_archives", "tree_anon_mb")),
        "prepare_folders_mb": fit(sizes, lambda s: median(s, "prepare_folders", "anon_mb")),
        "plan_mb": fit(sizes, lambda s: s["plan_archives"]["above_imports_mb"]),
        "plan_folders_mb": fit(sizes, lambda s: s["plan_folders"]["above_imports_mb"]),
        "plan_s": fit(sizes, lambda s: s["plan_archives"]["seconds"]),
        "open_mb": fit(sizes, lambda s: s["open"]["above_imports_mb"]),
        "first_step_mb": fit(sizes, lambda s: s["first_step"]["anon_mb"]),
        "first_step_tree_mb": fit(sizes, lambda s: s["first_step"]["tree_anon_mb"]),
        "first_step_s": fit(sizes, lambda s: s["first_step"]["first_step_s"]),
        "load_data_s": fit(sizes, lambda s: s["first_step"]["load_data_s"]),
        # what cannot depend on the data's size: choosing the training mode, building the model, the step itself
        "fixed_s": float(np.mean([s["first_step"]["first_step_s"] - s["first_step"]["load_data_s"] for s in sizes])),
        "bytes_per_image": float(np.mean([s["prepared_bytes_per_image"] for s in sizes])),
        "source_kb": float(np.mean([s["source_kb_per_image"] for s in sizes])),
        "same_shards": all(s["same_shards"] for s in sizes),
    }


def format_markdown(result: dict[str, Any]) -> str:
    s, sizes = result["summary"], result["sizes"]
    total = IMAGENET_TRAIN + IMAGENET_VAL
    n = " and ".join(f"{x['images']:,}" for x in sizes)

    def row(what: str, f: dict[str, Any], unit: str, digits: int = 0) -> str:
        at = " / ".join(f"{v:,.{digits}f}" for v in f["at_sizes"])
        growth = f"{f['per_image'] * 1e6:+,.{digits}f} {unit}" if f["grows"] else "none measured"
        return f"| {what} | {at} {unit} | {growth} | **{f['at_imagenet']:,.{digits}f} {unit}** |"

    lines = [
        f"Measured {result['date']} by `python benchmarks/imagenet_scale.py` on {result['machine']} (load "
        f"average {result['load_average_at_the_end']:.1f} at the end): synthetic ILSVRC-2012 archives in the exact "
        f"layout, 1,000 synsets, {n} images at the two sizes (training and validation), JPEGs of "
        f"{s['source_kb']:.0f} kB on average at ImageNet's shapes, some CMYK, grayscale and a PNG named .JPEG; "
        "read from the page cache.",
        "",
        f"- `alexnet prepare` on one core (`--workers 1`): **{s['rate_archives']:.0f} images/s straight from the "
        f"archives**, {s['rate_folders']:.0f} from the same images extracted ({s['ratio']:.2f}x; median of two "
        f"runs of each at each size, alternating); the shards are "
        f"{'byte for byte the same' if s['same_shards'] else 'NOT the same'}. ImageNet's {total:,} images: "
        f"**{s['hours_per_core']:.1f} core-hours**, {s['hours_here']:.1f} hours on this machine's "
        f"{os.cpu_count()} cores.",
        f"- The prepared set (raw, shorter side 256): {s['bytes_per_image'] / 1e3:.1f} kB per image, "
        f"{s['bytes_per_image'] * total / 1e9:.0f} GB for ImageNet.",
        f"- The plan (listing every inner tar's headers, one core): {s['plan_s']['per_image'] * 1e6:.0f} s per "
        f"million images, {s['plan_s']['at_imagenet']:.0f} s for ImageNet.",
        "",
        "Memory is anonymous memory (the pages of memory-mapped shards a process has read are the OS's file "
        "cache, reclaimable, and left out), fitted as a + b x images over the two sizes:",
        "",
        f"| peak memory, time | at {n} images | per million images | at ImageNet's {total:,} |",
        "|---|---|---|---|",
        row("`alexnet prepare` from the archives (main process)", s["prepare_mb"], "MB"),
        row("the same, with its converting process", s["prepare_tree_mb"], "MB"),
        row("`alexnet prepare` from the extracted folders (main process)", s["prepare_folders_mb"], "MB"),
        row("the plan of the archives (above the imports)", s["plan_mb"], "MB", 1),
        row("the plan of the extracted folders (above the imports)", s["plan_folders_mb"], "MB", 1),
        row("opening the prepared set (above the imports)", s["open_mb"], "MB", 1),
        row("`alexnet train` at its first step (main process)", s["first_step_mb"], "MB"),
        row("the same, with its loader workers", s["first_step_tree_mb"], "MB"),
        row("`alexnet train`: seconds to its first step", s["first_step_s"], "s", 1),
        row("of which opening the data and its PCA", s["load_data_s"], "s", 1),
        "",
        f"A first step at ImageNet's size, from these figures: {s['fixed_s']:.0f} s that do not depend on the data "
        f"(choosing the training mode, building the model, the step) plus {s['load_data_s']['at_imagenet']:.0f} s "
        f"of opening the data: **{s['fixed_s'] + s['load_data_s']['at_imagenet']:.0f} s** (the fit of the total "
        f"over two sizes, {s['first_step_s']['at_imagenet']:.0f} s, extrapolates the spread of the step's time).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", default="4:2000,10:10000", help="per-synset:val pairs, val >= 1000 (default: %(default)s)"
    )
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print the result as JSON, as the last line")
    p.add_argument("--output", default=str(Path(__file__).with_name("imagenet_scale.json")), help="JSON file to keep")
    p.add_argument("--readme", help="rewrite the block between the imagenet-bench markers of this file")
    p.add_argument("--from-json", metavar="FILE", help="report a kept result again, without measuring")
    args = p.parse_args(argv)
    from alexnet.runtime.machine import describe_machine, machine_info

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        result["summary"] = summarise(result["sizes"])
        return _report(result, args, log)
    load = os.getloadavg()[0]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{describe_machine(machine_info('cpu'))}, load average {load:.1f} at the start",
    }
    pool = make_pool()
    with tempfile.TemporaryDirectory(prefix="imagenet-bench-", dir=args.work) as tmp:
        sizes = []
        for pair in args.sizes.split(","):
            per_synset, val = (int(v) for v in pair.split(":"))
            sizes.append(measure_size(Path(tmp), per_synset, val, pool, log, warm_up=not sizes))
    result["sizes"] = sizes
    result["summary"] = summarise(sizes)
    result["load_average_at_the_end"] = os.getloadavg()[0]
    return _report(result, args, log)


def _report(result: dict[str, Any], args: argparse.Namespace, log: Any) -> int:
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    block = format_markdown(result)
    print(block)
    if args.readme and not write_block(args.readme, *MARKERS, block):
        log(f"{args.readme} has no {MARKERS[0]} ... {MARKERS[1]} block: not updated")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
