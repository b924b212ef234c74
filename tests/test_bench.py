"""The benchmark's result has the documented fields; speed itself is never asserted."""

from __future__ import annotations

import json

import pytest

from alexnet.bench import BASELINE, END, START, markdown_report, run_benchmark, update_readme
from alexnet.cli import main

ROW_FIELDS = {"model", "mode", "phase", "batch_size", "images_per_s", "ratio_to_baseline", "pct_of_peak"}


@pytest.fixture(scope="module")
def result() -> dict:
    return run_benchmark(
        "alexnet_small",
        batch_sizes=[2],
        train=True,
        train_batch_size=2,
        modes=["eager-fp32", "onednn-bf16", "fp16"],  # fp16 is CUDA-only: skipped on the CPU
        train_modes=["eager-fp32", "autocast-bf16"],
        device="cpu",
        repeats=1,
        warmup=1,
        max_seconds=0.0,
        min_seconds=0.0,
        peak_size=128,
        tune_allocator=False,
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


def test_ratios_are_against_the_baseline_of_the_same_phase_and_batch(result):
    base = {(r["phase"], r["batch_size"]): r for r in result["rows"] if r["mode"] == BASELINE}
    assert all(r["ratio_to_baseline"] == 1.0 for r in base.values())
    for r in result["rows"]:
        expected = r["images_per_s"] / base[r["phase"], r["batch_size"]]["images_per_s"]
        assert r["ratio_to_baseline"] == pytest.approx(expected)
        peak = result["peak_gflops"][r["precision"]]
        assert r["pct_of_peak"] == pytest.approx(100 * r["gflops"] / peak)


def test_modes_that_cannot_run_are_skipped_with_a_reason(result):
    (skipped,) = result["skipped"]
    assert skipped["mode"] == "fp16" and "cuda" in skipped["reason"]
    assert "fp16" not in {r["mode"] for r in result["rows"]}


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


def test_cli_prints_json(capsys):
    argv = ["benchmark", "--model", "alexnet_small", "--batch-sizes", "2", "--modes", "eager-fp32", "--repeats", "1"]
    assert main([*argv, "--no-allocator-tuning", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"machine", "peak_gflops", "rows"} <= set(data)
    assert [r["mode"] for r in data["rows"]] == [BASELINE, "eager-fp32"]
