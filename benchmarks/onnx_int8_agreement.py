"""Which layer costs ONNX Runtime's int8 model its agreement with fp32, and which quantiser option wins it back.

    python benchmarks/onnx_int8_agreement.py CHECKPOINT [--data photos] [--json]

For a trained checkpoint, quantises the model with ONNX Runtime (:func:`alexnet.runtime.quantize.quantize_onnx`,
calibrated on 256 training images as ``alexnet export --int8`` is) and measures top-1 agreement with fp32
on the held-out images the export checks (the data's val split), for:

- one layer at a time in int8 (the rest in fp32), and one layer at a time kept in fp32 (the rest in int8);
- the quantiser's options: 7-bit weights (``reduce_range``), symmetric activations, calibration methods,
  and combinations with fc8 kept in fp32;

the share of pairs of products whose sum leaves int16 in each layer (what a CPU without VNNI saturates),
with 8-bit and with 7-bit weights; and the speed of each recipe at batch 64 against the default recipe
(same process, alternating).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from alexnet.models.alexnet import named_layers
from alexnet.models.checkpoint import checkpoint_card, load_checkpoint, resolve_checkpoint_path
from alexnet.runtime.export import OnnxModel
from alexnet.runtime.machine import describe_machine, machine_info
from alexnet.runtime.quantize import heldout_set, load_calibration, quantize_onnx, top1_agreement


def _agreement(model, blob: bytes, images: torch.Tensor, reference: torch.Tensor) -> float:
    onnx = OnnxModel(blob)
    with torch.no_grad():
        logits = torch.cat([onnx(images[i : i + 64]) for i in range(0, len(images), 64)])
    return top1_agreement(logits, reference)


def _overflows(model, blob: bytes, images: torch.Tensor) -> dict[str, float]:
    """Per conv/fc layer: the fraction of pairs of uint8 x int8 products whose sum leaves the int16 range, as
    a CPU without VNNI adds them (AVX2's ``vpmaddubsw`` saturates each pair sum at +-32,767), computed by hand
    from the file's scales and zero points on the layer's real inputs (``images``)."""
    import numpy as np
    import onnx

    graph = onnx.load_from_string(blob).graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, a, o, name=name: inputs.__setitem__(name, a[0].detach()))
             for name, m in named_layers(model)]  # fmt: skip
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    nodes = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    out = {}
    for (name, layer), node in zip(named_layers(model), nodes, strict=True):
        act_dq, w_dq = made_by[node.input[0]], made_by[node.input[1]]
        if act_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
            continue  # a layer kept in fp32
        scale, zero = float(init[act_dq.input[1]]), int(init[act_dq.input[2]])
        w = init[w_dq.input[0]].astype(np.int32)
        x = inputs[name]
        if isinstance(layer, torch.nn.Conv2d):
            x = torch.nn.functional.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)
            x = x.transpose(1, 2).reshape(-1, x.shape[1])
            w = w.reshape(w.shape[0], -1)
        elif w.shape[0] != layer.out_features:
            w = w.T
        a = np.clip(np.round(x.numpy() / scale) + zero, 0, 255).astype(np.int32)[:2048]
        k = a.shape[1] // 2 * 2
        pairs = a[:, None, 0:k:2] * w[None, :, 0:k:2] + a[:, None, 1:k:2] * w[None, :, 1:k:2]
        out[name] = float((np.abs(pairs) > 32767).mean())
    return out


def _speed(blobs: dict[str, bytes], batch: torch.Tensor, rounds: int = 5) -> dict[str, float]:
    """Seconds per batch of each recipe, median of ``rounds`` alternating measurements."""
    models = {name: OnnxModel(blob) for name, blob in blobs.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        m(batch)
    for _ in range(rounds):
        for name, m in models.items():
            start = time.perf_counter()
            for _ in range(3):
                m(batch)
            times[name].append((time.perf_counter() - start) / 3)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None, help="calibration and held-out images (default: the checkpoint's data)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    path = resolve_checkpoint_path(args.checkpoint)
    model, meta = load_checkpoint(path, map_location="cpu")
    model = model.float().eval()
    card = checkpoint_card(meta, path)
    data = args.data or meta["data"]
    calibration = load_calibration(data, card)
    images, _, where = heldout_set(data, card, calibration)
    with torch.no_grad():
        reference = torch.cat([model(images[i : i + 64]) for i in range(0, len(images), 64)])
    layers = [name for name, _ in named_layers(model)]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{card.model} from {path}; {len(images)} held-out images of {where}; layers {', '.join(layers)}")
    result: dict = {"machine": machine_info("cpu"), "checkpoint": str(path), "heldout": where, "layers": {}}
    for layer in layers:
        others = tuple(x for x in layers if x != layer)
        only = _agreement(model, quantize_onnx(model, calibration, card, keep_fp32=others), images, reference)
        without = _agreement(model, quantize_onnx(model, calibration, card, keep_fp32=(layer,)), images, reference)
        result["layers"][layer] = {"only_this_int8": only, "all_but_this_int8": without}
        log(f"  {layer:6s} alone in int8: {only:.1%}   all but {layer} in int8: {without:.1%}")
    recipes = {
        "default (uint8 activations, 8-bit weights)": {},
        "reduce_range (7-bit weights)": {"reduce_range": True},
        "symmetric activations": {"symmetric_activations": True},
        "fc8 in fp32": {"keep_fp32": ("fc8",)},
        "fc8 in fp32, reduce_range": {"keep_fp32": ("fc8",), "reduce_range": True},
        "fc8 in fp32, symmetric activations": {"keep_fp32": ("fc8",), "symmetric_activations": True},
    }
    blobs, result["recipes"] = {}, {}
    for name, options in recipes.items():
        blobs[name] = quantize_onnx(model, calibration, card, **options)
        agree = _agreement(model, blobs[name], images, reference)
        result["recipes"][name] = {"agreement": agree}
        log(f"  {name:45s} agreement {agree:.1%}")
    for method in ("entropy", "percentile"):
        other = load_calibration(data, card, method=method)
        agree = _agreement(model, quantize_onnx(model, other, card), images, reference)
        result["recipes"][f"{method} ranges"] = {"agreement": agree}
        log(f"  {method + ' ranges':45s} agreement {agree:.1%}")
    for bits in (8, 7):
        blob = quantize_onnx(model, calibration, card, reduce_range=bits == 7)
        over = _overflows(model, blob, images[:4])
        result[f"overflowing_pairs_{bits}bit"] = over
        log(f"  {bits}-bit weights: pair sums beyond int16 (no VNNI) per layer: "
            + ", ".join(f"{k} {v:.2%}" for k, v in over.items()))  # fmt: skip
    seconds = _speed(blobs, images[:64])
    base = seconds["default (uint8 activations, 8-bit weights)"]
    for name, s in seconds.items():
        result["recipes"][name]["ms_per_batch_64"] = 1e3 * s
        result["recipes"][name]["speed_vs_default"] = base / s
        log(f"  {name:45s} {1e3 * s:7.1f} ms per batch of 64 ({base / s:.2f}x the default)")
    log(describe_machine(result["machine"]))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
