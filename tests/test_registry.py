"""create_model / list_models: names, class counts, and loading weight files (torchvision's format)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from alexnet import AlexNet, AlexNetColumns, UserError, create_model, list_models
from alexnet.models.registry import get_spec, load_weights_file

EXPECTED_NAMES = {"alexnet", "alexnet2012", "alexnet_bn", "alexnet_small", "alexnet2012_columns"}


@pytest.fixture(scope="module")
def tv() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.alexnet().eval()


@pytest.fixture(scope="module")
def tv_file(tv: nn.Module, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("weights") / "alexnet_tv.pth"
    torch.save(tv.state_dict(), path)
    return path


def assert_same_weights(model: nn.Module, reference: nn.Module) -> None:
    a, b = model.state_dict(), reference.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_outputs(model: nn.Module, reference: nn.Module) -> None:
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ names
def test_list_models() -> None:
    names = list_models()
    assert EXPECTED_NAMES <= set(names)
    assert len(names) == len(set(names))
    for name in names:
        get_spec(name)  # every listed name resolves


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UserError) as info:
        create_model("nope")
    message = str(info.value)
    assert "nope" in message
    for name in EXPECTED_NAMES:
        assert name in message


@pytest.mark.parametrize("name", ["alexnet_small_columns", "alexnet_columns", "AlexNet", ""])
def test_near_miss_names_are_refused(name: str) -> None:
    with pytest.raises(UserError, match="alexnet2012"):
        create_model(name)


def test_create_model_type() -> None:
    assert type(create_model("alexnet_small", num_classes=3)) is AlexNet  # the columns model: test_columns.py


@pytest.mark.parametrize("num_classes", [1, 7, 1000])
def test_num_classes(num_classes: int) -> None:
    model = create_model("alexnet_small", num_classes=num_classes).eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert (last.in_features, last.out_features) == (1024, num_classes)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)


def test_num_classes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("alexnet_small", num_classes=0)


def test_dropout_and_init_overrides() -> None:
    model = create_model("alexnet_small", num_classes=5, dropout=0.25, init="paper")
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.25}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert torch.equal(convs[1].bias, torch.ones_like(convs[1].bias))  # paper init: conv2 bias 1
    assert torch.equal(convs[0].bias, torch.zeros_like(convs[0].bias))


# ------------------------------------------------------------------------------------------ weight files
def test_weights_from_torch_save(tv: nn.Module, tv_file) -> None:
    model = create_model("alexnet", weights=tv_file)
    assert_same_weights(model, tv)
    assert_same_outputs(model, tv)
    # str paths work as well as Path objects.
    assert_same_weights(create_model("alexnet", weights=str(tv_file)), tv)


def test_weights_from_safetensors(tv: nn.Module, tmp_path) -> None:
    path = tmp_path / "alexnet_tv.safetensors"
    save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(path))
    model = create_model("alexnet", weights=path)
    assert_same_weights(model, tv)
    assert_same_outputs(model, tv)


def test_weights_from_a_checkpoint_dict_with_state_dict_key(tmp_path) -> None:
    torch.manual_seed(6)
    ref = create_model("alexnet_small", num_classes=5)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, path)
    torch.manual_seed(7)
    model = create_model("alexnet_small", num_classes=5, weights=path)
    assert_same_weights(model, ref)


def test_grouped_weights_load_into_the_columns_model(tmp_path) -> None:
    torch.manual_seed(5)
    grouped = create_model("alexnet2012", num_classes=4).eval()
    path = tmp_path / "alexnet2012.pt"
    torch.save(grouped.state_dict(), path)
    cols = create_model("alexnet2012_columns", num_classes=4, weights=path).eval()
    assert isinstance(cols, AlexNetColumns)
    x = torch.randn(1, 3, 67, 67)
    with torch.no_grad():
        torch.testing.assert_close(cols(x), grouped(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("random.pth", bytes(range(256)) * 8),
        ("notes.txt", b"these are not weights\n"),
        ("empty.pt", b""),
        ("random.safetensors", b"\x00\x01garbage" * 10),
    ],
)
def test_a_file_that_is_not_weights_is_a_user_error(tmp_path, filename: str, content: bytes) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a weights file") as info:
        create_model("alexnet_small", weights=path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)  # one line for the CLI


def test_a_pickle_of_something_else_is_a_user_error(tmp_path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="state_dict"):
        create_model("alexnet_small", weights=path)
    path2 = tmp_path / "mixed.pt"
    torch.save({"a": torch.zeros(1), "b": "text"}, path2)
    with pytest.raises(UserError, match="state_dict"):
        load_weights_file(path2)


def test_missing_file_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        create_model("alexnet_small", weights=tmp_path / "missing.pth")


def test_weights_of_another_shape_are_a_user_error(tv_file) -> None:
    # torchvision weights into a 10-class model: fc8 does not fit.
    with pytest.raises(UserError, match="do not fit"):
        create_model("alexnet", num_classes=10, weights=tv_file)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_weights_are_loaded_strictly(tmp_path, change: str) -> None:
    state = create_model("alexnet_small", num_classes=10).state_dict()
    if change == "missing":
        del state["classifier.fc8.bias"]
    else:
        state["classifier.fc9.weight"] = torch.zeros(1)
    path = tmp_path / f"{change}.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match="do not fit"):
        create_model("alexnet_small", num_classes=10, weights=path)


def test_weights_of_another_variant_are_a_user_error(tmp_path) -> None:
    path = tmp_path / "small.pt"
    torch.save(create_model("alexnet_small", num_classes=10).state_dict(), path)
    with pytest.raises(UserError, match="do not fit"):
        create_model("alexnet_small", num_classes=11, weights=path)
    with pytest.raises(UserError, match="do not fit"):
        create_model("alexnet_bn", num_classes=10, weights=path)
