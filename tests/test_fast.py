"""Each fast mode computes what fp32 computes, within the tolerance its table entry states."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from alexnet import create_model
from alexnet.fast import (
    INFERENCE_MODES,
    TRAINING_MODES,
    ModeUnavailable,
    OneDNNAlexNet,
    agreement,
    default_precision,
    inference_mode_for,
    native_bf16,
    prepare_inference,
    prepare_training,
    resolve_inference_mode,
    sgd_kwargs,
    tune_cpu_allocator,
)

SLOW_MODES = {"compile-fp32", "compile-bf16"}  # a few seconds of inductor compilation each


def _small(num_classes: int = 10, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("alexnet_small", num_classes, **kw).eval()


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MODES else m for m in INFERENCE_MODES]
)
def test_inference_mode_matches_fp32_within_its_tolerance(mode, images):
    model = _small()
    with torch.no_grad():
        ref = model(images)
    try:
        predictor = prepare_inference(model, mode, images[:4])
    except ModeUnavailable as e:
        pytest.skip(str(e))
    out = predictor(images)  # a batch size other than the example's
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _relative_error(out, ref) <= INFERENCE_MODES[mode].tolerance


def test_prepare_inference_leaves_the_model_unchanged(images):
    model = _small()
    before = copy.deepcopy(model.state_dict())
    for mode in ("bf16", "onednn-bf16", "channels-last-fp32"):
        prepare_inference(model, mode, images[:2])
    after = model.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v)
    assert model.features[0].weight.is_contiguous()  # not switched to channels-last


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_onednn_runs_any_batch_size_on_the_paper_network(batch):
    # alexnet2012: LRN, groups=2 convolutions, a packing hint (batch 4) different from the batch.
    torch.manual_seed(0)
    model = create_model("alexnet2012", 10).eval()
    x = torch.randn(batch, 3, 227, 227)
    with torch.no_grad():
        ref = model(x)
        packed = OneDNNAlexNet(model, torch.float32, (4, 3, 227, 227))(x)
    assert _relative_error(packed, ref) <= INFERENCE_MODES["onednn-fp32"].tolerance


def test_onednn_rejects_what_it_cannot_pack():
    columns = create_model("alexnet2012_columns", 10)
    with pytest.raises(ModeUnavailable, match="AlexNet"):
        OneDNNAlexNet(columns)


def test_onednn_checks_the_input_like_the_model():
    with pytest.raises(ValueError, match="at least"):
        OneDNNAlexNet(_small(), torch.float32)(torch.randn(1, 3, 8, 8))


def test_unknown_mode_and_wrong_device_are_reported():
    with pytest.raises(ValueError, match="unknown inference mode"):
        prepare_inference(_small(), "int3")
    with pytest.raises(ModeUnavailable, match="cuda"):
        prepare_inference(_small(), "fp16", device="cpu")


def test_agreement_counts_top1_matches(images):
    model = _small()
    with torch.no_grad():
        top1 = model(images).argmax(1)
    assert agreement(model, "eager-fp32", images) == 1.0
    assert agreement(model, "onednn-fp32", images, reference=top1) == 1.0
    wrong = (top1 + 1) % 10
    assert agreement(model, "onednn-fp32", images, reference=wrong) == 0.0
    half = torch.where(torch.arange(len(top1)) % 2 == 0, top1, wrong)
    assert agreement(model, "eager-fp32", images, reference=half) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        agreement(model, "eager-fp32", images[:0])


def test_auto_keeps_a_precision_mode_only_above_the_agreement_threshold(images):
    model = _small()
    predictor, report = resolve_inference_mode(model, "auto", device="cpu", heldout=images, example_input=images[:2])
    expected = inference_mode_for("auto", "cpu")
    assert report["mode"] == expected == predictor.mode
    # An impossible threshold: every reduced-precision mode fails the check and fp32 is used instead.
    _, report = resolve_inference_mode(model, "auto", device="cpu", heldout=images, threshold=1.01)
    assert INFERENCE_MODES[report["mode"]].precision == "fp32"
    if expected != report["mode"]:
        assert "agreed with fp32" in report["fallback_reason"]


def test_explicit_precisions_map_to_modes():
    assert INFERENCE_MODES[inference_mode_for("fp32", "cpu")].precision == "fp32"
    assert INFERENCE_MODES[inference_mode_for("bf16", "cpu")].precision == "bf16"
    with pytest.raises(ModeUnavailable, match="GPU"):
        inference_mode_for("fp16", "cpu")
    with pytest.raises(ValueError):
        inference_mode_for("fp8", "cpu")


def test_default_precision_is_bf16_only_where_it_is_native():
    assert default_precision("cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert default_precision("cpu", training=True) in ("fp32", "bf16")


def _one_step(mode: str, images: torch.Tensor, targets: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model = _small(dropout=0.0)
    step = prepare_training(model, mode, lr=0.1)
    loss = float(step(images, targets))
    return loss, {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=pytest.mark.slow) if m == "compile-bf16" else m for m in TRAINING_MODES]
)
def test_training_step_matches_fp32_within_its_tolerance(mode, images):
    targets = torch.arange(len(images)) % 10
    start = {k: v.clone() for k, v in _small(dropout=0.0).state_dict().items()}
    ref_loss, ref = _one_step("eager-fp32", images, targets)
    # The reference is the plain PyTorch step, written out.
    model = _small(dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(model(images), targets).backward()
    optimizer.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ref[k], v)
    try:
        loss, got = _one_step(mode, images, targets)
    except ModeUnavailable as e:
        pytest.skip(str(e))
    tol = TRAINING_MODES[mode].tolerance
    assert abs(loss - ref_loss) <= tol * abs(ref_loss)
    for k in ref:
        # Every weight moves the way fp32 moves it: 1 - cos(update, fp32 update) within the tolerance.
        cos = F.cosine_similarity((got[k] - start[k]).flatten(), (ref[k] - start[k]).flatten(), dim=0)
        assert 1 - float(cos) <= tol, k


def test_fused_sgd_is_the_same_update():
    torch.manual_seed(0)
    a = torch.nn.Linear(20, 5)
    b = copy.deepcopy(a)
    x = torch.randn(8, 20)
    opts = [
        torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
        torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, **sgd_kwargs("cpu")),
    ]
    for _ in range(3):
        for m, opt in zip((a, b), opts, strict=True):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight)


def test_allocator_tuning_can_be_turned_off(monkeypatch):
    import alexnet.fast as fast

    monkeypatch.setattr(fast, "_allocator_tuned", False)
    monkeypatch.setenv("ALEXNET_TUNE_ALLOCATOR", "0")
    assert tune_cpu_allocator() is False
