"""The benchmark's result has the documented fields and its ratios divide by the neighbouring baseline
measurements; speed itself is never asserted."""

from __future__ import annotations

import json

import pytest
import torch

from alexnet.bench.baseline import BaselineProcess
from alexnet.bench.benchmark import BASELINE, interleave, run_benchmark
from alexnet.bench.report import END, START, markdown_report, update_readme
from alexnet.cli import main

ROW_FIELDS = {
    "model",
    "mode",
    "phase",
    "batch_size",
    "images_per_s",
    "ratio_to_baseline",
    "ratio_spread",
    "pct_of_peak",
}
QUICK = {"repeats": 1, "warmup": 0, "max_seconds": 0.0, "min_seconds": 0.0, "peak_size": 64, "tune_allocator": False}


def ten_ms(fn) -> float:
    """A timer that does not time: the tests check the wiring; real timing is left to the CLI test."""
    return 0.01


@pytest.fixture(scope="module")
def result() -> dict:
    return run_benchmark(
        "alexnet_small",
        batch_sizes=[2],
        train=True,
        train_batch_size=2,
        modes=["eager-fp32", "onednn-bf16", "onnxruntime-int8", "fp16"],  # fp16 is CUDA-only: skipped on the CPU
        train_modes=["eager-fp32", "autocast-bf16"],
        device="cpu",
        rounds=2,
        timer=ten_ms,
        **QUICK,
    )


def test_result_has_the_documented_fields(result):
    json.dumps(result)  # JSON-ready as it is
    assert {"device", "cpu", "torch"} <= set(result["machine"])
    assert set(result["peak_gflops"]) >= {"fp32", "bf16"} and all(v > 0 for v in result["peak_gflops"].values())
    for row in result["rows"]:
        assert ROW_FIELDS <= set(row)
        assert row["phase"] in ("inference", "train") and row["images_per_s"] > 0
    keys = {(r["mode"], r["phase"], r["batch_size"]) for r in result["rows"]}
    assert {(BASELINE, "inference", 2), (BASELINE, "train", 2)} <= keys
    assert {("eager-fp32", "inference", 2), ("onednn-bf16", "inference", 2), ("autocast-bf16", "train", 2)} <= keys


def test_each_row_has_its_median_ratio_within_its_spread_and_its_share_of_peak(result):
    for r in result["rows"]:
        lo, hi = r["ratio_spread"]
        assert 0 < lo <= r["ratio_to_baseline"] <= hi
        assert r["ratio_to_baseline"] == 1.0 or r["mode"] != BASELINE
        assert r["pct_of_peak"] == pytest.approx(100 * r["gflops"] / result["peak_gflops"][r["precision"]])


def test_int8_rows_are_measured_against_the_int8_matmul_peak(result):
    pytest.importorskip("onnxruntime")
    assert result["peak_gflops"]["int8"] > 0  # the machine's own int8 matmul, next to fp32 and bf16
    (row,) = [r for r in result["rows"] if r["mode"] == "onnxruntime-int8"]
    assert row["precision"] == "int8" and row["batch_size"] == 2 and row["setup_s"] > 0
    per_s = 2 / 0.01  # the fake timer: 10 ms per batch of 2
    assert row["gflops"] == pytest.approx(per_s * result["flops_per_image"]["alexnet_small"] / 1e9)
    assert row["pct_of_peak"] == pytest.approx(100 * row["gflops"] / result["peak_gflops"]["int8"])
    # every measurement took 10 ms, so int8 and the fastest other mode are equally fast: the quotient is 1
    assert "- int8, batch 2: `onnxruntime-int8` is 1.00x `eager-fp32`" in markdown_report(result)


def test_modes_that_cannot_run_are_skipped_with_a_reason(result):
    skipped = {s["mode"]: s for s in result["skipped"]}
    assert "cuda" in skipped["fp16"]["reason"] and set(skipped) <= {"fp16", "onnxruntime-int8"}
    assert "fp16" not in {r["mode"] for r in result["rows"]}


def test_interleaving_measures_the_baseline_around_every_mode_measurement():
    calls = []
    seconds, ratios = interleave(lambda: calls.append("M") or 1.0, lambda: calls.append("B") or 2.0, rounds=3)
    assert "".join(calls) == "BMBMBMB"
    assert seconds == [1.0, 1.0, 1.0] and ratios == [2.0, 2.0, 2.0]


