"""Using a trained model: what the classifier feeds the network, and what evaluation of a checkpoint
reports, against hand computations (not against another path through the same code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from alexnet import ModelCard, create_model
from alexnet.models.checkpoint import save_checkpoint
from alexnet.runtime.inference import evaluate_folder, load_classifier, predict_files
from alexnet.training.recipes import resolve_config
from alexnet.training.train import fit

# Unusual, channel-distinct numbers: swapping mean and std, or reading ImageNet's, changes every pixel.
CARD = ModelCard(32, 40, mean=(0.30, 0.50, 0.70), std=(0.11, 0.22, 0.33), model="alexnet_small", classes=("a", "b"))


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("alexnet_small", 2)
    save_checkpoint(tmp_path / "best.safetensors", model, CARD.to_json())
    return tmp_path / "best.safetensors", model.eval()


def test_preprocess_is_the_centre_crop_normalised_with_the_checkpoints_own_mean_and_std(checkpoint):
    clf = load_classifier(checkpoint[0], device="cpu")
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    got = clf.preprocess(images)
    crop = images[:, :, 4:36, 4:36].double() / 255  # the central 32x32 of 40x40
    mean = torch.tensor([0.30, 0.50, 0.70], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.11, 0.22, 0.33], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(got.double(), (crop - mean) / std, rtol=1e-6, atol=1e-6)


def test_predicted_probabilities_are_the_softmax_of_the_model_on_the_hand_prepared_image(checkpoint, tmp_path):
    path, model = checkpoint
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    clf = load_classifier(path, device="cpu")
    [result] = predict_files(clf, [tmp_path / "x.png"], top_k=2, precision="fp32")
    # by hand: shorter side to 40 (antialiased), central 40x40, central 32x32, (x - mean) / std
    x = TF.pil_to_tensor(image)
    x = TF.center_crop(TF.resize(x, 40, antialias=True), [40, 40])[:, 4:36, 4:36].float() / 255
    x = (x - torch.tensor(CARD.mean).view(3, 1, 1)) / torch.tensor(CARD.std).view(3, 1, 1)
    with torch.no_grad():
        probs = model(x[None]).softmax(1)[0]
    got = {t["class"]: t["probability"] for t in result["top"]}
    assert got == pytest.approx({"a": probs[0].item(), "b": probs[1].item()}, rel=1e-5)


def test_the_finished_runs_optimizer_carries_the_recipes_settings(tiny_data, tmp_path):
    from alexnet.models.checkpoint import read_metadata

    overrides = dict(epochs=1, batch_size=8, workers=0, device="cpu", precision="fp32", schedule="constant",
                     lr=0.03, momentum=0.8, weight_decay=3e-3, nesterov=True)  # fmt: skip
    fit(tiny_data, tmp_path / "run", resolve_config("small", overrides=overrides), quiet=True)
    [group] = read_metadata(tmp_path / "run" / "checkpoints" / "last.safetensors")["train_state"]["optimizer"][
        "param_groups"
    ]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.03, 0.8, 3e-3, True)


def test_the_weight_decay_reaches_the_update(tiny_data, tmp_path):
    # One step of plain SGD (no momentum) on a model whose gradient we know: with lr 0.5 and decay 0.1,
    # a weight w moves by -0.5 * (grad + 0.1 * w). Train one epoch of one batch with and without decay
    # from the same start: the difference of the two updates is -lr * decay * w, exactly.
    runs = {}
    for wd in (0.0, 0.1):
        overrides = dict(epochs=1, batch_size=64, workers=0, device="cpu", precision="fp32", schedule="constant",
                         lr=0.5, momentum=0.0, nesterov=False, weight_decay=wd, dropout=0.0, pca_std=0.0, flip=False,
                         channels_last=False)  # fmt: skip
        fit(tiny_data, tmp_path / f"wd{wd}", resolve_config("small", overrides=overrides), quiet=True)
        from alexnet.models.checkpoint import load_checkpoint

        runs[wd] = load_checkpoint(tmp_path / f"wd{wd}" / "checkpoints" / "last.safetensors")[0].state_dict()
    torch.manual_seed(0)
    start = create_model("alexnet_small", 3).state_dict()  # the same seed-0 init fit used
    key = "classifier.fc8.weight"
    torch.testing.assert_close(runs[0.1][key] - runs[0.0][key], -0.5 * 0.1 * start[key], rtol=1e-4, atol=1e-7)


def test_re_evaluating_the_best_checkpoint_reproduces_the_logged_validation_numbers(tiny_data, tmp_path):
    overrides = dict(epochs=3, batch_size=8, workers=0, device="cpu", precision="fp32", schedule="step")
    fit(tiny_data, tmp_path / "run", resolve_config("small", overrides=overrides), quiet=True)
    history = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda h: (h["val_top1"], -h["val_loss"]))
    clf = load_classifier(tmp_path / "run", device="cpu")  # the run folder's best checkpoint
    result = evaluate_folder(clf, tiny_data / "val", precision="fp32", workers=0)
    assert result["top1"] == pytest.approx(best["val_top1"])
    assert result["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_a_folder_with_some_of_the_classes_is_scored_by_class_name_not_folder_position(tmp_path):
    torch.manual_seed(0)
    model = create_model("alexnet_small", 2)
    with torch.no_grad():
        model.classifier.fc8.bias.copy_(torch.tensor([-50.0, 50.0]))  # always class "b" (index 1)
    save_checkpoint(tmp_path / "best.safetensors", model, CARD.to_json())
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "b").mkdir(parents=True)  # only class b: position 0 in this folder, index 1 in the model
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / "b" / f"{i}.png")
    result = evaluate_folder(load_classifier(tmp_path / "best.safetensors", device="cpu"), tmp_path / "data",
                             precision="fp32", workers=0)  # fmt: skip
    assert result["top1"] == 1.0 and result["per_class_images"] == [0, 3]


def test_the_logged_learning_rates_follow_the_step_formula(tiny_data, tmp_path):
    overrides = dict(epochs=5, batch_size=8, workers=0, device="cpu", precision="fp32", schedule="step",
                     step_size=2, step_gamma=0.5, lr=0.04)  # fmt: skip
    result = fit(tiny_data, tmp_path / "run", resolve_config("small", overrides=overrides), quiet=True)
    assert [h["lr"] for h in result["history"]] == pytest.approx([0.04 * 0.5 ** (e // 2) for e in range(5)])


def test_mode_lines_say_why_the_mode_and_what_was_passed_over_and_prediction_lines_skip_unreadable_files():
    from alexnet.runtime.inference import mode_lines, prediction_lines

    mode = {
        "mode": "onnxruntime-int8", "reason": "measured fastest", "fallback_reason": "bf16 is emulated here",
        "agreement": 0.995, "calibration": {"calibration_method": "minmax", "calibration_source": "data/train"},
    }  # fmt: skip
    assert mode_lines(mode) == [
        "mode measured fastest",
        "passed over: bf16 is emulated here",
        "onnxruntime-int8 agrees with fp32 on 99.5% of held-out images",
        "int8 calibrated (minmax) on data/train",
    ]
    assert mode_lines({"mode": "eager-fp32"}) == []
    results = [
        {"file": "a.jpg", "top": [{"class": "n01440764", "words": "tench", "probability": 0.5}]},
        {"file": "b.jpg", "error": "cannot read image"},
        {"file": "c.jpg", "top": [{"class": "cat", "probability": 0.25}]},
    ]
    assert prediction_lines(results) == ["a.jpg", "   50.00%  tench (n01440764)", "c.jpg", "   25.00%  cat"]
