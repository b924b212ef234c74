"""The explicit two-column alexnet2012 (the paper's two GPUs) is the grouped one written out: same weights,
outputs and gradients, and the columns only talk at conv3 and the fully connected layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet import AlexNetColumns, create_model, to_columns, to_grouped
from alexnet.models.alexnet import SPECS, LocalResponseNorm, build

CONV_NAMES = ["conv1", "conv2", "conv3", "conv4", "conv5"]
FC_NAMES = ["fc6", "fc7"]


@pytest.fixture(scope="module")
def grouped() -> nn.Module:
    torch.manual_seed(0)
    return create_model("alexnet2012").eval()


@pytest.fixture(scope="module")
def cols(grouped: nn.Module) -> AlexNetColumns:
    return to_columns(grouped).eval()


def grouped_layer(model: nn.Module, name: str) -> nn.Module:
    return dict(list(model.features.named_children()) + list(model.classifier.named_children()))[name]


def column_layer(cols: AlexNetColumns, col: int, name: str) -> nn.Module:
    layers = list(cols.columns[col].convs) + list(cols.columns[col].fcs)
    return layers[(CONV_NAMES + FC_NAMES).index(name)]


def test_round_trip_gives_identical_state_dicts(grouped: nn.Module, cols: AlexNetColumns) -> None:
    back = to_grouped(cols)
    a, b = grouped.state_dict(), back.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # And the other way round.
    again = to_columns(back)
    for key, value in cols.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_columns_hold_halves_of_each_grouped_layer(grouped: nn.Module, cols: AlexNetColumns) -> None:
    # Output maps / units 0..n/2-1 live on GPU 0, the rest on GPU 1.
    for name in CONV_NAMES + FC_NAMES:
        w = grouped_layer(grouped, name).weight
        half = w.shape[0] // 2
        assert torch.equal(column_layer(cols, 0, name).weight, w[:half]), name
        assert torch.equal(column_layer(cols, 1, name).weight, w[half:]), name
    assert torch.equal(cols.fc8.weight, grouped_layer(grouped, "fc8").weight)


def test_parameter_count_unchanged(grouped: nn.Module, cols: AlexNetColumns) -> None:
    assert sum(p.numel() for p in cols.parameters()) == sum(p.numel() for p in grouped.parameters()) == 60_965_224


def test_column_weight_shapes_exchange_only_at_conv3_and_fc(cols: AlexNetColumns) -> None:
    for c in range(2):
        shapes = [tuple(column_layer(cols, c, n).weight.shape) for n in CONV_NAMES + FC_NAMES]
        assert shapes == [
            (48, 3, 11, 11),  # conv1 reads the image
            (128, 48, 5, 5),  # conv2: only this column's 48 maps
            (192, 256, 3, 3),  # conv3: both columns' 2 x 128 maps
            (192, 192, 3, 3),  # conv4: only this column's 192 maps
            (128, 192, 3, 3),  # conv5: only this column's 192 maps
            (2048, 256 * 6 * 6),  # fc6: both columns
            (2048, 4096),  # fc7: both columns
        ]
    assert tuple(cols.fc8.weight.shape) == (1000, 4096)


def pixels(*shape: int) -> torch.Tensor:
    """Inputs on the scale alexnet2012 is fed (mean-subtracted 0-255 pixels: its data config has std 1/255), where
    the LRN constants matter; with unit-scale inputs LRN is nearly a constant factor and hides mistakes."""
    return 100 * torch.randn(*shape)


def test_outputs_equal_in_eval_mode(grouped: nn.Module, cols: AlexNetColumns) -> None:
    torch.manual_seed(1)
    x = pixels(2, 3, 227, 227)
    with torch.no_grad():
        a, b = grouped(x), cols(x)
    assert a.shape == b.shape == (2, 1000)
    assert a.std() > 1e-3  # a non-trivial output
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # The comparison can see a mistake as small as an LRN window crossing the column boundary.
    lrns = [m for m in grouped.features if isinstance(m, LocalResponseNorm)]
    try:
        for m in lrns:
            m.groups = 1
        with torch.no_grad():
            crossing = grouped(x)
    finally:
        for m in lrns:
            m.groups = 2
    assert (crossing - b).abs().max() > 1e-4


def test_gradients_map_to_the_same_values(grouped: nn.Module, cols: AlexNetColumns) -> None:
    g, c = grouped, cols
    torch.manual_seed(2)
    x = pixels(2, 3, 99, 99)
    target = torch.tensor([3, 997])
    for model in (g, c):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), target).backward()
    try:
        _compare_grads(g, c)
    finally:
        g.zero_grad(set_to_none=True)
        c.zero_grad(set_to_none=True)


def _max_rel_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest expected magnitude (cheap on 37M-element grads)."""
    assert got.shape == expected.shape
    return ((got - expected).abs().max() / expected.abs().max()).item()


