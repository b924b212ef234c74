"""Exported models match PyTorch on other batch sizes and carry the model's data contract."""

from __future__ import annotations

import json

import pytest
import torch

from alexnet import create_model
from alexnet.export import (
    EXTRA_FILE,
    FORMATS,
    ExportVerificationError,
    OnnxClassifier,
    export_model,
    is_onnx_file,
    read_onnx_metadata,
)

pytest.importorskip("onnxruntime")

CLASSES = [f"class_{i}" for i in range(10)]


def _model_and_meta() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = create_model("alexnet_small", len(CLASSES)).eval()
    meta = {
        "model": "alexnet_small",
        "num_classes": len(CLASSES),
        "classes": CLASSES,
        "input_size": 32,
        "resize_size": 36,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "config": {"not": "exported"},
    }
    return model, meta


def _load(path, fmt) -> tuple[callable, dict]:
    if fmt == "onnx":
        classifier = OnnxClassifier(path)
        return classifier, classifier.meta
    files = {EXTRA_FILE: ""}
    if fmt == "torchscript":
        module = torch.jit.load(str(path), _extra_files=files)
    else:
        module = torch.export.load(str(path), extra_files=files).module()
    return module, json.loads(files[EXTRA_FILE])


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_round_trip_matches_pytorch_with_a_dynamic_batch(tmp_path, fmt):
    model, meta = _model_and_meta()
    path = tmp_path / f"model.{fmt}"
    report = export_model(model, meta, fmt, path)
    assert path.is_file() and report["max_abs_diff"] <= report["tolerance"]
    run, stored = _load(path, fmt)
    assert stored == {k: meta[k] for k in stored} and stored["classes"] == CLASSES and "config" not in stored
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), rtol=1e-4, atol=1e-5)


def test_onnx_metadata_and_classifier(tmp_path):
    model, meta = _model_and_meta()
    path = tmp_path / "m.onnx"
    export_model(model, meta, "onnx", path)
    assert is_onnx_file(path) and not is_onnx_file(tmp_path / "missing.onnx")
    stored = read_onnx_metadata(path)
    assert stored["classes"] == CLASSES and stored["mean"] == meta["mean"] and stored["input_size"] == 32
    classifier = OnnxClassifier(path)
    assert (classifier.model, classifier.classes, classifier.resize_size) == ("alexnet_small", CLASSES, 36)


def test_export_uses_the_requested_input_size(tmp_path):
    model, meta = _model_and_meta()
    report = export_model(model, meta, "exported-program", tmp_path / "m.pt2", input_size=48)
    assert report["input_shape"] == ["batch", 3, 48, 48]
    _, stored = _load(tmp_path / "m.pt2", "exported-program")
    assert stored["input_size"] == 48


def test_a_mismatch_above_tolerance_fails_and_writes_nothing(tmp_path):
    model, meta = _model_and_meta()
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportVerificationError, match="differs from PyTorch"):
        export_model(model, meta, "onnx", path, tolerance=-1.0)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_metadata_must_hold_the_data_contract(tmp_path):
    model, meta = _model_and_meta()
    del meta["classes"]
    with pytest.raises(ValueError, match="classes"):
        export_model(model, meta, "onnx", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="format"):
        export_model(model, _model_and_meta()[1], "tflite", tmp_path / "m.tflite")


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    from alexnet.checkpoint import save_checkpoint
    from alexnet.cli import main

    model, meta = _model_and_meta()
    save_checkpoint(tmp_path / "best.safetensors", model, meta)
    out = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path / "best.safetensors"), "--format", "onnx", "--output", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    classifier = OnnxClassifier(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), model(x), rtol=1e-4, atol=1e-5)
    assert main(["export", str(tmp_path / "nothing.safetensors"), "--output", str(out)]) == 2