def test_a_slow_baseline_measurement_moves_only_the_two_rounds_beside_it():
    # Run order with one mode at one batch size: B M B M B M B M B M B. Every mode measurement takes 0.5 s
    # and every baseline one 1 s, except the third baseline measurement (between rounds 2 and 3): 3 s.
    calls = []

    def fake_timer(fn) -> float:
        calls.append(fn)
        if len(calls) % 2 == 0:
            return 0.5
        return 3.0 if len(calls) == 5 else 1.0

    quick = QUICK | {"peak_size": 32}
    result = run_benchmark(
        "alexnet_small", [2], modes=["eager-fp32"], rounds=5, timer=fake_timer, screen_timer=ten_ms, **quick
    )
    assert len(calls) == 11
    rows = {r["mode"]: r for r in result["rows"]}
    mode, base = rows["eager-fp32"], rows[BASELINE]
    # rounds 1, 4, 5: (1 + 1) / 2 / 0.5 = 2; rounds 2 and 3 next to the 3 s one: (1 + 3) / 2 / 0.5 = 4
    assert mode["ratio_to_baseline"] == pytest.approx(2.0)
    assert mode["ratio_spread"] == pytest.approx([2.0, 4.0])
    assert mode["images_per_s"] == pytest.approx(2 / 0.5) and mode["rounds"] == 5
    assert base["images_per_s"] == pytest.approx(2 / 1.0) and base["rounds"] == 6
    assert base["ratio_spread"] == pytest.approx([1 / 3, 1.0])
    assert "2.00x (2.00-4.00)" in markdown_report(result)


def test_readme_block_is_replaced_or_appended(result, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n")
    update_readme(readme, result)
    first = readme.read_text()
    assert first.startswith("# Title\n\nintro\n\n## Benchmark\n") and first.count(START) == 1
    update_readme(readme, result)
    assert readme.read_text() == first  # replaced in place, not appended again
    readme.write_text(f"before\n{START}\nold table\n{END}\nafter\n")
    update_readme(readme, result)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("before\n") and text.endswith(f"{END}\nafter\n")
    assert "| phase |" in markdown_report(result)


def test_unknown_modes_are_rejected():
    with pytest.raises(ValueError, match="unknown inference mode"):
        run_benchmark("alexnet_small", modes=["warp-speed"])


def test_cli_prints_json(capsys, monkeypatch):
    from alexnet.bench import benchmark

    measure = benchmark.measure_peaks  # the 2048^2 peaks are what the fixture's run checks: small ones here
    monkeypatch.setattr(benchmark, "measure_peaks", lambda device, size: measure(device, 64))
    argv = ["benchmark", "--model", "alexnet_small", "--batch-sizes", "2", "--modes", "eager-fp32"]
    assert main([*argv, "--rounds", "1", "--repeats", "1", "--no-allocator-tuning", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"machine", "peak_gflops", "rows"} <= set(data)
    assert [r["mode"] for r in data["rows"]] == [BASELINE, "eager-fp32"]


@pytest.mark.slow
def test_the_baseline_can_run_in_a_process_of_its_own():
    timing = {"warmup": 0, "repeats": 1, "max_seconds": 0.0, "min_seconds": 0.0}
    with BaselineProcess(torch.device("cpu"), timing) as baseline:
        first, second = baseline.measure("inference", 1), baseline.measure("inference", 1)
    assert first > 0 and second > 0 and baseline.seconds == {("inference", 1): [first, second]}


def test_a_mode_that_fails_while_timed_is_a_skipped_row_not_the_end(monkeypatch):
    """It prepared and ran once, then ran out of memory in the rounds: the run goes on and says why."""
    calls = []

    def flaky(fn) -> float:
        calls.append(fn)
        if len(calls) == 4:  # the screening call, then baseline, mode: the mode's first timed measurement fails
            raise RuntimeError("DefaultCPUAllocator: not enough memory\nmore detail")
        return 0.01

    result = run_benchmark("alexnet_small", [2], modes=["eager-fp32", "channels-last-fp32"], rounds=1, timer=flaky,
                           screen_timer=ten_ms, **QUICK)  # fmt: skip
    skipped = {s["mode"]: s["reason"] for s in result["skipped"]}
    rows = {r["mode"] for r in result["rows"]}
    assert len(skipped) == 1 and len(rows & {"eager-fp32", "channels-last-fp32"}) == 1
    assert next(iter(skipped.values())) == "failed while timed: DefaultCPUAllocator: not enough memory"
