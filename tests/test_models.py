"""The variants against independent references: published parameter counts, the paper's shapes, formulas
and initialisation, torchvision's AlexNet, and Keras' 'same' padding rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from alexnet import create_model
from alexnet.models.alexnet import SPECS, Conv2dSame, LocalResponseNorm, feature_shapes

BASE_VARIANTS = ["alexnet2012", "alexnet", "alexnet_bn", "alexnet_small"]
ALL_VARIANTS = [*BASE_VARIANTS, "alexnet2012_columns"]

# Smallest square input for which the last max-pool still has a 1x1 output, worked backwards by hand.
# Pool (3/2) output m needs input >= 2(m-1)+3; conv (k, s, p) output m needs input >= s(m-1)+k-2p;
# Keras 'same' conv (stride s) output m needs input >= s(m-1)+1. conv3..conv5 (3x3, pad 1 / same) keep the size.
#   pool5 out 1 <- conv5/conv3 in 3 = pool2 out 3 <- conv2 out 7 = conv2 in 7 = pool1 out 7 <- conv1 out 15
#   alexnet2012: conv1 11/4 pad 0 -> 4*14 + 11     = 67
#   alexnet:     conv1 11/4 pad 2 -> 4*14 + 11 - 4 = 63
#   alexnet_bn:  conv1 'same' /4  -> 4*14 + 1      = 57
#   alexnet_small: conv1 5/1 pad 2 -> 14 + 5 - 4   = 15
MIN_SIZES = {"alexnet2012": 67, "alexnet": 63, "alexnet_bn": 57, "alexnet_small": 15, "alexnet2012_columns": 67}


def conv_params(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cout * (cin // groups) * k * k + cout


def fc_params(fin: int, fout: int) -> int:
    return fin * fout + fout


def n_params(model: nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)


def convs_of(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def linears_of(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def paper() -> nn.Module:
    torch.manual_seed(0)
    return create_model("alexnet2012").eval()


@pytest.fixture(scope="module")
def tv_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(1)
    ref = torchvision.models.alexnet().eval()
    ours = create_model("alexnet").eval()
    return ours, ref


@pytest.fixture(scope="module")
def bn_model() -> nn.Module:
    torch.manual_seed(2)
    return create_model("alexnet_bn").eval()


@pytest.fixture(scope="module")
def seven_class() -> dict[str, nn.Module]:
    """One 7-class model per variant, built on first use."""
    cache: dict[str, nn.Module] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> nn.Module:
            torch.manual_seed(3)
            cache[name] = create_model(name, num_classes=7).eval()
            self[name] = cache[name]
            return cache[name]

    return Lazy()


def capture(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Output shapes of model.features' named children during a real forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    children = dict(model.features.named_children())
    handles = [
        children[n].register_forward_hook(lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape)))
        for n in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


# ------------------------------------------------------------------------------------------ parameter counts
def test_alexnet2012_parameter_count_is_caffe_bvlc_alexnet(paper: nn.Module) -> None:
    # The paper's layer table: 96-256-384-384-256 maps, conv2/4/5 split over two GPUs, fc 4096-4096-1000.
    formula = (
        conv_params(3, 96, 11)
        + conv_params(96, 256, 5, groups=2)
        + conv_params(256, 384, 3)
        + conv_params(384, 384, 3, groups=2)
        + conv_params(384, 256, 3, groups=2)
        + fc_params(256 * 6 * 6, 4096)
        + fc_params(4096, 4096)
        + fc_params(4096, 1000)
    )
    assert formula == 60_965_224  # Caffe bvlc_alexnet deploy.prototxt
    assert n_params(paper) == 60_965_224
    assert n_params(paper, trainable=True) == 60_965_224
    assert len(list(paper.buffers())) == 0


def test_torchvision_variant_parameter_count(tv_pair: tuple[nn.Module, nn.Module]) -> None:
    ours, ref = tv_pair
    assert n_params(ref) == 61_100_840
    assert n_params(ours) == 61_100_840


def test_alexnet_bn_parameter_count_as_keras_counts_it(bn_model: nn.Module) -> None:
    # The blog's Keras model, layer by layer, with Keras' counting: Conv2D (k*k*cin + 1) * cout,
    # BatchNormalization 4 * c of which 2 * c (moving mean / variance) are non-trainable, Dense (in + 1) * out.
    # 'same' padding + valid 3/2 pooling: 227 -> 57 -> 28 -> 28 -> 13 -> 13 -> 6, so Flatten gives 256 * 6 * 6.
    keras_layers = [
        ("conv", (11 * 11 * 3 + 1) * 96),
        ("bn", 96),
        ("conv", (5 * 5 * 96 + 1) * 256),
        ("bn", 256),
        ("conv", (3 * 3 * 256 + 1) * 384),
        ("conv", (3 * 3 * 384 + 1) * 384),
        ("conv", (3 * 3 * 384 + 1) * 256),
        ("dense", (9216 + 1) * 4096),
        ("dense", (4096 + 1) * 4096),
        ("dense", (4096 + 1) * 1000),
    ]
    trainable = sum(v if kind != "bn" else 2 * v for kind, v in keras_layers)
    non_trainable = sum(2 * v for kind, v in keras_layers if kind == "bn")
    assert (trainable, non_trainable) == (62_379_048, 704)

    assert n_params(bn_model, trainable=True) == 62_379_048
    assert n_params(bn_model) == 62_379_048  # every parameter trains; the 704 are buffers
    buffers = dict(bn_model.named_buffers())
    running = {n: b for n, b in buffers.items() if "running_" in n}
    assert sum(b.numel() for b in running.values()) == 704
    assert sorted(running) == [
        "features.norm1.running_mean",
        "features.norm1.running_var",
        "features.norm2.running_mean",
        "features.norm2.running_var",
    ]
    # Anything else is a scalar bookkeeping counter, not a parameter.
    assert all(b.numel() == 1 for n, b in buffers.items() if n not in running)


def test_alexnet_small_structure_and_count() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet_small", num_classes=10)
    convs, fcs = convs_of(model), linears_of(model)
    assert len(convs) == 5 and len(fcs) == 3
    assert all(c.groups == 1 for c in convs)
    # The layer widths: one column of the paper (48-128-192-192-128), kernels 5-5-3-3-3, 3x3 pooled maps,
    # fc 1024-1024 -> classes.
    widths, kernels = [48, 128, 192, 192, 128], [5, 5, 3, 3, 3]
    assert [c.out_channels for c in convs] == widths
    assert [c.kernel_size for c in convs] == [(k, k) for k in kernels]
    assert [(f.in_features, f.out_features) for f in fcs] == [(128 * 3 * 3, 1024), (1024, 1024), (1024, 10)]
    cins = [3, *widths[:-1]]
    formula = sum(conv_params(ci, co, k) for ci, co, k in zip(cins, widths, kernels, strict=True))
    formula += fc_params(128 * 3 * 3, 1024) + fc_params(1024, 1024) + fc_params(1024, 10)
    assert n_params(model) == formula == 3_172_554


@pytest.mark.parametrize("name", BASE_VARIANTS)
def test_every_variant_has_five_convs_and_three_linears(name: str, seven_class: dict[str, nn.Module]) -> None:
    model = seven_class[name]
    assert len(convs_of(model)) == 5
    assert len(linears_of(model)) == 3
    assert linears_of(model)[-1].out_features == 7


# ------------------------------------------------------------------------------------------ alexnet2012 structure
def test_alexnet2012_feature_shapes_at_227(paper: nn.Module) -> None:
    names = ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]
    got = capture(paper, torch.randn(1, 3, 227, 227), names)
    expected = {
        "conv1": (1, 96, 55, 55),
        "pool1": (1, 96, 27, 27),
        "conv2": (1, 256, 27, 27),
        "pool2": (1, 256, 13, 13),
        "conv3": (1, 384, 13, 13),
        "conv4": (1, 384, 13, 13),
        "conv5": (1, 256, 13, 13),
        "pool5": (1, 256, 6, 6),
    }
    assert got == expected
    # The shape arithmetic the library does without a forward pass agrees with the real one.
    assert [(n, c, s) for n, c, s in feature_shapes(SPECS["alexnet2012"], 227)] == [
        (n, shape[1], shape[2]) for n, shape in expected.items()
    ]


def test_alexnet2012_groups(paper: nn.Module) -> None:
    convs = dict(paper.features.named_children())
    assert [convs[f"conv{i}"].groups for i in range(1, 6)] == [1, 2, 1, 2, 2]
    # groups=2 means each output map sees half the input maps (one GPU's worth).
    assert convs["conv2"].weight.shape == (256, 48, 5, 5)
    assert convs["conv3"].weight.shape == (384, 256, 3, 3)
    assert convs["conv4"].weight.shape == (384, 192, 3, 3)
    assert convs["conv5"].weight.shape == (256, 192, 3, 3)


def test_alexnet2012_layer_order_follows_the_paper(paper: nn.Module) -> None:
    # Section 3.5: LRN follows the first and second conv layers (after ReLU), max-pooling follows both LRN layers
    # and conv5; fc6 and fc7 have ReLU and dropout on their outputs.
    kinds = [type(m).__name__ for m in paper.features]
    assert kinds == [
        "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
        "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
        "Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
    ]  # fmt: skip
    assert [type(m).__name__ for m in paper.classifier] == [
        "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear",
    ]  # fmt: skip
    for lrn in (m for m in paper.features if isinstance(m, LocalResponseNorm)):
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.groups) == (5, 1e-4, 0.75, 2.0, 2)
    for pool in (m for m in paper.features if isinstance(m, nn.MaxPool2d)):
        assert (pool.kernel_size, pool.stride) == (3, 2)  # overlapping pooling, z=3, s=2
    assert all(d.p == 0.5 for d in paper.classifier if isinstance(d, nn.Dropout))


def test_alexnet2012_paper_initialisation(paper: nn.Module) -> None:
    named = {n: m for n, m in list(paper.features.named_children()) + list(paper.classifier.named_children())}
    for name in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]:
        w = named[name].weight.detach().double()
        n = w.numel()
        assert n >= 30_000
        # std of the sample std of n normals is ~ sigma / sqrt(2n) <= 4e-5 here; 3e-4 is > 7 of those.
        assert abs(w.std().item() - 0.01) < 3e-4, name
        assert abs(w.mean().item()) < 6 * 0.01 / math.sqrt(n), name
        bias = named[name].bias.detach()
        expected = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(bias, torch.full_like(bias, expected)), name


def test_alexnet2012_kaiming_initialisation_is_he_normal() -> None:
    # He et al. 2015 as torch defines the fans: N(0, 2 / (out_channels * kh * kw)) for the convolutions,
    # N(0, 2 / in_features) for fc6/fc7, and the output layer N(0, 0.01); every bias 0.
    torch.manual_seed(3)
    model = create_model("alexnet2012", init="kaiming")
    named = {n: m for n, m in list(model.features.named_children()) + list(model.classifier.named_children())}
    shapes = {"conv1": (96, 11), "conv2": (256, 5), "conv3": (384, 3), "conv4": (384, 3), "conv5": (256, 3)}
    want = {name: math.sqrt(2 / (out * k * k)) for name, (out, k) in shapes.items()}
    want |= {"fc6": math.sqrt(2 / 9216), "fc7": math.sqrt(2 / 4096), "fc8": 0.01}
    for name, std in want.items():
        w = named[name].weight.detach().double()
        assert w.std().item() == pytest.approx(std, rel=0.02), name
        assert abs(w.mean().item()) < 6 * std / math.sqrt(w.numel()), name
        assert not named[name].bias.any(), name


# ------------------------------------------------------------------------------------------ torchvision
def test_torchvision_state_dict_loads_strictly_and_outputs_match(tv_pair: tuple[nn.Module, nn.Module]) -> None:
    ours, ref = tv_pair
    ref_sd = ref.state_dict()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref_sd.items()]
    fresh = create_model("alexnet").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = fresh(x)
        fresh.load_state_dict(ref_sd, strict=True)
        ours_out, ref_out = fresh(x), ref(x)
    assert not torch.allclose(before, ref_out, atol=1e-5)  # the load is what makes them agree
    torch.testing.assert_close(ours_out, ref_out, atol=1e-5, rtol=0)
    # Same layer sequence (so the same semantics, dropout placement included).
    assert [type(m) for m in fresh.features] == [type(m) for m in ref.features]
    assert [type(m) for m in fresh.classifier] == [type(m) for m in ref.classifier]


# ------------------------------------------------------------------------------------------ LRN
def lrn_reference(a: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The paper's formula with explicit sums, window maps i - size // 2 .. i + (size - 1) // 2 clipped to [0, N-1]
    (for the paper's odd n = 5 that is i - n/2 .. i + n/2)."""
    x = a.double().tolist()
    batch, channels, height, width = a.shape
    out = torch.empty(a.shape, dtype=torch.float64)
    for b in range(batch):
        for i in range(channels):
            lo, hi = max(0, i - size // 2), min(channels - 1, i + (size - 1) // 2)
            for h in range(height):
                for w in range(width):
                    s = 0.0
                    for j in range(lo, hi + 1):
                        s += x[b][j][h][w] ** 2
                    out[b, i, h, w] = x[b][i][h][w] / (k + alpha * s) ** beta
    return out


def large_activations(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return (sign * (10 + 90 * torch.rand(shape, generator=g))).double()  # |a| in [10, 100]


# Any group count and size (also larger than a group), any constants: hypothesis draws them.
LRN_CASES = dict(
    groups=st.integers(1, 3),
    per_group=st.integers(1, 7),
    size=st.integers(1, 7),
    alpha=st.floats(1e-5, 1e-2),
    beta=st.floats(0.25, 1.0),
    k=st.floats(0.5, 3.0),
    seed=st.integers(0, 2**16),
)


@settings(max_examples=40, deadline=None)
@given(**LRN_CASES)
def test_lrn_matches_the_formula_per_group_for_any_constants(groups, per_group, size, alpha, beta, k, seed) -> None:
    x = large_activations((1, groups * per_group, 2, 2), seed=seed)
    got = LocalResponseNorm(size, alpha=alpha, beta=beta, k=k, groups=groups)(x)
    # Each group is normalised on its own: the window never reaches into the neighbouring group.
    expected = torch.cat([lrn_reference(part, size, alpha, beta, k) for part in x.split(per_group, dim=1)], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)


def test_lrn_matches_paper_formula() -> None:
    x = large_activations((2, 11, 3, 2))
    got = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x)
    torch.testing.assert_close(got, lrn_reference(x, 5, 1e-4, 0.75, 2.0), rtol=1e-12, atol=0)
    # Also in float32 (computed in float32 and returned in the input dtype).
    got32 = LocalResponseNorm()(x.float())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), lrn_reference(x, 5, 1e-4, 0.75, 2.0), rtol=1e-5, atol=1e-6)


