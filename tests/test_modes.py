"""Each fast mode computes what fp32 computes, within the tolerance its table entry states."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from alexnet import create_model
from alexnet.errors import ModeUnavailable
from alexnet.runtime.autotune import Timing, TimingCache, machine_key, shape_key
from alexnet.runtime.device import default_precision, native_bf16, sgd_kwargs, tune_cpu_allocator
from alexnet.runtime.modes import (
    INFERENCE_MODES,
    INT8_MODES,
    TRAINING_MODES,
    agreement,
    inference_candidates,
    inference_mode_for,
    prepare_inference,
    prepare_training,
    resolve_inference_mode,
)
from alexnet.runtime.onednn import OneDNNAlexNet

SLOW_MODES = {"compile-fp32", "compile-bf16", "compile-int8"}  # seconds of inductor compilation each
needs_cuda = pytest.mark.cuda  # skipped where there is no CUDA device (conftest)


def _device_for(mode) -> str:
    """Where a mode is tested: the CPU when it runs there, else CUDA (skipped without one)."""
    if "cpu" in mode.devices:
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip(f"{mode.name} runs on {'/'.join(mode.devices)}; no CUDA device here")
    return "cuda"


def _small(num_classes: int = 10, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("alexnet_small", num_classes, **kw).eval()


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _marks(name: str, spec) -> list:
    """slow for the compiled modes; cuda for the modes that run only there (the GPU check selects them)."""
    return [pytest.mark.slow] * (name in SLOW_MODES) + [pytest.mark.cuda] * ("cpu" not in spec.devices)


@pytest.mark.parametrize("mode", [pytest.param(m, marks=_marks(m, s)) for m, s in INFERENCE_MODES.items()])
def test_inference_mode_matches_fp32_within_its_tolerance(mode, images):
    model = _small()
    with torch.no_grad():
        ref = model(images)
    try:
        predictor = prepare_inference(model, mode, images[:4], device=_device_for(INFERENCE_MODES[mode]))
    except ModeUnavailable as e:
        pytest.skip(str(e))
    out = predictor(images).cpu()  # a batch size other than the example's
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
    assert report["mode"] == predictor.mode and report["mode"] in inference_candidates("auto", "cpu")
    assert report["reason"].startswith(report["mode"]) and report["mode"] in report["timings"]
    # An impossible threshold: every reduced-precision mode fails the check and fp32 is used instead.
    _, report = resolve_inference_mode(model, "auto", device="cpu", heldout=images, threshold=1.01)
    assert INFERENCE_MODES[report["mode"]].precision == "fp32"
    timed = {m: t["ms_per_batch"] for m, t in report["timings"].items() if "ms_per_batch" in t}
    faster = [m for m, ms in timed.items() if ms < timed[report["mode"]]]
    assert faster == [] or "agreed with fp32" in report["fallback_reason"]  # passed over, with the reason
    for m in faster:
        assert INFERENCE_MODES[m].precision != "fp32"


def test_explicit_precisions_map_to_modes():
    assert INFERENCE_MODES[inference_mode_for("fp32", "cpu")].precision == "fp32"
    assert INFERENCE_MODES[inference_mode_for("bf16", "cpu")].precision == "bf16"
    assert INFERENCE_MODES[inference_mode_for("int8", "cpu")].precision == "int8"
    with pytest.raises(ModeUnavailable, match="GPU"):
        inference_mode_for("fp16", "cpu")
    with pytest.raises(ModeUnavailable, match="CPU"):
        inference_mode_for("int8", "cuda")
    with pytest.raises(ValueError):
        inference_mode_for("fp8", "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_chooses_among_the_native_precisions_and_int8_on_the_cpu(native, monkeypatch):
    monkeypatch.setattr("alexnet.runtime.device.native_bf16", lambda device="cpu": native)
    auto = inference_candidates("auto", "cpu")
    precisions = {INFERENCE_MODES[m].precision for m in auto}
    assert precisions == ({"bf16", "int8", "fp32"} if native else {"int8", "fp32"})  # emulated bf16 is left out
    assert set(auto) == {
        m for m, spec in INFERENCE_MODES.items() if "cpu" in spec.devices and spec.precision in precisions
    }
    assert auto[-1] == "eager-fp32"
    assert inference_candidates("int8", "cpu") == [*INT8_MODES, "eager-fp32"]
    assert inference_candidates("bf16", "cpu")[0] == "onednn-bf16"  # asked by name: offered even where emulated


def _hand_prepared_val(colour_data, card) -> torch.Tensor:
    from conftest import prepared

    return torch.stack([prepared(p, card) for p in sorted((colour_data / "val").glob("*/*.png"))])


def test_auto_uses_int8_when_it_agrees_and_falls_back_with_the_reason_when_it_does_not(
    colour_data, colour_classifier, tmp_path
):
    pytest.importorskip("onnxruntime")
    from alexnet.runtime.quantize import load_calibration

    model, card = colour_classifier
    heldout = _hand_prepared_val(colour_data, card)
    # The choice, not the instructions, is under test: a cache that has measured ONNX Runtime's int8 as the
    # fastest mode for this job, and nothing else measured (so the rest follow in the table's order).
    cache = TimingCache(tmp_path / "modes.json")
    cache.put(machine_key("cpu"), shape_key(model, "inference", heldout[:64].shape), "onnxruntime-int8",
              Timing(seconds=1e-4, setup_s=1.0, measured="by hand"))  # fmt: skip
    good = load_calibration(colour_data, card, count=24)
    kw = {"device": "cpu", "heldout": heldout, "example_input": heldout[:64], "cache": cache, "measure": False}
    predictor, report = resolve_inference_mode(model, "auto", calibration=good, workload=10_000, **kw)
    with torch.no_grad():
        by_hand = float((predictor(heldout).argmax(1) == model(heldout).argmax(1)).float().mean())
    assert report["mode"] == "onnxruntime-int8" and "fallback_reason" not in report
    assert report["agreement"] == pytest.approx(by_hand) and by_hand >= 0.99
    assert report["calibration"]["calibration_images"] == 24
    assert report["timings"]["onnxruntime-int8"] == {"ms_per_batch": 0.1, "setup_s": 1.0, "source": "cached"}
    # Ranges set on near-black images saturate on the real ones: int8 is passed over, with the reason.
    dark = type(good)(good.images * 0.001, "images scaled by 0.001")
    _, report = resolve_inference_mode(model, "auto", calibration=dark, workload=10_000, **kw)
    assert INFERENCE_MODES[report["mode"]].precision != "int8"
    untimed = [m for m in inference_candidates("auto", "cpu") if INFERENCE_MODES[m].precision != "int8"]
    assert report["mode"] == untimed[0]  # the first, in the table's order, of those not timed
    assert "onnxruntime-int8 agreed with fp32 on" in report["fallback_reason"] and "< 99%" in report["fallback_reason"]


def test_default_precision_is_bf16_only_where_it_is_native():
    assert default_precision("cpu") == ("bf16" if native_bf16("cpu") else "fp32")


def _one_step(
    mode: str, images: torch.Tensor, targets: torch.Tensor, device: str = "cpu"
) -> tuple[float, dict[str, torch.Tensor]]:
    model = _small(dropout=0.0)
    step = prepare_training(model, mode, lr=0.1, device=device)
    loss = float(step(images, targets))
    return loss, {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", [pytest.param(m, marks=_marks(m, s)) for m, s in TRAINING_MODES.items()])
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
        loss, got = _one_step(mode, images, targets, _device_for(TRAINING_MODES[mode]))
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
    import alexnet.runtime.device as device

    monkeypatch.setattr(device, "_allocator_tuned", False)
    monkeypatch.setenv("ALEXNET_TUNE_ALLOCATOR", "0")
    assert tune_cpu_allocator() is False


# ------------------------------------------------------------------------------------------ CUDA
@needs_cuda
@pytest.mark.parametrize("mode", [m for m, spec in INFERENCE_MODES.items() if "cuda" in spec.devices])
def test_every_cuda_inference_mode_matches_cpu_fp32(mode, images, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 means fp32 here (TF32 is on by default)
    model = _small()
    with torch.no_grad():
        ref = model(images)
    try:
        predictor = prepare_inference(model, mode, images[:4], device="cuda")
    except ModeUnavailable as e:
        pytest.skip(str(e))
    out = predictor(images)
    assert out.device.type == "cuda"
    # cuDNN sums in another order than the CPU: fp32 modes within 1e-4, the others their own tolerance.
    assert _relative_error(out.cpu(), ref) <= max(INFERENCE_MODES[mode].tolerance, 1e-4)
    assert next(model.parameters()).device.type == "cpu"  # the model itself stays where it was


@needs_cuda
@pytest.mark.parametrize("mode", [m for m, spec in TRAINING_MODES.items() if "cuda" in spec.devices])
def test_every_cuda_training_mode_moves_the_weights_like_cpu_fp32(mode, images, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    targets = torch.arange(len(images)) % 10
    start = {k: v.clone() for k, v in _small(dropout=0.0).state_dict().items()}
    ref_loss, ref = _one_step("eager-fp32", images, targets)
    try:
        loss, got = _one_step(mode, images, targets, "cuda")
    except ModeUnavailable as e:
        pytest.skip(str(e))
    tol = max(TRAINING_MODES[mode].tolerance, 1e-4)  # cuDNN's fp32 is not bitwise the CPU's
    assert abs(loss - ref_loss) <= tol * abs(ref_loss)
    for k in ref:
        cos = F.cosine_similarity((got[k] - start[k]).flatten(), (ref[k] - start[k]).flatten(), dim=0)
        assert 1 - float(cos) <= tol, k


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lrn_on_cuda_matches_the_cpu(dtype):
    from alexnet.models.alexnet import LocalResponseNorm

    x = (torch.randn(4, 12, 9, 9, generator=torch.Generator().manual_seed(0)) * 30).to(dtype)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    layer = LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)
    outs, grads = [], []
    for device in ("cpu", "cuda"):
        xd = x.to(device).contiguous(memory_format=torch.channels_last).requires_grad_()
        y = layer(xd)
        y.backward(upstream.to(device))
        assert y.dtype == dtype and y.device.type == device
        outs.append(y.detach().float().cpu())
        grads.append(xd.grad.float().cpu())
    tol = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    torch.testing.assert_close(outs[1], outs[0], rtol=tol, atol=tol * outs[0].abs().max().item())
    torch.testing.assert_close(grads[1], grads[0], rtol=tol, atol=tol * grads[0].abs().max().item())