def _compare_grads(g: nn.Module, c: AlexNetColumns) -> None:
    for name in [*CONV_NAMES, *FC_NAMES, "fc8"]:
        ref = grouped_layer(g, name)
        parts = [c.fc8] if name == "fc8" else [column_layer(c, i, name) for i in range(2)]
        for attr in ("weight", "bias"):
            expected = getattr(ref, attr).grad
            got = torch.cat([getattr(p, attr).grad for p in parts])
            assert expected.abs().max() > 0, (name, attr)
            assert _max_rel_diff(got, expected) < 1e-4, (name, attr)


def _record(cols: AlexNetColumns, x: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
    """Pre-ReLU output of every layer of every column during one forward pass."""
    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for c in range(2):
        for name in CONV_NAMES + FC_NAMES:
            layer = column_layer(cols, c, name)
            handles.append(
                layer.register_forward_hook(lambda _m, _i, out, key=(c, name): seen.__setitem__(key, out.clone()))
            )
    try:
        with torch.no_grad():
            seen[(-1, "out")] = cols(x)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize(
    ("perturbed", "isolated", "reached"),
    [
        # A change in column 1's conv1 cannot reach column 0 before the exchange at conv3.
        ("conv1", ["conv1", "conv2"], ["conv3", "conv4", "conv5", "fc6", "fc7"]),
        # A change in column 1's conv3 cannot reach column 0 before the exchange at fc6.
        ("conv3", ["conv1", "conv2", "conv3", "conv4", "conv5"], ["fc6", "fc7"]),
    ],
)
def test_columns_communicate_only_at_conv3_and_fc(
    cols: AlexNetColumns, perturbed: str, isolated: list[str], reached: list[str]
) -> None:
    torch.manual_seed(3)
    x = pixels(1, 3, 99, 99)
    before = _record(cols, x)
    weight = column_layer(cols, 1, perturbed).weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(-1.5)
        after = _record(cols, x)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    for name in isolated:
        assert torch.equal(before[(0, name)], after[(0, name)]), name
    for name in reached:
        assert not torch.allclose(before[(0, name)], after[(0, name)]), name
    assert not torch.allclose(before[(1, perturbed)], after[(1, perturbed)])


def test_registry_builds_the_columns_model() -> None:
    torch.manual_seed(4)
    model = create_model("alexnet2012_columns", num_classes=7).eval()
    assert isinstance(model, AlexNetColumns)
    assert model.fc8.out_features == 7
    assert model.min_input_size == 67
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 67)).shape == (1, 7)
        with pytest.raises(ValueError, match="67"):
            model(torch.randn(1, 3, 66, 66))
    # Converting back keeps the class count and the outputs.
    back = to_grouped(model).eval()
    x = torch.randn(1, 3, 99, 99)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=1e-5, rtol=0)


def test_place_puts_columns_on_devices(cols: AlexNetColumns) -> None:
    x = torch.randn(1, 3, 67, 67)
    with torch.no_grad():
        before = cols(x)
        model = cols.place("cpu", "cpu")
        assert model is cols
        assert all(p.device.type == "cpu" for p in model.parameters())
        torch.testing.assert_close(model(x), before)
    with pytest.raises(ValueError, match="2 devices"):
        model.place("cpu")


def test_single_column_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="single-column"):
        to_columns(build(SPECS["alexnet_small"], 10))