def test_lrn_is_not_torchs_alpha_over_n() -> None:
    x = large_activations((1, 9, 2, 2), seed=1)
    ref = lrn_reference(x, 5, 1e-4, 0.75, 2.0)
    torch_lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x)
    # With |a| >= 10, alpha vs alpha / n changes the result by far more than any rounding.
    assert (torch_lrn - ref).abs().max() > 1e-2 * ref.abs().max()
    # torch's LRN with alpha * n is the paper's (the convention the docstring documents).
    torch.testing.assert_close(nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(x), ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("size", [3, 4, 5])
def test_lrn_window_convention_other_sizes(size: int) -> None:
    x = large_activations((1, 8, 2, 2), seed=size)
    got = LocalResponseNorm(size, alpha=2e-4, beta=0.6, k=1.5)(x)
    torch.testing.assert_close(got, lrn_reference(x, size, 2e-4, 0.6, 1.5), rtol=1e-12, atol=0)


def test_lrn_groups_keep_the_window_inside_each_half() -> None:
    x = large_activations((2, 12, 2, 3), seed=2)
    got = LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)(x)
    halves = [lrn_reference(h, 5, 1e-4, 0.75, 2.0) for h in x.chunk(2, dim=1)]
    torch.testing.assert_close(got, torch.cat(halves, dim=1), rtol=1e-12, atol=0)
    # ...which differs from one window over all 12 maps at the boundary (maps 4-7).
    whole = lrn_reference(x, 5, 1e-4, 0.75, 2.0)
    assert (got - whole)[:, 4:8].abs().max() > 1e-3
    torch.testing.assert_close(got[:, [0, 1, 2, 3, 8, 9, 10, 11]], whole[:, [0, 1, 2, 3, 8, 9, 10, 11]])


