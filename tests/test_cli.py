"""The ``alexnet`` command end to end (train -> evaluate -> predict -> export) and its error paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import create_model
from alexnet.cli import main

FAST = ["--recipe", "small", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--quiet", "--schedule", "step"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run folder) of one short CLI training run, shared by the read-only tests below."""
    from conftest import write_images

    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    write_images(data / "train", 8, seed=0)
    write_images(data / "val", 3, seed=1)
    write_images(data / "test", 4, seed=2)
    assert main(["train", str(data), "--output", str(root / "run"), *FAST, "--lr", "0.01"]) == 0
    return data, root / "run"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------- the happy path
def test_train_writes_a_complete_run_folder(trained, capsys):
    _, run = trained
    names = {p.name for p in run.iterdir()}
    assert {"metrics.jsonl", "curves.png", "config.yaml", "checkpoints", "tb", "pca.json"} <= names
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.safetensors", "last.safetensors"}
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluate_prints_json_and_writes_csvs(trained, capsys, tmp_path):
    data, run = trained
    assert main(["evaluate", str(run), str(data), "--ten-crop", "--json", "--output", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["folder"].endswith("test") and out["images"] == 12  # test/ is preferred over val/
    for key in ("top1", "top5", "top1_error", "top5_error"):
        assert 0.0 <= out[key] <= 1.0 and 0.0 <= out["center"][key] <= 1.0
    assert out["top1"] + out["top1_error"] == pytest.approx(1.0)
    assert set(out["per_class_top1"]) == {"blue", "green", "red"}
    with open(tmp_path / "confusion.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == ["blue", "green", "red"]
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == 12
    with open(tmp_path / "per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert [r["class"] for r in per_class] == ["blue", "green", "red"]
    assert sum(int(r["images"]) for r in per_class) == 12


def test_evaluate_fp32_and_auto_agree_on_the_numbers(trained, capsys):
    data, run = trained
    main(["evaluate", str(run), str(data), "--json", "--precision", "fp32"])
    fp32 = json.loads(capsys.readouterr().out)
    main(["evaluate", str(run), str(data), "--json"])
    auto = json.loads(capsys.readouterr().out)
    assert fp32["mode"].endswith("fp32")
    assert auto["top1"] == pytest.approx(fp32["top1"], abs=1 / 12 + 1e-9)  # at most one image apart


def test_predict_names_classes_with_probabilities(trained, capsys):
    data, run = trained
    files = sorted((data / "test" / "red").iterdir())[:2]
    assert main(["predict", str(run), *map(str, files), "--top-k", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    out = report["predictions"]
    assert [r["file"] for r in out] == [str(f) for f in files]
    assert report["inference"]["mode"] and report["inference"]["reason"]  # which mode, and why
    for r in out:
        assert len(r["top"]) == 2 and {t["class"] for t in r["top"]} <= {"blue", "green", "red"}
        assert r["top"][0]["probability"] >= r["top"][1]["probability"]
    assert main(["predict", str(run), str(data / "test" / "blue")]) == 0  # a folder: every image in it
    text = capsys.readouterr().out
    assert text.count("blue/") == 4 and "%" in text


def test_predict_reads_an_exported_onnx_file_like_the_checkpoint(trained, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    data, run = trained
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run), "--output", str(onnx_path)]) == 0
    capsys.readouterr()
    image = str(sorted((data / "test" / "green").iterdir())[0])
    main(["predict", str(run), image, "--json", "--precision", "fp32", "--top-k", "3"])
    torch_out = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    main(["predict", str(onnx_path), image, "--json", "--top-k", "3"])
    onnx_out = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert [t["class"] for t in onnx_out] == [t["class"] for t in torch_out]
    for a, b in zip(onnx_out, torch_out, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_predict_with_torchvision_format_weights_prints_imagenet_names(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "alexnet.pth"
    torch.save(create_model("alexnet").state_dict(), weights)
    image = tmp_path / "cat.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--model", "alexnet", "--weights", str(weights), str(image), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    from alexnet.data.imagenet import imagenet_words

    wnids = sorted(imagenet_words())  # class i is the i-th wnid, named by the devkit's words
    assert len(out) == 5 and all(t["class"] == wnids[t["index"]] for t in out)
    assert all(t["words"] == imagenet_words()[t["class"]] for t in out)


def test_resume_continues_a_cli_run(trained, tmp_path, capsys):
    data, run = trained
    copy = tmp_path / "run"
    for name, content in _snapshot(run).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(content)
    assert main(["train", "--resume", str(copy), "--epochs", "3", "--quiet"]) == 0  # the data path is remembered
    lines = [json.loads(s) for s in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2, 3]
    _fails(["train", "--resume", str(copy), "--model", "alexnet"], capsys, "keeps its model (alexnet_small)")


def test_a_one_cycle_run_cannot_be_extended(tmp_path, capsys):
    from conftest import write_images

    write_images(tmp_path / "d", 3)
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "d"), "--output", str(run), *FAST, "--epochs", "1", "--schedule", "onecycle"]
    assert main(argv) == 0
    _fails(["train", "--resume", str(run), "--epochs", "2"], capsys, "onecycle schedule spans the run's 1 epochs")


# ----------------------------------------------------------------------------------------- errors
def _fails(argv: list[str], capsys, match: str, code: int = 1) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert match in err, err
    assert "Traceback" not in err
    return err


def test_missing_and_empty_data_folders(tmp_path, capsys):
    run = ["--output", str(tmp_path / "run")]
    _fails(["train", str(tmp_path / "nope"), *FAST, *run], capsys, "data folder not found")
    (tmp_path / "empty").mkdir()
    _fails(["train", str(tmp_path / "empty"), *FAST, *run], capsys, "no class folders")
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "cat" / "readme.txt").write_text("x")
    _fails(["train", str(tmp_path / "noimg"), *FAST, *run], capsys, "no images")
    assert not (tmp_path / "run").exists()  # a refused run leaves no empty run folder behind
    _fails(["train", str(tmp_path / "nope"), *FAST, "--output", str(tmp_path / "empty")], capsys, "not found")
    assert (tmp_path / "empty").is_dir()  # but a folder that was there stays


def test_a_class_folder_without_images(tmp_path, capsys):
    from conftest import write_images

    write_images(tmp_path / "d", 3)
    (tmp_path / "d" / "zebra").mkdir()
    _fails(["train", str(tmp_path / "d"), *FAST], capsys, "zebra has no image files")


def test_corrupt_images_are_skipped_with_a_warning_or_fail_with_strict(tmp_path, capsys):
    from conftest import write_images

    write_images(tmp_path / "d", 4)
    (tmp_path / "d" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "d"), "--output", str(run), *FAST, "--epochs", "1", "--val-split", "0.25"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: skipping unreadable image" in err and "broken.png" in err
    assert json.loads((run / "metrics.jsonl").read_text())["skipped_files"] == 1
    _fails(["train", str(tmp_path / "d"), *FAST, "--strict", "--val-split", "0.25"], capsys, "broken.png")


def test_unknown_model_flag_and_recipe_list_the_valid_ones(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--model", "vgg16"]) == 2
    assert "alexnet2012" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--recipe", "fast"]) == 2
    assert "paper2012" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code", "match"),
    [
        (["train", "{tmp}/nope", "--output", "{tmp}/run"], 1, "data folder not found"),  # the files: 1
        (["evaluate", "{tmp}/missing.safetensors", "{tmp}"], 1, "checkpoint not found"),
        (["visualize", "{tmp}/missing.safetensors", "filters", "--output", "{tmp}/out"], 1, "checkpoint not found"),
        (["prepare", "{tmp}", "{tmp}/../busy"], 1, "other files in it"),
        (["train", "{tmp}", "--dataset", "digits", "--output", "{tmp}/run"], 2, "not both"),  # the command line: 2
        (["train", "{tmp}", "--lr", "nan", "--output", "{tmp}/run"], 2, "--lr must be"),
        (["train", "--resume", "{tmp}", "--output", "{tmp}/other"], 2, "leave out --output"),
        (["visualize", "{tmp}/missing.safetensors", "pictures", "--output", "{tmp}/out"], 2, "say what to draw"),
        (["train", "{tmp}", "--no-such-flag", "--output", "{tmp}/run"], 2, "unrecognized arguments"),
    ],
)
def test_user_errors_exit_1_and_refused_flags_exit_2(argv, code, match, tmp_path, capsys):
    from conftest import write_images

    write_images(tmp_path / "src", 1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    argv = [a.replace("{tmp}", str(tmp_path / "src")) for a in argv]
    err = _fails(argv, capsys, match, code=code)
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and not (tmp_path / "src" / "run").exists()


@pytest.mark.parametrize(
    "flags", [["--device", "meta"], ["--device", "xla"], ["--model", "alexnet2012", "--model-parallel", "cpu,meta"]]
)
def test_device_names_outside_the_help_are_an_unknown_device_and_nothing_is_written(flags, tmp_path, capsys):
    from conftest import write_images

    write_images(tmp_path / "d", 2)
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "d"), *FAST, "--input-size", "67", "--resize-size", "72", "--output", str(run)]
    err = _fails([*argv, *flags], capsys, "unknown device 'meta'" if "meta" in flags[-1] else "unknown device 'xla'",
                 code=2)  # fmt: skip
    assert len(err.strip().splitlines()) == 1 and not run.exists()


def test_evaluate_on_an_unknown_device_is_one_line(trained, capsys):
    data, run = trained
    err = _fails(["evaluate", str(run), str(data), "--device", "meta"], capsys, "unknown device 'meta'", code=2)
    assert len(err.strip().splitlines()) == 1


def test_a_refused_model_parallel_flag_leaves_no_run_folder(tmp_path, capsys):
    from conftest import write_images

    write_images(tmp_path / "d", 2)
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "d"), *FAST, "--model", "alexnet2012", "--input-size", "67", "--resize-size", "72"]
    _fails([*argv, "--model-parallel", "foo,bar", "--output", str(run)], capsys, "unknown device 'foo'", code=2)
    _fails([*argv, "--model-parallel", "cpu", "--output", str(run)], capsys, "two devices", code=2)
    assert not run.exists()


