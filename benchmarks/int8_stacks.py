"""Compare the int8 stacks on one model, in one run: every candidate timed in each round, rounds repeated.

    python benchmarks/int8_stacks.py [--model alexnet] [--batch-sizes 64,1] [--rounds 5] [--threads N]

Candidates: torchvision's AlexNet in eager fp32 (the benchmark's baseline), our ``onednn-bf16``, the two
int8 modes (``compile-int8``: torchao PT2E + inductor -> oneDNN; ``onnxruntime-int8``: ONNX Runtime QDQ),
and ONNX Runtime's other format (QOperator) for the record. A round times each candidate once (median of
calls for at least 0.5 s); each candidate's ratio to ``onednn-bf16`` and to torchvision is taken within a
round, and the median and the spread over rounds are printed (and kept as JSON with --output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from alexnet.models.registry import create_model, get_spec
from alexnet.runtime.device import tune_cpu_allocator
from alexnet.runtime.export import ort_session
from alexnet.runtime.machine import describe_machine, machine_info, measure_peaks, time_call
from alexnet.runtime.modes import prepare_inference

Fn = Callable[[torch.Tensor], object]


def _torchvision(batch: int, net: torch.nn.Module, x: torch.Tensor) -> Fn:
    import torchvision

    tv = torchvision.models.alexnet(weights=None).eval()

    def run(images: torch.Tensor) -> object:
        with torch.inference_mode():
            return tv(images)

    return run


def _mode(name: str) -> Callable[[int, torch.nn.Module, torch.Tensor], Fn]:
    return lambda batch, net, x: prepare_inference(net, name, x, "cpu")


def _ort_qoperator(batch: int, net: torch.nn.Module, x: torch.Tensor) -> Fn:
    """ONNX Runtime's QOperator format (QLinearConv/QLinearMatMul nodes), the same recipe otherwise."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from alexnet.runtime.export import _onnx_proto

    class Reader:
        def __init__(self) -> None:
            self.batches = iter([{"images": x.numpy()}])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        plain, out = Path(tmp) / "m.onnx", Path(tmp) / "qop.onnx"
        onnx.save(_onnx_proto(net, x[:2]), plain)
        quantize_static(str(plain), str(out), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        session = ort_session(out)
    return lambda images: session.run(None, {"images": images.numpy()})


CANDIDATES = {
    "torchvision-eager-fp32": _torchvision,
    "onednn-bf16": _mode("onednn-bf16"),
    "compile-int8": _mode("compile-int8"),
    "onnxruntime-int8": _mode("onnxruntime-int8"),
    "onnxruntime-int8-qoperator": _ort_qoperator,
}


def compare(model: str, batch: int, rounds: int, names: list[str], log: Callable[[str], None]) -> dict[str, dict]:
    size = get_spec(model).card.input_size
    torch.manual_seed(0)
    net = create_model(model, 1000).eval()
    x = torch.randn(batch, 3, size, size)
    fns, setup = {}, {}
    for name in names:
        start = time.perf_counter()
        try:
            fn = CANDIDATES[name](batch, net, x)
            fn(x)
        except Exception as e:  # noqa: BLE001 - a candidate that cannot run here is reported and left out
            log(f"batch {batch}: {name} cannot run: {type(e).__name__}: {str(e)[:200]}")
            continue
        fns[name], setup[name] = fn, time.perf_counter() - start
    seconds: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times = time_call(lambda fn=fn: fn(x), torch.device("cpu"), warmup=1, max_seconds=2.0, min_seconds=0.5)
            seconds[name].append(statistics.median(times))
    out = {}
    for name, s in seconds.items():
        vs = {ref: [seconds[ref][r] / s[r] for r in range(rounds)] for ref in ("onednn-bf16", "torchvision-eager-fp32")}
        out[name] = {
            "images_per_s": batch / statistics.median(s),
            "vs_onednn_bf16": statistics.median(vs["onednn-bf16"]),
            "vs_onednn_bf16_spread": [min(vs["onednn-bf16"]), max(vs["onednn-bf16"])],
            "vs_torchvision_fp32": statistics.median(vs["torchvision-eager-fp32"]),
            "vs_torchvision_fp32_spread": [min(vs["torchvision-eager-fp32"]), max(vs["torchvision-eager-fp32"])],
            "setup_s": setup[name],
        }
        r = out[name]
        log(
            f"batch {batch:3d}  {name:28s} {r['images_per_s']:8.1f} img/s   "
            f"{r['vs_onednn_bf16']:.2f}x onednn-bf16 ({r['vs_onednn_bf16_spread'][0]:.2f}-"
            f"{r['vs_onednn_bf16_spread'][1]:.2f})   {r['vs_torchvision_fp32']:.2f}x torchvision fp32 "
            f"({r['vs_torchvision_fp32_spread'][0]:.2f}-{r['vs_torchvision_fp32_spread'][1]:.2f})   "
            f"setup {r['setup_s']:.0f} s"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="alexnet")
    p.add_argument("--batch-sizes", default="64,1")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--output", help="keep the result as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    names = [n for n in args.candidates.split(",") if n]
    unknown = set(names) - set(CANDIDATES)
    if unknown or not {"onednn-bf16", "torchvision-eager-fp32"} <= set(names):
        p.error(f"candidates from {', '.join(CANDIDATES)}, with onednn-bf16 and torchvision-eager-fp32")

    def log(msg: str) -> None:
        print(msg, flush=True)

    result = {"machine": machine_info("cpu"), "peak_gflops": measure_peaks(torch.device("cpu")), "rounds": args.rounds}
    log(describe_machine(result["machine"]))
    log("matmul peaks (GFLOP/s, int8 GOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["peak_gflops"].items()))
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        result[f"batch_{batch}"] = compare(args.model, batch, args.rounds, names, log)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
