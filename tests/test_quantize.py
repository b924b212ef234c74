"""int8 quantisation: the calibration images are the ones the docs promise, the exported model keeps the
fp32 predictions by the agreement rule, its weights are per-channel symmetric int8 (checked against the
formula), and a bad calibration makes the export refuse and ``auto`` fall back, with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alexnet.errors import UserError
from alexnet.models.alexnet import named_layers
from alexnet.runtime.export import ExportVerificationError, OnnxModel
from alexnet.runtime.quantize import Calibration, export_int8, heldout_set, load_calibration
from conftest import prepared

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def calibration(colour_data, colour_classifier) -> Calibration:
    return load_calibration(colour_data, colour_classifier[1], count=24)


@pytest.fixture(scope="module")
def heldout(colour_data, colour_classifier, calibration):
    return heldout_set(colour_data, colour_classifier[1], calibration)


@pytest.fixture(scope="module")
def exported(colour_classifier, calibration, heldout, tmp_path_factory):
    """The int8 export of the colour classifier: (path, report)."""
    model, card = colour_classifier
    path = tmp_path_factory.mktemp("int8") / "int8.onnx"
    return path, export_int8(model, card, path, calibration, heldout)


def _ort_logits(source, images: torch.Tensor) -> torch.Tensor:
    """The model run by ONNX Runtime itself, not through our wrapper."""
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])


def test_calibration_takes_training_images_in_turns_from_each_class(colour_data, colour_classifier):
    card = colour_classifier[1]
    cal = load_calibration(colour_data, card, count=7, method="entropy")
    classes = [f.split("/")[-2] for f in cal.files]
    assert all("/train/" in f for f in cal.files)
    assert sorted(classes) == ["blue"] * 3 + ["green"] * 2 + ["red"] * 2  # 7 in turns over 3 classes
    expected = torch.stack([prepared(f, card) for f in cal.files])
    torch.testing.assert_close(cal.images, expected, rtol=0, atol=1e-5)
    assert cal.record()["calibration_images"] == 7 and cal.record()["calibration_method"] == "entropy"
    images, labels, where = heldout_set(colour_data, card, cal)
    assert "val" in where and len(images) == 48  # every validation image, none of them a calibration image
    assert sorted(labels.tolist()) == [0] * 16 + [1] * 16 + [2] * 16  # the folder's classes, by name
    with pytest.raises(UserError, match="calibration method"):
        load_calibration(colour_data, card, method="guess")


def test_without_splits_the_held_out_images_are_the_ones_calibration_left(colour_classifier, tmp_path):
    from conftest import write_images

    card = colour_classifier[1]
    write_images(tmp_path / "flat", 10)  # <class>/<image>, no train/val/test
    cal = load_calibration(tmp_path / "flat", card, count=12)
    images, labels, _ = heldout_set(tmp_path / "flat", card, cal)
    assert len(images) == 30 - 12 and sorted(labels.tolist()) == [0] * 6 + [1] * 6 + [2] * 6
    calibrated = {tuple(x.flatten()[:50].tolist()) for x in cal.images}
    assert not calibrated & {tuple(x.flatten()[:50].tolist()) for x in images}  # no image in both


def test_int8_export_keeps_the_fp32_predictions_and_records_its_calibration(colour_classifier, heldout, exported):
    model, card = colour_classifier
    path, report = exported
    images, labels, _ = heldout
    with torch.no_grad():
        fp32 = model(images).argmax(1)
    int8 = _ort_logits(str(path), images).argmax(1)
    agreement = float((int8 == fp32).float().mean())
    assert report["agreement"] == pytest.approx(agreement) and agreement >= 0.99
    assert report["int8_top1"] == pytest.approx(float((int8 == labels).float().mean()))
    stored = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    record = json.loads(stored["quantization"])
    assert record["calibration_images"] == 24 and record["calibration_method"] == "minmax"
    assert "train" in record["calibration_source"]
    assert OnnxModel(path).card == card and OnnxModel(path).precision == "int8"


@pytest.mark.parametrize("bits, top", [(7, 64), (8, 127)])
def test_weights_are_int8_symmetric_with_one_scale_per_output_channel(
    bits, top, colour_classifier, calibration, heldout, exported, tmp_path
):
    """The largest |w| of each output channel maps to 64 with 7-bit weights (the default: 2 x 255 x 64 = 32,640
    fits the 16-bit pair sums of CPUs without VNNI, 2 x 255 x 127 would not), to 127 with 8."""
    model, card = colour_classifier
    path = exported[0] if bits == 7 else tmp_path / "int8-8bit.onnx"
    if bits == 8:
        export_int8(model, card, path, calibration, heldout, weight_bits=8)
    graph = onnx.load(str(path)).graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    weights = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in init and init[node.input[0]].dtype == np.int8:
            q, scale, zero = (init[n] for n in node.input)
            weights[q.shape] = (q, scale, zero, {a.name: a.i for a in node.attribute}.get("axis", 1))
    for name, layer in named_layers(model):
        w = layer.weight.detach().numpy()
        key = w.shape if w.shape in weights else w.T.shape  # ONNX may store an fc weight transposed
        q, scale, zero, axis = weights[key]
        per_channel = np.abs(w).reshape(w.shape[0], -1).max(1) / top  # symmetric: max |w| maps to the top
        assert scale.shape == (w.shape[0],) and not zero.any(), name
        np.testing.assert_allclose(scale, per_channel, rtol=1e-6, err_msg=name)
        q = q if key == w.shape else q.T
        np.testing.assert_array_equal(q, np.clip(np.round(w / per_channel.reshape(-1, *[1] * (w.ndim - 1))), -top, top))
        assert axis == (0 if key == w.shape else 1), name


def test_a_calibration_far_from_the_data_fails_the_export_and_writes_nothing(
    colour_classifier, calibration, heldout, tmp_path
):
    model, card = colour_classifier
    # Ranges set on near-black images: real activations saturate, and most predictions change.
    dark = Calibration(calibration.images * 0.001, "images scaled by 0.001")
    path = tmp_path / "int8.onnx"
    with pytest.raises(ExportVerificationError, match="agrees with fp32 on") as info:
        export_int8(model, card, path, dark, heldout)
    assert not path.exists() and "nothing written" in str(info.value)