def test_a_checkpoint_for_other_classes_is_refused(trained, tmp_path, capsys):
    from conftest import write_images

    _, run = trained
    write_images(tmp_path / "other", 2)
    (tmp_path / "other" / "purple").mkdir()
    Image.new("RGB", (40, 40), (120, 0, 120)).save(tmp_path / "other" / "purple" / "p.png")
    _fails(["evaluate", str(run), str(tmp_path / "other")], capsys, "class folders the model does not know: ['purple']")
    ckpt = run / "checkpoints" / "best.safetensors"
    _fails(["predict", "--model", "alexnet", "--weights", str(ckpt), str(ckpt)], capsys, "do not fit alexnet")


def test_files_that_are_not_checkpoints(tmp_path, capsys):
    (tmp_path / "w.safetensors").write_bytes(b"garbage" * 20)
    image = tmp_path / "i.png"
    Image.new("RGB", (40, 40)).save(image)
    _fails(["predict", str(tmp_path / "w.safetensors"), str(image)], capsys, "not an alexnet checkpoint")
    _fails(["evaluate", str(tmp_path / "missing.safetensors"), str(tmp_path)], capsys, "checkpoint not found")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 10)
    junk = ["predict", "--model", "alexnet", "--weights", str(tmp_path / "junk.pth"), str(image)]
    _fails(junk, capsys, "not a weights")


