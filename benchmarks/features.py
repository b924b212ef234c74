"""fc7 features per second: one image at a time in eager fp32 (the baseline), batched eager fp32, and batched
in the inference mode the classifier is accepted in; rounds alternate, the median of each is reported.

    python benchmarks/features.py CHECKPOINT DATA_FOLDER [--images 256] [--rounds 3] [--batch-size 64]

Also times the whole path of ``alexnet visualize neighbors`` (decoding in worker processes + the fast
forward) on every image of the folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from alexnet.insight.features import FeatureExtractor
from alexnet.insight.visualize import labelled_samples
from alexnet.runtime.inference import load_classifier


def rate(fn, x: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            fn(x[i : i + batch])
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("data")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    clf = load_classifier(args.checkpoint, device="cpu")
    samples, _ = labelled_samples(args.data)
    x = clf.preprocess(torch.stack([clf.decode(s) for s, _ in samples[: args.images]]))
    clf.fast(x)
    eager = FeatureExtractor(clf, "eager-fp32", x[: args.batch_size])
    fast = FeatureExtractor(clf, example=x[: args.batch_size])
    setups = {
        "eager-fp32, one image at a time": (eager, 1),
        f"eager-fp32, batch {args.batch_size}": (eager, args.batch_size),
        f"{fast.mode}, batch {args.batch_size}": (fast, args.batch_size),
    }
    runs: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(args.rounds):
        for name, (fn, batch) in setups.items():
            runs[name].append(rate(fn, x, batch))
    base = statistics.median(runs[next(iter(setups))])
    result = {name: {"images_per_s": statistics.median(v), "x_baseline": statistics.median(v) / base}
              for name, v in runs.items()}  # fmt: skip
    _, timing = fast.dataset(clf, samples, batch_size=args.batch_size, workers=args.workers)
    result[f"decode ({args.workers} workers) + {fast.mode}, all {len(samples)} images"] = timing
    print(json.dumps({"model": clf.card.model, "mode": clf.mode, "threads": torch.get_num_threads(), **result},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
