"""``make demo``: the main job end to end on the bundled digits, on the CPU.

1. ``alexnet train --dataset digits --recipe small --no-flip`` (scikit-learn's 1,797 real 8x8 digits,
   written once as PNG files; 70/10/20 train/val/test split with a fixed seed);
2. ``alexnet evaluate`` the best checkpoint on the held-out test split, centre crop and 10-crop;
3. ``alexnet predict`` a few held-out images.

Each step is the CLI command a user would type, printed before it runs. Mirror flips are off because a
mirrored digit is another glyph (a flipped 2 is not a 2): the paper's flips assume mirror-symmetric classes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from . import cli
from .data.datasets import prepare_digits

TARGET_TOP1 = 0.98


def _run(argv: list[str]) -> None:
    print(f"\n$ alexnet {shlex.join(argv)}", flush=True)
    code = cli.main(argv)
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alexnet.demo", description=__doc__.splitlines()[0])
    p.add_argument("--output", default=None, help="run folder (default: runs/demo-digits-<time>)")
    p.add_argument("--epochs", type=int, default=None, help="override the small recipe's epochs")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    start = time.perf_counter()
    run_dir = Path(args.output or f"runs/demo-digits-{time.strftime('%Y%m%d-%H%M%S')}")
    digits = prepare_digits()
    train = ["train", "--dataset", "digits", "--recipe", "small", "--no-flip", "--output", str(run_dir)]
    train += ["--epochs", str(args.epochs)] if args.epochs else []
    _run(train + (["--quiet"] if args.quiet else []))

    eval_json = run_dir / "eval" / "test" / "metrics.json"
    _run(["evaluate", str(run_dir), str(digits), "--ten-crop"])
    samples = [sorted((digits / "test" / str(k)).iterdir())[0] for k in (0, 3, 5, 8)]
    _run(["predict", str(run_dir), *map(str, samples), "--top-k", "3"])

    import json

    metrics = json.loads(eval_json.read_text())
    top1 = metrics["center"]["top1"]
    seconds = time.perf_counter() - start
    verdict = "meets" if top1 >= TARGET_TOP1 else "MISSES"
    print(
        f"\ndemo done in {seconds:.0f} s: held-out test top-1 {top1:.2%} centre crop, "
        f"{metrics['top1']:.2%} 10-crop ({metrics['images']} images; {verdict} the {TARGET_TOP1:.0%} target)\n"
        f"run folder: {run_dir}  (metrics.jsonl, curves.png, tb/, config.yaml, checkpoints/, eval/)"
    )
    return 0 if top1 >= TARGET_TOP1 else 1


if __name__ == "__main__":
    sys.exit(main())
