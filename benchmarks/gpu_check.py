"""Everything a CUDA GPU should be checked for, in one run of under 8 minutes, with one JSON of the figures.

    python benchmarks/gpu_check.py [--output benchmarks/gpu_check.json] [--device cuda]

1. the tests that need CUDA (``pytest -m cuda``: every GPU-only mode, the GPU paths of training, decoding and
   augmentation);
2. ``alexnet benchmark --device cuda --train`` (the default, time-bounded run; what ``auto`` picks);
3. a short training run end to end from a prepared JPEG dataset (the bundled photographs, shards decoded
   on the GPU by nvJPEG), then ``evaluate`` on it;
4. training under ``torchrun``: two processes on NCCL where there are two GPUs, else one process.

Each step runs in a process of its own with a time limit; a step that fails is recorded with the end of
its output and the rest still run. The JSON holds the GPU's name, each step's seconds, return code and
figures. Where there is no CUDA GPU it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
LIMITS_S = {"tests": 150, "benchmark": 200, "train": 90, "torchrun": 60}  # 500 s in all, under 8 minutes


def _run(name: str, argv: list[str], log: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One step: its return code, seconds and the end of its output (all of it if it failed)."""
    log(f"[{name}] {' '.join(argv)}")
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=LIMITS_S[name],
                              env=os.environ | (env or {}))  # fmt: skip
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = 124, (e.stdout or b"").decode(errors="replace"), (e.stderr or b"").decode(errors="replace")
    step = {"returncode": code, "seconds": round(time.perf_counter() - start, 1), "stdout": out, "stderr": err}
    log(f"[{name}] exit {code} after {step['seconds']} s")
    return step


def _tail(step: dict[str, Any], lines: int = 30) -> dict[str, Any]:
    """The step without its full output: the last lines of it (more when it failed)."""
    text = (step.pop("stdout") + step.pop("stderr")).splitlines()
    step["output_tail"] = text[-(lines if step["returncode"] == 0 else 3 * lines) :]
    return step


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(Path(__file__).with_name("gpu_check.json")))
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to check")
        return 0
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    device = torch.device(args.device)
    index = device.index or 0
    py, cli = sys.executable, [sys.executable, "-m", "alexnet"]
    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(index),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "steps": {},
    }
    log(f"gpu_check on {result['gpu']} (sm {result['capability']}), torch {result['torch']}, CUDA {result['cuda']}")
    steps = result["steps"]
    begin = time.perf_counter()

    tests = _run("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-m", "cuda", "tests"], log)
    summary = re.findall(r"(\d+) (passed|failed|skipped|error)", tests["stdout"])
    tests["counts"] = {k: int(v) for v, k in summary}
    steps["tests"] = _tail(tests)

    with tempfile.TemporaryDirectory() as tmp:
        bench = _run("benchmark", [*cli, "benchmark", "--device", args.device, "--train", "--json",
                                   "--budget", str(LIMITS_S["benchmark"] - 30)], log)  # fmt: skip
        if bench["returncode"] == 0:
            data = json.loads(bench["stdout"])
            ours = [r for r in data["rows"] if r["model"] == data["model"]]
            best: dict[str, dict[str, Any]] = {}
            for r in ours:
                key = f"{r['phase']} batch {r['batch_size']}"
                if key not in best or r["ratio_to_baseline"] > best[key]["ratio_to_baseline"]:
                    best[key] = {k: r[k] for k in ("mode", "images_per_s", "ratio_to_baseline", "pct_of_peak")}
            bench["best"], bench["auto"], bench["skipped"] = best, data["auto"], data["skipped"]
            bench["peak_gflops"] = data["peak_gflops"]
            bench["stdout"] = ""
        steps["benchmark"] = _tail(bench)

        dst, run = Path(tmp) / "photos-jpeg", Path(tmp) / "run"
        env = {"ALEXNET_CACHE": str(Path(tmp) / "cache")}
        prep = subprocess.run([*cli, "prepare", "photos", str(dst), "--format", "jpeg", "--size", "72", "--quiet"],
                              cwd=ROOT, capture_output=True, text=True, env=os.environ | env)  # fmt: skip
        if prep.returncode != 0:
            steps["train"] = {"returncode": prep.returncode, "output_tail": prep.stderr.splitlines()[-20:]}
        else:
            train = [*cli, "train", str(dst), "--model", "alexnet2012", "--recipe", "paper2012", "--epochs", "3",
                     "--input-size", "67", "--resize-size", "72", "--batch-size", "128", "--device", args.device,
                     "--output", str(run), "--quiet"]  # fmt: skip
            step = _run("train", train, log, env)
            history = _metrics(run)
            if history:
                step["images_per_s"] = [round(h.get("images_per_s", 0), 1) for h in history]
                step["val_top1"] = [h.get("val_top1") for h in history]
                ev = subprocess.run([*cli, "evaluate", str(run), str(dst), "--json", "--device", args.device],
                                    cwd=ROOT, capture_output=True, text=True, env=os.environ | env)  # fmt: skip
                if ev.returncode == 0:
                    numbers = json.loads(ev.stdout)
                    step["test_top1"], step["inference_mode"] = numbers["top1"], numbers["mode"]
            steps["train"] = _tail(step)
            # Two processes need two GPUs (one per process); with one GPU torchrun starts one process, which
            # trains without a process group.
            procs = min(2, torch.cuda.device_count())
            dp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m",
                  "alexnet", "train", str(dst), "--recipe", "small", "--epochs", "1", "--batch-size", "128",
                  "--input-size", "64", "--resize-size", "72", "--device", args.device,
                  "--output", str(Path(tmp) / "dp"), "--quiet"]  # fmt: skip
            step = _run("torchrun", dp, log, env)
            step["processes"] = procs
            step["nccl"] = procs > 1
            history = _metrics(Path(tmp) / "dp")
            step["images_per_s"] = [round(h.get("images_per_s", 0), 1) for h in history]
            steps["torchrun"] = _tail(step)
    result["seconds"] = round(time.perf_counter() - begin, 1)
    result["ok"] = all(s.get("returncode") == 0 for s in steps.values())
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for name, s in steps.items():
        log(f"{name}: exit {s.get('returncode')} in {s.get('seconds', '?')} s")
    log(f"wrote {args.output} ({'all steps passed' if result['ok'] else 'some steps failed'}) in {result['seconds']} s")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