def test_an_existing_run_is_kept_and_a_resume_without_checkpoint_fails(trained, tmp_path, capsys):
    data, run = trained
    before = _snapshot(run)
    _fails(["train", str(data), "--output", str(run), *FAST], capsys, "already holds a run")
    assert _snapshot(run) == before
    _fails(["train", "--resume", str(tmp_path)], capsys, "checkpoint not found")


def test_predict_reports_an_unreadable_image_and_still_predicts_the_rest(trained, tmp_path, capsys):
    data, run = trained
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = sorted((data / "test" / "red").iterdir())[0]
    assert main(["predict", str(run), str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert str(good) in captured.out and f"{bad}: cannot read image" in captured.err
    _fails(["predict", str(run), str(tmp_path / "nope.png")], capsys, "image not found")


def test_a_diverging_run_stops_with_exit_1_and_a_message(tmp_path, capsys):
    from conftest import write_images

    write_images(tmp_path / "d", 8)
    argv = ["train", str(tmp_path / "d"), "--output", str(tmp_path / "run"), *FAST, "--lr", "1e30"]
    err = _fails([*argv, "--precision", "fp32", "--schedule", "constant"], capsys, "loss became")
    assert "Try a lower --lr" in err


def test_predicting_in_chunks_gives_the_same_answers(trained, tmp_path):
    from alexnet.runtime.inference import image_paths, load_classifier, predict_files

    data, run = trained
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = image_paths([data / "test" / "red"]) + [tmp_path / "bad.png"] + image_paths([data / "test" / "blue"])
    whole = predict_files(load_classifier(run), paths, precision="fp32")
    chunked = predict_files(load_classifier(run), paths, precision="fp32", batch_size=2, heldout=3)
    assert [r.get("error") is not None for r in chunked] == [p.name == "bad.png" for p in paths]
    for a, b in zip(whole, chunked, strict=True):
        assert a.keys() == b.keys()
        if "top" in a:
            assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
            assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-5)


# ------------------------------------------------------------------------------ found by trying to break it
def test_evaluate_prints_its_numbers_before_a_write_fails(trained, tmp_path, capsys):
    data, run = trained
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the results folder should go")
    assert main(["evaluate", str(run), str(data), "--output", str(blocked / "eval")]) == 1
    captured = capsys.readouterr()
    assert "top-1" in captured.out and "loss" in captured.out  # the numbers are not lost
    assert f"cannot write {blocked / 'eval'}" in captured.err and "--output" in captured.err
    assert "Traceback" not in captured.err


def test_evaluate_into_an_unwritable_folder_keeps_the_numbers(trained, unwritable_dir, capsys):
    data, run = trained
    assert main(["evaluate", str(run), str(data), "--json", "--output", str(unwritable_dir / "eval")]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 12 and "cannot write" in captured.err


def test_export_checks_its_output_before_any_work(trained, tmp_path, unwritable_dir, capsys):
    _, run = trained
    (tmp_path / "model.onnx").mkdir()
    _fails(["export", str(run), "--output", str(tmp_path / "model.onnx")], capsys, "is a directory")
    _fails(["export", str(run), "--output", str(unwritable_dir / "m.onnx")], capsys, "cannot write")
    # checked before the checkpoint is even read: a missing checkpoint is not what is reported
    _fails(["export", str(tmp_path / "missing"), "--output", str(unwritable_dir / "m.onnx")], capsys, "cannot write")
    assert list((tmp_path / "model.onnx").iterdir()) == []


def test_export_below_the_minimum_input_size_is_one_line(trained, tmp_path, capsys):
    _, run = trained
    err = _fails(["export", str(run), "--output", str(tmp_path / "m.onnx"), "--input-size", "8"], capsys, "from 15")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["summary", "--input-size", "100000"], "must be at most 4096"),
        (["benchmark", "--batch-sizes", "0"], "must be at least 1"),
        (["benchmark", "--batch-sizes", ","], "comma-separated"),
        (["benchmark", "--repeats", "0"], "must be at least 1"),
        (["predict", "x.png", "y.png", "--top-k", "0"], "must be at least 1"),
        (["train", "d", "--label-smoothing", "2"], "--label-smoothing must be in [0, 1)"),
        (["train", "d", "--lr", "nan"], "--lr must be a positive finite number"),
        (["train", "d", "--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_absurd_flags_are_refused_in_one_line(argv, match, capsys):
    err = _fails(argv, capsys, match, code=2)
    assert len([s for s in err.splitlines() if "error" in s]) == 1


def test_a_checkpoint_claiming_a_trillion_classes_is_refused(trained, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    _, run = trained
    path = run / "checkpoints" / "best.safetensors"
    from alexnet.models.checkpoint import read_metadata

    meta = read_metadata(path)
    meta["num_classes"] = 10**12
    save_file(load_file(path), tmp_path / "liar.safetensors", metadata={"alexnet": json.dumps(meta)})
    _fails(
        ["predict", str(tmp_path / "liar.safetensors"), str(path)],
        capsys,
        "lists 3 classes but says num_classes 1000000000000",
    )


def test_version_and_help_defaults(capsys):
    from alexnet import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"alexnet {__version__}"
    for command, flags in {
        "predict": ["--top-k"],
        "evaluate": ["--batch-size", "--workers"],
        "export": ["--format", "--input-size"],
        "benchmark": ["--repeats"],
        "summary": ["--num-classes"],
    }.items():
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for flag in flags:
            described = text.split(flag, 2)[-1][:200]
            assert "default" in described, (command, flag, described)
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "{paper,caffe,keras,torch,kaiming}" in text


def test_strict_with_loader_workers_fails_in_one_line(tmp_path, capsys):
    from conftest import write_images

    write_images(tmp_path / "d", 3)
    path = tmp_path / "d" / "red" / "broken.jpg"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:300])  # the header passes the scan; decoding fails
    argv = ["train", str(tmp_path / "d"), "--output", str(tmp_path / "run"), *FAST, "--strict", "--workers", "2"]
    err = _fails(argv, capsys, "unreadable image")
    assert "DataLoader worker" not in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------- int8
@pytest.fixture
def colour_checkpoint(colour_data, colour_classifier, tmp_path) -> Path:
    """The colour classifier as a checkpoint that names its training data, as `alexnet train` writes it."""
    from alexnet.models.checkpoint import save_checkpoint

    model, card = colour_classifier
    save_checkpoint(tmp_path / "best.safetensors", model, card.to_json() | {"data": str(colour_data)})
    return tmp_path / "best.safetensors"


def test_an_int8_export_is_verified_and_read_by_evaluate_and_predict(colour_data, colour_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "int8.onnx"
    argv = ["export", str(colour_checkpoint), "--int8", "--calibration-images", "24", "--output", str(out)]
    assert main(argv) == 0  # calibrated on the checkpoint's own training data
    printed = capsys.readouterr().out
    assert "onnx int8" in printed and f"of {colour_data / 'train'}" in printed
    assert "top-1 agreement with fp32 on 48 images of" in printed and "(needs 99%)" in printed
    assert main(["evaluate", str(out), str(colour_data), "--json", "--output", str(tmp_path / "ev")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "onnxruntime-int8" and result["images"] == 48
    assert result["inference"]["calibration"]["calibration_images"] == 24
    assert main(["evaluate", str(colour_checkpoint), str(colour_data), "--precision", "fp32", "--json"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert abs(result["top1"] - fp32["top1"]) <= 1 / 48  # the agreement rule: at most one answer changed
    assert main(["predict", str(out), str(colour_data / "val" / "red"), "--top-k", "1", "--json"]) == 0
    assert {r["top"][0]["class"] for r in json.loads(capsys.readouterr().out)["predictions"]} == {"red"}
    assert main(["evaluate", str(out), str(colour_data), "--precision", "bf16"]) == 1  # this file cannot
    assert "int8 model" in capsys.readouterr().err


def test_evaluate_in_int8_from_a_checkpoint_reports_its_agreement_and_calibration(
    colour_data, colour_checkpoint, monkeypatch, capsys
):
    pytest.importorskip("onnxruntime")
    # ONNX Runtime quantises in seconds, the compiled mode compiles for a minute: on a job of 48 images with
    # nothing timed yet, the quicker set-up is tried first and the other would not pay back.
    assert main(["evaluate", str(colour_checkpoint), str(colour_data), "--precision", "int8", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["mode"] == "onnxruntime-int8" and result["inference"]["agreement"] >= 0.99
    assert "onnxruntime-int8 agrees with fp32 on" in captured.err
    assert f"calibrated (minmax) on 48 images of {colour_data / 'train'}" in captured.err  # all 48 there are


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--int8", "--format", "torchscript"], "exports ONNX"),
        (["--calibration", "digits"], "go with --int8"),
        (["--int8", "--calibration-method", "guess"], "invalid choice"),
    ],
)
def test_int8_export_flags_are_checked_first(colour_checkpoint, tmp_path, extra, match, capsys):
    assert main(["export", str(colour_checkpoint), "--output", str(tmp_path / "m.onnx"), *extra]) == 2
    assert match in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_int8_export_without_calibration_images_says_how_to_give_them(colour_classifier, tmp_path, capsys):
    from alexnet.models.checkpoint import save_checkpoint

    model, card = colour_classifier
    save_checkpoint(tmp_path / "best.safetensors", model, card.to_json() | {"data": str(tmp_path / "gone")})
    assert main(["export", str(tmp_path / "best.safetensors"), "--int8", "--output", str(tmp_path / "m.onnx")]) == 1
    assert "--calibration DATA" in capsys.readouterr().err
