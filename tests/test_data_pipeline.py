"""The input-pipeline benchmark script runs end to end on a handful of images and prints its JSON last."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py"


def _script():
    spec = importlib.util.spec_from_file_location("data_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_prints_every_pipeline_and_the_ratio_as_its_last_line(tmp_path, capsys):
    bench = _script()
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{bench.MARKERS[0]}\nSTALE-BLOCK\n{bench.MARKERS[1]}\nafter\n")
    args = ["--images", "14", "--rounds", "1", "--no-train", "--json", "--output", str(tmp_path / "r.json")]
    assert bench.main([*args, "--readme", str(readme)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["pipeline"][:3] for r in last["rows"]] == ["(a)", "(b)", "(f)", "(c)", "(c)", "(c)", "(c)"]
    assert all(set(r) == {"pipeline", "images_per_s_per_core", "bytes_per_image"} for r in last["rows"])
    assert all(r["images_per_s_per_core"] > 0 and r["bytes_per_image"] > 0 for r in last["rows"])
    default = next(r for r in last["rows"] if r["pipeline"] == "(c) prepared raw")
    assert default["bytes_per_image"] >= 3 * 256 * 256  # raw pixels, shorter side 256
    assert last["ratio_prepared_to_torchvision"] > 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "STALE-BLOCK" not in text and "| (a)" in text
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 14


def test_the_generated_images_are_imagenet_sized_jpegs_of_photographs(tmp_path):
    root = _script().make_jpegs(tmp_path, 10)
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 10 and len({p.parent.name for p in files}) == 10  # one photograph per class
    for p in files:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.size in {(500, 375), (375, 500)}
            pixels = np.asarray(im, dtype=np.float64)
        assert pixels.std() > 10  # a photograph, not a flat colour
