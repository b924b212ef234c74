"""`model_summary` and `alexnet summary`: totals against the models themselves, published counts, and
multiply-adds counted independently with forward hooks."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from alexnet import UserError, create_model
from alexnet.cli import main
from alexnet.models.summary import model_summary

KNOWN_PARAMS = {"alexnet2012": 60_965_224, "alexnet": 61_100_840, "alexnet_bn": 62_379_048}


@functools.cache
def summary(name: str, num_classes: int = 1000, input_size: int | None = None) -> tuple[str, dict]:
    return model_summary(name, num_classes, input_size)


def hook_mult_adds(model: nn.Module, size: int) -> int:
    """Multiply-adds of one image: conv = output elements x (in_channels / groups x kh x kw); linear = in x out."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.weight[0].numel()

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


# ------------------------------------------------------------------------------------------ model_summary
@pytest.mark.parametrize("name", ["alexnet2012", "alexnet", "alexnet_bn"])
def test_totals_are_the_known_counts_and_the_models_own(name: str) -> None:
    _, data = summary(name)
    model = create_model(name)
    own = sum(p.numel() for p in model.parameters())
    assert data["total_params"] == own == KNOWN_PARAMS[name]
    assert data["trainable_params"] == KNOWN_PARAMS[name]
    assert data["model"] == name and data["num_classes"] == 1000
    # Leaf rows add up to the total.
    assert sum(layer["params"] for layer in data["layers"]) == own


def test_alexnet_bn_non_trainable_as_keras() -> None:
    _, data = summary("alexnet_bn")
    assert data["non_trainable_params"] == 704
    assert summary("alexnet2012")[1]["non_trainable_params"] == 0
    assert "704" in summary("alexnet_bn")[0]


def test_default_input_size_is_the_models() -> None:
    assert summary("alexnet2012")[1]["input_size"] == [3, 227, 227]
    assert summary("alexnet_bn")[1]["input_size"] == [3, 227, 227]
    assert summary("alexnet_small", 7)[1]["input_size"] == [3, 32, 32]


def test_num_classes_changes_the_head_only() -> None:
    _, d7 = summary("alexnet_small", 7)
    _, d1000 = summary("alexnet_small", 1000)
    assert d7["total_params"] == sum(p.numel() for p in create_model("alexnet_small", 7).parameters())
    assert d1000["total_params"] - d7["total_params"] == (1024 + 1) * (1000 - 7)
    assert d7["layers"][-1]["output_shape"] == [1, 7]


def test_torchvision_alexnet_mult_adds_at_224() -> None:
    _, data = summary("alexnet", 1000, 224)
    assert data["input_size"] == [3, 224, 224]
    reference = hook_mult_adds(torchvision.models.alexnet(), 224)  # torchvision's own model
    assert reference == pytest.approx(714e6, rel=0.01)
    assert data["total_mult_adds"] == pytest.approx(714e6, rel=0.01)
    assert data["total_mult_adds"] == pytest.approx(reference, rel=0.01)


@pytest.mark.parametrize("name", ["alexnet2012", "alexnet_bn"])
def test_mult_adds_match_hook_count(name: str) -> None:
    _, data = summary(name)
    assert data["total_mult_adds"] == pytest.approx(hook_mult_adds(create_model(name), 227), rel=0.01)


def test_layer_rows_have_the_papers_shapes() -> None:
    _, data = summary("alexnet2012")
    shapes = {layer["name"]: layer["output_shape"] for layer in data["layers"]}
    assert shapes["conv1"] == [1, 96, 55, 55]
    assert shapes["pool1"] == [1, 96, 27, 27]
    assert shapes["conv2"] == [1, 256, 27, 27]
    assert shapes["pool2"] == [1, 256, 13, 13]
    assert shapes["conv5"] == [1, 256, 13, 13]
    assert shapes["pool5"] == [1, 256, 6, 6]
    assert shapes["fc8"] == [1, 1000]
    params = {layer["name"]: layer["params"] for layer in data["layers"]}
    assert params["conv2"] == 256 * 48 * 25 + 256  # groups=2


def test_summary_below_minimum_is_a_user_error() -> None:
    with pytest.raises(UserError, match="67"):
        model_summary("alexnet2012", 1000, 66)


def test_summary_unknown_model_is_a_user_error() -> None:
    with pytest.raises(UserError, match="alexnet_bn"):
        model_summary("nope")


# ------------------------------------------------------------------------------------------ CLI
def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--model", "alexnet2012"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 60,965,224" in out
    assert "Trainable params: 60,965,224" in out
    assert "conv1" in out and "fc8" in out


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--model", "alexnet_bn", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    model = create_model("alexnet_bn")
    assert data["total_params"] == sum(p.numel() for p in model.parameters()) == 62_379_048
    assert data["trainable_params"] == 62_379_048
    assert data["non_trainable_params"] == 704
    assert data["total_mult_adds"] == summary("alexnet_bn")[1]["total_mult_adds"]


def test_cli_json_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--model", "alexnet_small", "--num-classes", "7", "--input-size", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_classes"] == 7
    assert data["input_size"] == [3, 64, 64]
    assert data["total_params"] == sum(p.numel() for p in create_model("alexnet_small", 7).parameters())


def test_cli_unknown_model_exits_2_listing_models() -> None:
    exe = Path(sys.executable).with_name("alexnet")
    if not exe.exists():
        pytest.skip("the alexnet console script is not installed next to this Python")
    proc = subprocess.run([str(exe), "summary", "--model", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    for name in ["alexnet", "alexnet2012", "alexnet_bn", "alexnet_small", "alexnet2012_columns"]:
        assert name in proc.stderr
    assert "nope" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_input_below_minimum_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--model", "alexnet2012", "--input-size", "66"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "at least 67" in captured.err
    assert "66" in captured.err


def test_cli_bad_num_classes_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--model", "alexnet_small", "--num-classes", "0"]) == 2
    assert "--num-classes: must be at least 1" in capsys.readouterr().err


def test_cli_input_size_zero_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--model", "alexnet_small", "--input-size", "0"]) == 2
    assert "at least 15" in capsys.readouterr().err
