"""Exported models match PyTorch on other batch sizes and carry the model's data contract."""

from __future__ import annotations

import json

import pytest
import torch

from alexnet import ModelCard, create_model
from alexnet.runtime.export import EXTRA_FILE, FORMATS, ExportVerificationError, OnnxModel, export_model, is_onnx_file

pytest.importorskip("onnxruntime")

CLASSES = [f"class_{i}" for i in range(10)]


CARD = ModelCard(32, 36, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "alexnet_small", tuple(CLASSES))


def _model_and_meta() -> tuple[torch.nn.Module, ModelCard]:
    torch.manual_seed(0)
    return create_model("alexnet_small", len(CLASSES)).eval(), CARD


def _load(path, fmt) -> tuple[callable, dict]:
    if fmt == "onnx":
        onnx = OnnxModel(path)
        return onnx, onnx.card.to_json()
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
    assert ModelCard.from_json(stored) == meta and stored["classes"] == CLASSES
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), rtol=1e-4, atol=1e-5)


def test_onnx_metadata_and_classifier(tmp_path):
    model, meta = _model_and_meta()
    path = tmp_path / "m.onnx"
    export_model(model, meta, "onnx", path)
    assert is_onnx_file(path) and not is_onnx_file(tmp_path / "missing.onnx")
    import onnx

    stored = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert stored["classes"] == CLASSES and stored["mean"] == list(meta.mean) and stored["input_size"] == 32
    assert OnnxModel(path).card == meta


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


def test_a_card_must_hold_the_whole_data_contract(tmp_path):
    stored = CARD.to_json()
    del stored["classes"]
    with pytest.raises(ValueError, match="classes"):
        ModelCard.from_json(stored)
    with pytest.raises(ValueError, match="num_classes"):
        ModelCard.from_json({**CARD.to_json(), "num_classes": 3})
    model, _ = _model_and_meta()
    with pytest.raises(ValueError, match="format"):
        export_model(model, _model_and_meta()[1], "tflite", tmp_path / "m.tflite")


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    from alexnet.cli import main
    from alexnet.models.checkpoint import save_checkpoint

    model, meta = _model_and_meta()
    save_checkpoint(tmp_path / "best.safetensors", model, meta.to_json())
    out = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path / "best.safetensors"), "--format", "onnx", "--output", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    classifier = OnnxModel(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), model(x), rtol=1e-4, atol=1e-5)
    assert main(["export", str(tmp_path / "nothing.safetensors"), "--output", str(out)]) == 1