def lrn_differentiable_reference(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int):
    """The same formula as ``lrn_reference`` with one explicit sum per output map, in torch ops so
    autograd differentiates it (an independent route to the gradient)."""
    per_group = x.shape[1] // groups
    maps = []
    for i in range(x.shape[1]):
        first = (i // per_group) * per_group
        lo, hi = max(first, i - size // 2), min(first + per_group - 1, i + (size - 1) // 2)
        s = sum(x[:, j] ** 2 for j in range(lo, hi + 1))
        maps.append(x[:, i] / (k + alpha * s) ** beta)
    return torch.stack(maps, dim=1)


@settings(max_examples=30, deadline=None)
@given(**LRN_CASES)
def test_lrn_gradient_matches_autograd_of_the_formula(groups, per_group, size, alpha, beta, k, seed) -> None:
    x = large_activations((2, groups * per_group, 2, 3), seed=seed).requires_grad_()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layer = LocalResponseNorm(size, alpha=alpha, beta=beta, k=k, groups=groups)
    (got,) = torch.autograd.grad(layer(x), x, upstream)
    (expected,) = torch.autograd.grad(lrn_differentiable_reference(x, size, alpha, beta, k, groups), x, upstream)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("size", [4, 5])
def test_lrn_gradient_passes_gradcheck(size: int) -> None:
    # Finite differences against the hand-written backward (an even size has a mirrored adjoint window).
    x = (torch.randn(2, 7, 3, 2, dtype=torch.float64) * 30).requires_grad_()
    layer = LocalResponseNorm(size, alpha=1e-3, beta=0.75, k=2.0, groups=1)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradcheck(LocalResponseNorm(size, alpha=1e-3, beta=0.6, k=1.0, groups=2), (x[:, :6],))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_lrn_every_execution_path_computes_the_same_function() -> None:
    # Autograd's path (hand-written gradient), the no-grad path, and the out-of-place path tracers
    # take (torch.export, which the ONNX export uses; torch.jit.trace, which the TorchScript one uses).
    x = large_activations((2, 10, 3, 3), seed=3)
    expected = torch.cat([lrn_reference(h, 5, 1e-4, 0.75, 2.0) for h in x.chunk(2, dim=1)], dim=1)
    layer = LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)
    with torch.no_grad():
        no_grad = layer(x)
    with_grad = layer(x.clone().requires_grad_())
    assert with_grad.grad_fn is not None and "LRN" in type(with_grad.grad_fn).__name__
    program = torch.export.export(layer, (x.clone().requires_grad_(),))
    graph_ops = {str(node.target) for node in program.graph.nodes}
    assert not any("_LRNFunction" in op or "add_" in op for op in graph_ops), graph_ops  # out of place
    exported = program.module()(x)
    traced = torch.jit.trace(layer, x.clone().requires_grad_(), check_trace=False)(x)
    for got in (no_grad, with_grad.detach(), exported, traced):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_lrn_rejects_channels_that_do_not_split_into_its_groups() -> None:
    with pytest.raises(ValueError, match="5 channels do not split evenly"):
        LocalResponseNorm(groups=2)(torch.ones(1, 5, 2, 2, requires_grad=True))


def test_lrn_keeps_channels_last_and_computes_bf16_in_float32() -> None:
    x64 = large_activations((2, 12, 4, 4), seed=4)
    x = x64.to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
    layer = LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(x.shape, dtype=torch.float64)
    y.backward(upstream.to(torch.bfloat16))
    assert x.grad.dtype == torch.bfloat16 and x.grad.is_contiguous(memory_format=torch.channels_last)
    ref_in = x.detach().double().requires_grad_()  # the bf16-rounded input, so only the arithmetic differs
    ref = lrn_differentiable_reference(ref_in, 5, 1e-4, 0.75, 2.0, 2)
    ref.backward(upstream.to(torch.bfloat16).double())
    # One bf16 rounding of the result (2^-8 relative), no more: the sums ran in float32.
    torch.testing.assert_close(y.double(), ref.detach(), rtol=2**-8, atol=0)
    torch.testing.assert_close(x.grad.double(), ref_in.grad, rtol=2**-8, atol=2**-8 * ref_in.grad.abs().max().item())


# ------------------------------------------------------------------------------------------ alexnet_bn (Keras seed)
def tf_same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's documented 'SAME' padding: total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)."""
    total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize(("h", "w", "k", "s"), [(227, 227, 11, 4), (8, 9, 3, 2), (7, 10, 4, 3), (13, 13, 3, 1)])
def test_conv2d_same_matches_tensorflow_padding(h: int, w: int, k: int, s: int) -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, k, s)
    x = torch.randn(1, 2, h, w)
    (top, bottom), (left, right) = tf_same_pads(h, k, s), tf_same_pads(w, k, s)
    ref = F.conv2d(F.pad(x, (left, right, top, bottom)), conv.weight, conv.bias, stride=s)
    with torch.no_grad():
        out = conv(x)
    assert out.shape[-2:] == (math.ceil(h / s), math.ceil(w / s))
    torch.testing.assert_close(out, ref)


