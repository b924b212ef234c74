"""The machines this project has not got, made to happen on this one: each capability removed the way the
real runtime fails without it, and every command that chooses a mode still finishes, saying why in a line.

- AVX2 only: no native bf16, no VNNI, and oneDNN refusing to pack bf16 weights with the RuntimeError it
  raises there;
- AVX-512 without VNNI or bf16 (the Skylake class): int8 runs on 16-bit products, bf16 is emulated;
- no C++ compiler: inductor's own failure, found before compiling, or at the first call of a compiled model;
- no CUDA.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest
import torch

import alexnet.runtime.device as device
from alexnet.cli import main
from alexnet.errors import ModeUnavailable
from alexnet.runtime.device import CpuCapabilities, native_bf16
from alexnet.runtime.modes import INFERENCE_MODES, prepare_inference, resolve_inference_mode

AVX2 = CpuCapabilities(avx2=True, avx512=False, bf16=False, int8=False, amx=False)
SKYLAKE = CpuCapabilities(avx2=True, avx512=True, bf16=False, int8=False, amx=False)
# What oneDNN raises on a CPU without AVX-512 (or AVX-NE-CONVERT) when asked to pack bf16 weights.
REFUSAL = "{}: bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"


def _refusing(original, name: str):
    def reorder(weight, *args, **kwargs):
        if weight.dtype == torch.bfloat16:
            raise RuntimeError(REFUSAL.format(name))
        return original(weight, *args, **kwargs)

    return reorder


@contextlib.contextmanager
def _avx2(monkeypatch) -> Iterator[None]:
    import alexnet.runtime.onednn as onednn

    monkeypatch.setattr("alexnet.runtime.device.cpu_capabilities", lambda: AVX2)
    # oneDNN's packing as our engine calls it (patching torch.ops itself would upset torch.export's tables)
    monkeypatch.setattr(onednn, "_reorder_conv_weight",
                        _refusing(onednn._reorder_conv_weight, "mkldnn_reorder_conv2d_weight"))  # fmt: skip
    monkeypatch.setattr(onednn, "_reorder_linear_weight",
                        _refusing(onednn._reorder_linear_weight, "mkldnn_reorder_linear_weight"))  # fmt: skip
    yield


@contextlib.contextmanager
def _skylake(monkeypatch) -> Iterator[None]:
    monkeypatch.setattr("alexnet.runtime.device.cpu_capabilities", lambda: SKYLAKE)
    yield


@contextlib.contextmanager
def _no_compiler(monkeypatch) -> Iterator[None]:
    import torch._inductor.config as inductor

    with inductor.patch({"cpp.cxx": (None, "/nonexistent/c++")}):
        yield


@contextlib.contextmanager
def _no_compiler_until_the_first_call(monkeypatch) -> Iterator[None]:
    """The compiler is found missing only when inductor builds the first kernel: our early check is gone."""
    import torch._inductor.config as inductor

    monkeypatch.setattr("alexnet.runtime.modes._require_compiler", lambda device: None)
    # no kernel built earlier in this process is reused
    with inductor.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}):
        yield


MACHINES = {"avx2": _avx2, "skylake": _skylake, "no-compiler": _no_compiler}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return tmp_path_factory.mktemp("mode-caches")


@pytest.fixture(params=list(MACHINES))
def machine(request, monkeypatch, caches):
    """One missing capability at a time, with a timing cache of its own (shared by this file's tests)."""
    monkeypatch.setenv("ALEXNET_MODE_CACHE", str(caches / f"{request.param}.json"))
    with MACHINES[request.param](monkeypatch):
        yield request.param


@pytest.fixture(scope="module")
def checkpoint(colour_data, colour_classifier, tmp_path_factory):
    from alexnet.models.checkpoint import save_checkpoint

    model, card = colour_classifier
    path = tmp_path_factory.mktemp("capabilities") / "best.safetensors"
    save_checkpoint(path, model, card.to_json() | {"data": str(colour_data)})
    return path


def _ok(argv: list[str], capsys) -> tuple[str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    return out, err


def test_the_simulated_machines_are_what_they_claim(monkeypatch):
    with _avx2(monkeypatch):
        assert not native_bf16("cpu") and device.cpu_capabilities().machine_class == "AVX2"
        import alexnet.runtime.onednn as onednn

        with pytest.raises(RuntimeError, match="bf16 path needs the cpu support"):
            onednn._reorder_conv_weight(torch.zeros(8, 3, 3, 3, dtype=torch.bfloat16), [1, 1], [1, 1], [1, 1], 1,
                                        [1, 3, 8, 8])  # fmt: skip
    with _skylake(monkeypatch):
        assert device.cpu_capabilities().machine_class == "AVX-512"


@pytest.fixture
def avx2(monkeypatch):
    with _avx2(monkeypatch):
        yield


def test_a_mode_the_backend_refuses_while_packing_is_unavailable_not_a_crash(avx2):
    from alexnet import create_model

    model = create_model("alexnet_small", 3).eval()
    with pytest.raises(ModeUnavailable, match="onednn-bf16 cannot run on this machine: RuntimeError: mkldnn_reorder"):
        prepare_inference(model, "onednn-bf16", torch.randn(2, 3, 32, 32))
    # Asked for by name, bf16 runs in another of its engines, and the report says why and that it is slow here.
    _, report = resolve_inference_mode(model, "bf16", device="cpu", example_input=torch.randn(2, 3, 32, 32))
    assert INFERENCE_MODES[report["mode"]].precision == "bf16" and report["mode"] != "onednn-bf16"
    assert "bf16 path needs the cpu support" in report["fallback_reason"] and "emulated" in report["note"]
    # auto does not offer emulated bf16 at all
    _, report = resolve_inference_mode(model, "auto", device="cpu", example_input=torch.randn(2, 3, 32, 32))
    assert not any(INFERENCE_MODES[m].precision == "bf16" for m in report["timings"])


def test_a_compiler_that_fails_at_the_first_call_is_unavailable(monkeypatch):
    from alexnet import create_model

    model = create_model("alexnet_small", 3).eval()
    with (
        _no_compiler_until_the_first_call(monkeypatch),
        pytest.raises(ModeUnavailable, match="compile-fp32 cannot run on this machine: InductorError"),
    ):
        prepare_inference(model, "compile-fp32", torch.randn(2, 3, 32, 32))


def test_evaluate_and_predict_finish(machine, checkpoint, colour_data, capsys, tmp_path):
    out, err = _ok(["evaluate", str(checkpoint), str(colour_data), "--json", "--output", str(tmp_path / "e")], capsys)
    result = json.loads(out)
    assert result["images"] == 48 and "mode " in err
    if machine in ("avx2", "skylake"):
        assert INFERENCE_MODES[result["mode"]].precision != "bf16"  # emulated: not a candidate of auto
    # bf16 asked for by name runs (emulated, where it is), with a note; never the refused packing
    out, err = _ok(["evaluate", str(checkpoint), str(colour_data), "--json", "--precision", "bf16",
                    "--output", str(tmp_path / "e")], capsys)  # fmt: skip
    assert INFERENCE_MODES[json.loads(out)["mode"]].precision == "bf16"
    if machine == "avx2":
        assert "passed over: onednn-bf16 cannot run on this machine: RuntimeError: mkldnn_reorder" in err
    if machine in ("avx2", "skylake"):
        assert "note: this CPU has no native bf16" in err
    out, err = _ok(["predict", str(checkpoint), str(colour_data / "val" / "red"), "--json"], capsys)
    report = json.loads(out)
    assert {p["top"][0]["class"] for p in report["predictions"]} == {"red"} and report["inference"]["mode"]


@pytest.mark.parametrize("machine", ["avx2"], indirect=True)  # the AVX-512 class lacks VNNI the same way
def test_int8_finishes_with_a_note_where_the_cpu_lacks_int8_dot_products(machine, checkpoint, colour_data, capsys,
                                                                        tmp_path):  # fmt: skip
    pytest.importorskip("onnxruntime")
    out, err = _ok(["evaluate", str(checkpoint), str(colour_data), "--json", "--precision", "int8",
                    "--output", str(tmp_path / "e")], capsys)  # fmt: skip
    result = json.loads(out)
    assert INFERENCE_MODES[result["mode"]].precision == "int8", err
    assert "note: this CPU has no int8 dot products" in err
    if result["mode"] == "onnxruntime-int8":  # 16-bit pair sums here: weights that cannot overflow them
        assert result["inference"]["calibration"]["weight_bits"] == 7
    out, err = _ok(["export", str(checkpoint), "--int8", "--calibration-images", "24",
                    "--output", str(tmp_path / "m.onnx")], capsys)  # fmt: skip
    assert (tmp_path / "m.onnx").exists() and "7-bit" in out + err


def test_compiled_int8_without_a_compiler_falls_back_to_onnx_runtime(checkpoint, colour_data, capsys, monkeypatch,
                                                                      tmp_path):  # fmt: skip
    """A cache in which the compiled int8 mode was measured fastest (on this machine, before its compiler went):
    it is tried first, cannot run, and ONNX Runtime's int8 runs instead, with the reason."""
    pytest.importorskip("onnxruntime")
    from alexnet.runtime.autotune import Timing, TimingCache, machine_key, shape_key
    from alexnet.runtime.inference import load_classifier

    cache = tmp_path / "modes.json"
    monkeypatch.setenv("ALEXNET_MODE_CACHE", str(cache))
    shape = shape_key(load_classifier(checkpoint, device="cpu").module, "inference", (48, 3, 32, 32))
    TimingCache(cache).put(machine_key("cpu"), shape, "compile-int8", Timing(1e-4, 1.0, "by hand"))
    with _no_compiler(monkeypatch):
        out, err = _ok(["evaluate", str(checkpoint), str(colour_data), "--json", "--precision", "int8",
                        "--output", str(tmp_path / "e")], capsys)  # fmt: skip
    assert json.loads(out)["mode"] == "onnxruntime-int8"
    assert "passed over: compile-int8" in err and "C++ compiler" in err


@pytest.mark.parametrize("machine", ["avx2", "no-compiler"], indirect=True)
def test_the_benchmark_lists_what_cannot_run_and_finishes(machine, capsys, monkeypatch):
    import alexnet.bench.benchmark

    measure = alexnet.bench.benchmark.measure_peaks
    monkeypatch.setattr(alexnet.bench.benchmark, "measure_peaks", lambda device, size: measure(device, 64))
    compiled = machine == "no-compiler"  # elsewhere compiling works, and takes long: not timed here
    modes = "eager-fp32,onednn-bf16" + (",compile-fp32" if compiled else "")
    train_modes = "channels-last-fp32" + (",compile-fp32" if compiled else "")
    argv = ["benchmark", "--model", "alexnet_small", "--batch-sizes", "2", "--modes", modes, "--train",
            "--train-batch-size", "2", "--train-modes", train_modes, "--rounds", "1", "--repeats", "1",
            "--no-allocator-tuning", "--json"]  # fmt: skip
    out, err = _ok(argv, capsys)
    result = json.loads(out)
    skipped = {(s["phase"], s["mode"]): s["reason"] for s in result["skipped"]}
    timed = {(r["phase"], r["mode"]) for r in result["rows"]}
    if machine == "avx2":
        assert "bf16 path needs the cpu support" in skipped["inference", "onednn-bf16"]
    if machine == "no-compiler":
        assert "C++ compiler" in skipped["inference", "compile-fp32"] and ("train", "compile-fp32") in skipped
    assert ("inference", "eager-fp32") in timed and ("train", "channels-last-fp32") in timed
    assert result["machine_class"] == device.cpu_capabilities().machine_class and result["auto"]
    assert f"({device.cpu_capabilities().machine_class})" in err


@pytest.mark.parametrize("machine", ["avx2", "no-compiler"], indirect=True)
def test_visualize_neighbors_and_serve_start(machine, checkpoint, colour_data, capsys, tmp_path):
    out, err = _ok(["visualize", str(checkpoint), "neighbors", str(colour_data), "--output", str(tmp_path)], capsys)
    assert (tmp_path / "neighbors.png").exists() and "mode " in err
    from fastapi.testclient import TestClient

    from alexnet.runtime.inference import load_classifier
    from alexnet.serve import create_app
    from alexnet.serve.app import make_fast

    clf = make_fast(load_classifier(checkpoint, device="cpu"), "bf16", None)
    with TestClient(create_app(clf)) as client:
        info = client.get("/model").json()
    assert INFERENCE_MODES[info["inference"]["mode"]].precision == "bf16" and info["inference"]["reason"]
    if machine == "avx2":
        assert "bf16 path needs the cpu support" in info["inference"]["fallback_reason"]


@pytest.mark.parametrize("machine", ["avx2"], indirect=True)  # compiling does not pay on this job: not tried
def test_training_with_auto_finishes(machine, colour_data, capsys, tmp_path):
    argv = ["train", str(colour_data), "--recipe", "small", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--device", "cpu", "--output", str(tmp_path / "run")]  # fmt: skip
    out, err = _ok(argv, capsys)
    assert "training mode " in err
    assert "autocast-bf16" not in err.split("training mode ")[1].split("\n")[0]  # emulated: never chosen


def test_training_falls_back_to_eager_when_the_compiler_fails_at_the_first_step(colour_data, capsys, monkeypatch,
                                                                                  tmp_path):  # fmt: skip
    """A timing cache that says compiling pays off here: the run compiles, the compiler is missing, and the
    run trains eagerly, saying so."""
    from alexnet.models.registry import create_model
    from alexnet.runtime.autotune import Timing, TimingCache, machine_key, shape_key

    cache = tmp_path / "modes.json"
    monkeypatch.setenv("ALEXNET_MODE_CACHE", str(cache))
    shape = shape_key(create_model("alexnet_small", 3), "train", (8, 3, 32, 32))
    for mode, seconds in (("compile-fp32", 0.001), ("channels-last-fp32", 1.0), ("autocast-bf16", 1.0)):
        TimingCache(cache).put(machine_key("cpu"), shape, mode, Timing(seconds, 0.0, "by hand"))
    argv = ["train", str(colour_data), "--recipe", "small", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--device", "cpu", "--precision", "fp32", "--output", str(tmp_path / "run")]  # fmt: skip
    with _no_compiler_until_the_first_call(monkeypatch):
        out, err = _ok(argv, capsys)
    assert "training mode fp32 as asked: compile-fp32" in err and "torch.compile failed, training eagerly" in err


def test_without_cuda_auto_runs_on_the_cpu_and_cuda_is_one_line(checkpoint, colour_data, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _ok(["evaluate", str(checkpoint), str(colour_data), "--output", str(tmp_path / "e")], capsys)
    for argv in (["evaluate", str(checkpoint), str(colour_data), "--device", "cuda"],
                 ["benchmark", "--device", "cuda"],
                 ["train", str(colour_data), "--device", "cuda", "--output", str(tmp_path / "r")]):  # fmt: skip
        assert main(argv) == 2  # a flag this machine refuses
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "CUDA is not available" in err
    assert not (tmp_path / "r").exists()
