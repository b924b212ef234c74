"""Run the full benchmark (inference at batch 1 and 64, the training step at 64), keep the JSON, refresh the README.

    python benchmarks/run.py [--readme README.md] [--output benchmarks/results.json] [--model NAME] [--device DEV]

The same as ``alexnet benchmark --train --json --update-readme README.md`` (bounded to about 3 minutes;
``--full`` times every mode), with the JSON kept in a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from alexnet.bench.benchmark import run_benchmark
from alexnet.bench.report import format_table, update_readme


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", default="README.md")
    p.add_argument("--output", default=str(Path(__file__).with_name("results.json")))
    p.add_argument("--model", default="alexnet")
    p.add_argument("--device", default="cpu")
    p.add_argument("--full", action="store_true", help="every mode in rounds, no time budget (several minutes)")
    args = p.parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)
    result = run_benchmark(
        args.model, (1, 64), train=True, device=args.device, full=args.full, log=lambda m: err.print(m, style="dim")
    )
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    Console().print(format_table(result))
    update_readme(args.readme, result)
    err.print(f"wrote {args.output} and updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