def test_alexnet_bn_structure(bn_model: nn.Module) -> None:
    kinds = [type(m).__name__ for m in bn_model.features]
    # Keras seed: Conv2D(relu) -> BatchNormalization -> MaxPooling2D twice, then three convs and a pool.
    assert kinds == [
        "Conv2dSame", "ReLU", "BatchNorm2d", "MaxPool2d",
        "Conv2dSame", "ReLU", "BatchNorm2d", "MaxPool2d",
        "Conv2dSame", "ReLU", "Conv2dSame", "ReLU", "Conv2dSame", "ReLU", "MaxPool2d",
    ]  # fmt: skip
    assert not any(isinstance(m, (LocalResponseNorm, nn.LocalResponseNorm)) for m in bn_model.modules())
    bns = [m for m in bn_model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [b.num_features for b in bns] == [96, 256]
    # Keras BatchNormalization defaults: epsilon 1e-3, momentum 0.99 (torch's momentum is 1 - Keras').
    assert all(b.eps == pytest.approx(1e-3) and b.momentum == pytest.approx(0.01) for b in bns)


def test_alexnet_bn_shapes_follow_keras_same_rule(bn_model: nn.Module) -> None:
    size = 227
    expected: dict[str, tuple[int, ...]] = {}
    for i, (ch, stride, pool) in enumerate([(96, 4, True), (256, 1, True), (384, 1, False), (384, 1, False)], 1):
        size = math.ceil(size / stride)  # Keras 'same'
        expected[f"conv{i}"] = (1, ch, size, size)
        if pool:
            size = (size - 3) // 2 + 1  # MaxPooling2D(3, 2), 'valid'
            expected[f"pool{i}"] = (1, ch, size, size)
    size = math.ceil(size / 1)
    expected["conv5"] = (1, 256, size, size)
    size = (size - 3) // 2 + 1
    expected["pool5"] = (1, 256, size, size)
    assert expected["conv1"] == (1, 96, 57, 57) and expected["pool5"] == (1, 256, 6, 6)
    got = capture(bn_model, torch.randn(1, 3, 227, 227), list(expected))
    assert got == expected


def test_alexnet_bn_returns_logits(bn_model: nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        out = bn_model(torch.randn(3, 3, 227, 227))
    assert out.shape == (3, 1000)
    assert (out < 0).any()
    assert not torch.allclose(out.sum(1), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("name", BASE_VARIANTS)
def test_no_softmax_in_any_variant(name: str, seven_class: dict[str, nn.Module]) -> None:
    model = seven_class[name]
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())
    assert isinstance(list(model.classifier)[-1], nn.Linear)


# ------------------------------------------------------------------------------------------ every variant
@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_any_num_classes_at_native_size(name: str, seven_class: dict[str, nn.Module]) -> None:
    model = seven_class[name]
    native = SPECS[name.removesuffix("_columns")].card.input_size
    with torch.no_grad():
        out = model(torch.randn(2, 3, native, native))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_min_input_size(name: str, seven_class: dict[str, nn.Module]) -> None:
    model = seven_class[name]
    minimum = MIN_SIZES[name]
    assert model.min_input_size == minimum
    with torch.no_grad():
        assert model(torch.randn(1, 3, minimum, minimum)).shape == (1, 7)
        assert model(torch.randn(1, 3, minimum, minimum + 5)).shape == (1, 7)
        for shape in [(1, 3, minimum - 1, minimum - 1), (1, 3, minimum, minimum - 1), (1, 3, minimum - 1, 300)]:
            with pytest.raises(ValueError, match=str(minimum)):
                model(torch.randn(shape))


@pytest.mark.parametrize("name", BASE_VARIANTS)
def test_min_input_size_is_where_the_feature_extractor_stops_working(
    name: str, seven_class: dict[str, nn.Module]
) -> None:
    # Independent of the library's arithmetic: the raw conv/pool stack (no input check) gives a >= 1x1 map at
    # the minimum and fails one pixel below it.
    model = seven_class[name]
    minimum = MIN_SIZES[name]
    with torch.no_grad():
        assert min(model.features(torch.randn(1, 3, minimum, minimum)).shape[-2:]) >= 1
        with pytest.raises(RuntimeError):
            model.features(torch.randn(1, 3, minimum - 1, minimum - 1))


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_input_must_be_an_rgb_batch(name: str, seven_class: dict[str, nn.Module]) -> None:
    model = seven_class[name]
    size = MIN_SIZES[name]
    with torch.no_grad():
        with pytest.raises(ValueError, match="RGB"):
            model(torch.randn(1, 1, size, size))
        with pytest.raises(ValueError, match="RGB"):
            model(torch.randn(3, size, size))
