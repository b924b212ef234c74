"""The ``alexnet`` command. Thin: each sub-command parses flags and calls a library function."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import FlagError, InputTooSmall, ModeUnavailable, TrainingDiverged, UserError
from .models.registry import list_models

Command = Callable[[argparse.Namespace], int | None]


def _model_arg(p: argparse.ArgumentParser, default: str | None = "alexnet2012") -> None:
    p.add_argument(
        "--model", default=default, metavar="NAME", help=f"one of: {', '.join(list_models())} (default: %(default)s)"
    )


def _at_least(minimum: int | None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum] (either bound may be None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def _input_size_arg(p: argparse.ArgumentParser, what: str) -> None:
    from .models.alexnet import MAX_INPUT_SIZE

    p.add_argument(
        "--input-size", type=_at_least(None, MAX_INPUT_SIZE), default=None, metavar="N",
        help=f"square input size of {what}, from the model's minimum to {MAX_INPUT_SIZE} (default: the model's)",
    )  # fmt: skip


# ----------------------------------------------------------------------------------------- summary
def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="print a model's layer table (shapes, parameters, mult-adds)")
    _model_arg(p)
    p.add_argument(
        "--num-classes",
        type=_at_least(1, 1_000_000),
        default=1000,
        help="outputs of the last layer (default: %(default)s)",
    )
    _input_size_arg(p, "the table")
    p.add_argument("--json", action="store_true", help="print the same data as JSON")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args: argparse.Namespace) -> None:
    from .models.summary import model_summary

    table, data = model_summary(args.model, args.num_classes, args.input_size)
    print(json.dumps(data, indent=2) if args.json else table)


# ----------------------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    import dataclasses
    import typing

    from .training.recipes import RECIPES, TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model on an image folder (or --dataset digits) into a run folder",
        description="Train on DATA/train/<class>/* (validating on DATA/val/<class>/*), or on DATA/<class>/* "
        "with --val-split. Every recipe field can be set by a flag or a YAML/TOML --config file; "
        "flags win over the file, the file over the recipe.",
    )
    p.add_argument(
        "data", nargs="?", metavar="DATA",
        help="image folder, or a prepared dataset (alexnet prepare) (optional with --dataset or --resume)",
    )  # fmt: skip
    from .data.datasets import DATASETS

    p.add_argument("--dataset", choices=list(DATASETS), help="a bundled dataset instead of DATA")
    p.add_argument("--recipe", default=None, choices=list(RECIPES), help="preset (default: paper2012)")
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file of recipe fields")
    p.add_argument("--output", "-o", metavar="RUN_DIR", help="run folder (default: runs/<model>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--quiet", "-q", action="store_true", help="log lines only, no progress bars")
    hints = typing.get_type_hints(TrainConfig)
    group = p.add_argument_group("recipe fields (default: the recipe's value)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "recipe":
            continue
        flag, hint, text = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata.get("help", "")
        if f.name == "model":
            group.add_argument(flag, choices=list_models(), default=None, metavar="NAME", help=f"{text}: %(choices)s")
        elif hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(hint) is typing.Literal:
            group.add_argument(flag, choices=[c for c in typing.get_args(hint) if c], default=None, help=text)
        else:
            group.add_argument(flag, type=hint, default=None, metavar=hint.__name__.upper(), help=text)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .training.distributed import main_process
    from .training.recipes import TrainConfig
    from .training.train import fit, resolve_run

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name != "recipe" and getattr(args, f.name) is not None
    }
    source, cfg, run_dir = resolve_run(
        args.data, dataset=args.dataset, recipe=args.recipe, config=args.config, overrides=overrides,
        resume=args.resume, output=args.output,
    )  # fmt: skip
    result = fit(source, run_dir, cfg, resume=bool(args.resume), quiet=args.quiet)
    if result["history"] and main_process():
        best = result["best_top1"]
        print(
            f"run folder: {result['run_dir']} (best top-1 {best:.2%}; checkpoints in {result['run_dir']}/checkpoints)"
        )
    return 0


# ----------------------------------------------------------------------------------------- evaluate
def _precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16", "int8"],
        default="auto",
        help="auto: the mode measured fastest for this job on this machine (timings cached per machine) among "
        "those whose top-1 agrees with fp32 on >= 99%% of held-out images; bf16 only where it is native; "
        "int8: quantise the checkpoint now (default: %(default)s)",
    )
    p.add_argument(
        "--calibration", metavar="DATA",
        help="int8: images to calibrate on, a few hundred from DATA/train or DATA (default: the checkpoint's "
        "training data if it is still there, else the first images classified)",
    )  # fmt: skip
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N or mps (default: %(default)s)"
    )


def _calibration(args: argparse.Namespace, card: object, **kw: object) -> object:
    """The ``--calibration`` images, loaded for the model's card (None without the flag)."""
    if not getattr(args, "calibration", None):
        return None
    from .runtime.quantize import load_calibration

    return load_calibration(args.calibration, card, **kw)  # type: ignore[arg-type]


def _print_mode(command: str, mode: dict) -> None:
    """How the inference mode was chosen, on stderr."""
    from .runtime.inference import mode_lines

    for line in mode_lines(mode):
        print(f"alexnet {command}: {line}", file=sys.stderr)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 of a checkpoint on a folder (centre crop or the paper's 10-crop)")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, run folder, or exported .onnx file")
    p.add_argument(
        "data", metavar="DATA",
        help="image folder (its test/ or val/ part if present), prepared dataset (its test or val split), or 'digits'",
    )  # fmt: skip
    p.add_argument("--ten-crop", action="store_true", help="also the 10-crop test: corners, centre and mirrors")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    p.add_argument("--output", metavar="DIR", help="where the CSVs go (default: RUN_DIR/eval/<data folder>)")
    p.add_argument("--batch-size", type=_at_least(1), default=64, help="images per forward pass (default: %(default)s)")
    p.add_argument(
        "--workers", type=_at_least(0), default=2, help="image-decoding worker processes (default: %(default)s)"
    )
    p.add_argument("--strict", action="store_true", help="unreadable images are errors, not skipped")
    _precision_arg(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .runtime.inference import (
        default_eval_dir,
        describe_evaluation,
        evaluate_folder,
        load_classifier,
        write_eval_csv,
    )

    clf = load_classifier(args.checkpoint, device=args.device)
    result = evaluate_folder(
        clf, args.data, ten_crop=args.ten_crop, precision=args.precision, batch_size=args.batch_size,
        workers=args.workers, strict=args.strict, calibration=_calibration(args, clf.card),
    )  # fmt: skip
    _print_mode("evaluate", result["inference"])
    print(describe_evaluation(clf, result, ten_crop=args.ten_crop, as_json=args.json), flush=True)
    # The numbers are out before anything is written: a read-only run folder loses nothing but the CSVs.
    out = Path(args.output) if args.output else default_eval_dir(clf.source, result["folder"])
    try:
        files = write_eval_csv(result, list(clf.card.classes), out, clf.card.words)
    except UserError as e:
        print(f"alexnet evaluate: error: {e}; the results above were not saved (choose a folder with --output)",
              file=sys.stderr)  # fmt: skip
        return 1
    if not args.json:
        print(f"  per-class accuracy: {files['per_class']}\n  confusion matrix:   {files['confusion']}")
    return 0


# ----------------------------------------------------------------------------------------- predict
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of images with a checkpoint, an .onnx file or ImageNet weights")
    p.add_argument("source", nargs="?", metavar="CHECKPOINT", help="checkpoint, run folder or exported .onnx file")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--model", help="with --weights: a model name (e.g. alexnet) instead of CHECKPOINT")
    p.add_argument("--weights", help="torchvision-format ImageNet weights file (or 'torchvision' to download)")
    p.add_argument("--top-k", type=_at_least(1), default=5, help="classes shown per image (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    _precision_arg(p)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .runtime.inference import image_paths, load_classifier, predict_files, prediction_lines

    images = list(args.images)
    source = args.source
    if args.model or args.weights:  # no CHECKPOINT: argparse gave the first image to `source`
        images = ([source] if source is not None else []) + images
        source = None
    clf = load_classifier(source, model=args.model, weights=args.weights, device=args.device)
    results = predict_files(
        clf, image_paths(images), top_k=args.top_k, precision=args.precision, calibration=_calibration(args, clf.card)
    )
    _print_mode("predict", clf.mode)
    if args.json:  # the predictions, and how the mode that made them was chosen
        print(json.dumps({"inference": clf.mode, "predictions": results}, indent=2))
    else:
        for line in prediction_lines(results):
            print(line)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"alexnet predict: error: {r['file']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------- benchmark
def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        values = [kind(v) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return values

    return parse


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    from .runtime.modes import INFERENCE_MODES, TRAINING_MODES

    p = sub.add_parser("benchmark", help="images/s of every fast mode against torchvision's AlexNet, same run")
    _model_arg(p, default="alexnet")
    p.add_argument(
        "--batch-sizes",
        type=_csv(_at_least(1)),
        default=[1, 64],
        metavar="N,N",
        help="inference batch sizes (default: 1,64)",
    )
    p.add_argument("--train", action="store_true", help="also time a training step (forward, backward, SGD)")
    p.add_argument(
        "--train-batch-size", type=_at_least(1), default=64, help="training batch size (default: %(default)s)"
    )
    p.add_argument(
        "--modes", type=_csv(str), default=None, metavar="M,M", help=f"inference modes: {', '.join(INFERENCE_MODES)}"
    )
    p.add_argument(
        "--train-modes", type=_csv(str), default=None, metavar="M,M", help=f"one of: {', '.join(TRAINING_MODES)}"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    p.add_argument(
        "--full", action="store_true",
        help="every mode in rounds and no time budget (default: the fastest mode of each precision, within --budget)",
    )  # fmt: skip
    p.add_argument(
        "--budget", type=float, default=170.0, metavar="SECONDS",
        help="without --full: modes whose set-up would not fit are listed as not measured (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=_at_least(1), default=3,
        help="measurements of each mode, alternating with the baseline's (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--repeats", type=_at_least(1), default=10,
        help="timed calls per measurement; slow ones stop after about 1 s (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--no-allocator-tuning", action="store_true", help="leave glibc's malloc as it is")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--update-readme", metavar="README", help="rewrite the block between the bench markers")
    p.set_defaults(func=_cmd_benchmark)


def _cmd_benchmark(args: argparse.Namespace) -> None:
    from rich.console import Console

    from .bench.benchmark import run_benchmark
    from .bench.report import format_table, update_readme
    from .runtime.device import resolve_device

    if not args.budget > 0:
        raise UserError(f"--budget must be a positive number of seconds, not {args.budget}")
    device = resolve_device(args.device)  # a device this machine lacks is one line, before any work
    err = Console(stderr=True, soft_wrap=True)
    result = run_benchmark(
        args.model,
        args.batch_sizes,
        train=args.train,
        train_batch_size=args.train_batch_size,
        modes=args.modes,
        train_modes=args.train_modes,
        device=device,
        full=args.full,
        budget_s=args.budget,
        rounds=args.rounds,
        repeats=args.repeats,
        tune_allocator=not args.no_allocator_tuning,
        log=lambda msg: err.print(msg, style="dim", highlight=False),
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 132).print(format_table(result))
    if args.update_readme:
        update_readme(args.update_readme, result)
        err.print(f"updated {args.update_readme}")


# ----------------------------------------------------------------------------------------- export
def _add_export(sub: argparse._SubParsersAction) -> None:
    from .runtime.export import FORMATS

    p = sub.add_parser("export", help="export a checkpoint to ONNX / TorchScript / torch.export, verified")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a run folder")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default: %(default)s)")
    p.add_argument("--output", required=True, metavar="PATH", help="the file to write (checked before exporting)")
    _input_size_arg(p, "the traced example; the batch stays dynamic")
    from .runtime.quantize import CALIBRATION_IMAGES, CALIBRATION_METHODS

    q = p.add_argument_group("int8 (ONNX only): post-training static quantisation, checked on held-out images")
    q.add_argument("--int8", action="store_true", help="quantise: int8 weights (per channel) and activations")
    q.add_argument(
        "--calibration", metavar="DATA",
        help="images to calibrate on: DATA/train or DATA, or a bundled dataset; the check uses DATA/val, else "
        "DATA/test, else the rest of DATA (default: the checkpoint's training data)",
    )  # fmt: skip
    q.add_argument(
        "--calibration-images", type=_at_least(1, 100_000), default=CALIBRATION_IMAGES, metavar="N",
        help="how many calibration images, spread over the classes (default: %(default)s)",
    )  # fmt: skip
    q.add_argument(
        "--calibration-method", choices=CALIBRATION_METHODS, default="minmax",
        help="activation ranges: observed min/max, KL-optimal (entropy) or a percentile (default: %(default)s)",
    )  # fmt: skip
    q.add_argument("--keep-fp32", type=_csv(str), default=[], metavar="LAYER,LAYER",
                   help="layers left in fp32, e.g. conv1")  # fmt: skip
    q.add_argument(
        "--weight-bits", type=int, choices=(7, 8), default=7,
        help="7: weights within +-64, exact on every CPU (ONNX Runtime sums pairs of products in 16 bits where "
        "there is no VNNI); 8: the full range, for files that run only on CPUs with VNNI or AMX (default: %(default)s)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .files import check_writable
    from .models.checkpoint import checkpoint_card, load_checkpoint, resolve_checkpoint_path
    from .runtime.export import ExportVerificationError, describe_export, export_model

    check_writable(args.output)  # before the checkpoint is read: a wrong --output costs nothing
    int8_flags = args.calibration or args.keep_fp32 or args.weight_bits != 7
    if (args.int8 or int8_flags) and args.format != "onnx":
        raise FlagError(f"--int8 exports ONNX models (ONNX Runtime quantises them), not --format {args.format}")
    if int8_flags and not args.int8:
        raise FlagError("--calibration, --keep-fp32 and --weight-bits go with --int8")
    path = resolve_checkpoint_path(args.checkpoint)
    model, meta = load_checkpoint(path, map_location="cpu")
    card = checkpoint_card(meta, path)
    try:
        if args.int8:
            from .runtime.quantize import describe_int8_export, export_checkpoint_int8

            report = export_checkpoint_int8(
                model, card, args.output, calibration=args.calibration, train_data=meta.get("data"),
                images=args.calibration_images, method=args.calibration_method, keep_fp32=tuple(args.keep_fp32),
                weight_bits=args.weight_bits, input_size=args.input_size,
            )  # fmt: skip
            print(describe_int8_export(report))
        else:
            print(describe_export(export_model(model, card, args.format, args.output, args.input_size)))
    except ExportVerificationError as e:
        print(f"alexnet export: verification failed: {e}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------- visualize
def _add_visualize(sub: argparse._SubParsersAction) -> None:
    from .insight.features import METRICS
    from .insight.visualize import WHATS

    p = sub.add_parser(
        "visualize",
        help="the paper's pictures as PNGs: filters, predictions, neighbors, curves, confusion, activations",
        usage="%(prog)s [CHECKPOINT] WHAT [DATA] --output DIR [options]",
        description="alexnet visualize CHECKPOINT WHAT [DATA] --output DIR.  WHAT: filters (conv1 kernels, "
        "figure 3); predictions DATA (top-5 bars); neighbors DATA (nearest training images in fc7 space, "
        "figure 4); curves [RUN_DIR] (loss, top-1/top-5, lr); confusion DATA; activations IMAGE (conv "
        "feature maps). CHECKPOINT: a checkpoint file or run folder, or leave it out and give --model NAME "
        "--weights PATH (torchvision-format weights).",
    )
    p.add_argument("parts", nargs="+", metavar="[CHECKPOINT] WHAT [DATA]", help=f"WHAT: {', '.join(WHATS)}")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="folder the PNG goes into (WHAT.png)")
    p.add_argument("--model", help="with --weights: a model name (e.g. alexnet) instead of CHECKPOINT")
    p.add_argument("--weights", help="torchvision-format weights file (or 'torchvision' to download)")
    p.add_argument(
        "--count",
        type=_at_least(1, 64),
        default=None,
        metavar="N",
        help="images shown: predictions (default 8), neighbors' queries (default 5)",
    )
    p.add_argument(
        "--neighbors",
        "-k",
        type=_at_least(1, 20),
        default=6,
        metavar="K",
        help="neighbors: training images per query (default: %(default)s)",
    )
    p.add_argument(
        "--metric",
        choices=METRICS,
        default="euclidean",
        help="neighbors: distance of fc7 vectors (default: %(default)s, as the paper)",
    )
    p.add_argument(
        "--limit",
        type=_at_least(2, 60),
        default=25,
        metavar="N",
        help="confusion: classes shown at most (the most confused ones) (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="which images are picked (default: %(default)s)")
    p.add_argument("--batch-size", type=_at_least(1), default=64, help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=_at_least(0), default=2, help="image-decoding processes (default: %(default)s)")
    _precision_arg(p)
    p.set_defaults(func=_cmd_visualize)


def _cmd_visualize(args: argparse.Namespace) -> int:
    from .files import check_writable
    from .insight import visualize as viz
    from .runtime.inference import load_classifier

    source, what, target = viz.parse_request(args.parts)
    out = Path(args.output) / f"{what}.png"
    check_writable(out)  # before any model is loaded or image decoded
    if what == "curves":
        run = target or source
        if run is None:
            raise FlagError("visualize curves needs a run folder: alexnet visualize RUN_DIR curves --output DIR")
        print(viz.curves_figure(run, out).line())
        return 0
    if source is not None and (args.model or args.weights):
        raise FlagError("give CHECKPOINT or --model/--weights, not both")
    clf = load_classifier(source, model=args.model, weights=args.weights, device=args.device)
    fig = viz.make_figure(
        what, clf, target, out, count=args.count, k=args.neighbors, metric=args.metric, limit=args.limit,
        seed=args.seed, batch_size=args.batch_size, workers=args.workers, precision=args.precision,
    )  # fmt: skip
    if clf.mode.get("reason"):  # the figures that classify: how their mode was chosen
        _print_mode("visualize", clf.mode)
    if fig.details.get("note"):
        print(f"alexnet visualize: note: {fig.details['note']}", file=sys.stderr)
    print(fig.line())
    return 0


# ----------------------------------------------------------------------------------------- serve
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page and JSON API (POST /predict) classifying uploaded images",
        description="Serve CHECKPOINT (or --model NAME --weights PATH): GET / a page to drop images on, "
        "POST /predict (multipart, images in fields named 'file'), GET /health, GET /model. Binds to "
        "localhost unless --host says otherwise. --load-test measures requests/s and latency on loopback "
        "instead of serving.",
    )
    p.add_argument("source", nargs="?", metavar="CHECKPOINT", help="checkpoint file, run folder or .onnx file")
    p.add_argument("--model", help="with --weights: a model name (e.g. alexnet) instead of CHECKPOINT")
    p.add_argument("--weights", help="torchvision-format weights file (or 'torchvision' to download)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=_at_least(0, 65535), default=8000, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, metavar="MB", help="largest file accepted (default: %(default)s)"
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=40.0,
        metavar="MPIX",
        help="largest image accepted, read from its header before decoding (default: %(default)s)",
    )
    p.add_argument(
        "--max-files", type=_at_least(1, 256), default=16, metavar="N", help="images per request (default: %(default)s)"
    )
    p.add_argument(
        "--max-batch",
        type=_at_least(1, 256),
        default=16,
        metavar="N",
        help="images of concurrent requests run as one batch; 1 turns batching off (default: %(default)s)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        metavar="MS",
        help="how long a batch waits for more requests (default: %(default)s)",
    )
    p.add_argument(
        "--heldout",
        metavar="DATA",
        help="images like those to be served: bf16 is used only if its top-1 agrees with fp32 on them",
    )
    _precision_arg(p)
    load = p.add_argument_group("load test (instead of serving)")
    load.add_argument("--load-test", action="store_true", help="measure batched against one-at-a-time and exit")
    load.add_argument("--requests", type=_at_least(1, 100_000), default=400, help="per round (default: %(default)s)")
    load.add_argument("--concurrency", type=_at_least(1, 256), default=16, help="in flight (default: %(default)s)")
    load.add_argument("--rounds", type=_at_least(1, 20), default=3, help="of each set-up (default: %(default)s)")
    load.add_argument("--image", metavar="FILE", help="the image uploaded (default: a generated 500x375 JPEG)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .runtime.inference import load_classifier

    try:
        from .serve import Limits, create_app, is_loopback, run_server
        from .serve.app import make_fast
    except ImportError as e:
        raise UserError(f"serving needs FastAPI and uvicorn: pip install 'alexnet[serve]' ({e})") from e
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.batch_wait_ms < 0:
        raise FlagError("--max-upload-mb and --max-megapixels must be positive, --batch-wait-ms at least 0")
    if args.source is not None and (args.model or args.weights):
        raise FlagError("give CHECKPOINT or --model/--weights, not both")
    payload = None
    if args.image:
        try:
            payload = Path(args.image).read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {args.image}: {e.strerror or e}") from e
    clf = make_fast(
        load_classifier(args.source, model=args.model, weights=args.weights, device=args.device),
        args.precision,
        args.heldout,
    )
    mode = clf.mode.get("mode")
    if args.load_test:
        from .serve.loadtest import compare_batching, describe_comparison, sample_jpeg

        result = compare_batching(
            clf, payload or sample_jpeg(), requests=args.requests, concurrency=args.concurrency,
            rounds=args.rounds, max_batch=max(args.max_batch, 2), max_wait_ms=args.batch_wait_ms,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )  # fmt: skip
        print("\n".join(describe_comparison(result, clf.card.model)))
        return 1 if any(r["errors"] for r in result["results"].values()) else 0
    limits = Limits(int(args.max_upload_mb * 1024 * 1024), int(args.max_megapixels * 1e6), args.max_files)
    app = create_app(clf, limits=limits, max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms)
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: other machines can reach this server", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {clf.card.model} ({clf.card.num_classes} classes, {mode}) on http://{host}:{args.port}/ "
          "(API: POST /predict, GET /model, GET /health); Ctrl-C stops", flush=True)  # fmt: skip
    run_server(app, args.host, args.port)


# ----------------------------------------------------------------------------------------- prepare
def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from .data.prepare import DEFAULT_ENCODING
    from .data.prepared import ENCODINGS, MODES

    p = sub.add_parser(
        "prepare",
        help="down-sample an image folder once into a prepared dataset (memory-mapped shards) for fast training",
        description="Convert SRC/<class>/* (or SRC/train, SRC/val, SRC/test) into DST: every image decoded once, "
        "its shorter side resized to --size (or centre-cropped to a square), stored in shards with its label. "
        "Unreadable files are skipped and listed in DST/skipped.tsv. Killed half way, the same command "
        "finishes the rest. `alexnet train DST` and `alexnet evaluate CKPT DST` read the result. SRC may also "
        "hold ImageNet's archives as they come (the train tar of per-synset tars, the val tar and the devkit), "
        "be Kaggle's copy of ImageNet, or be a flat folder with --labels: nothing is extracted.",
    )
    p.add_argument(
        "src", metavar="SRC",
        help="image folder (or 'digits', 'photos'); a folder of ImageNet's archives, or one; Kaggle's ImageNet folder",
    )  # fmt: skip
    p.add_argument("dst", metavar="DST", help="the prepared dataset's folder (new, empty, or an unfinished one)")
    p.add_argument(
        "--size", type=_at_least(1, 65535), default=256, help="shorter side in pixels (default: %(default)s)"
    )
    p.add_argument(
        "--mode", choices=MODES, default="shorter-side",
        help="keep the aspect ratio, or keep only the central size x size square as the paper did "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--format", choices=ENCODINGS, default=DEFAULT_ENCODING,
        help="raw: uint8 pixels, no decoding when training (fastest, largest); jpeg: re-encoded JPEG, about a "
        "tenth of the bytes, decoded when loaded (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--quality", type=_at_least(1, 100), default=90, help="JPEG quality (default: %(default)s)")
    p.add_argument(
        "--shard-images", type=_at_least(1), default=1024, help="images per shard file (default: %(default)s)"
    )
    p.add_argument(
        "--workers", type=_at_least(0), default=None, help="converting processes (default: one per core; 0: none)"
    )
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error, not skipped")
    p.add_argument("--labels", metavar="FILE", help="CSV of file name (relative to SRC) and class; SRC: a flat folder")
    p.add_argument(
        "--devkit", metavar="PATH",
        help="ImageNet's ILSVRC2012_devkit_t12.tar.gz, or a folder with its meta.mat and validation ground truth, "
        "when it is not in SRC",
    )  # fmt: skip
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import PrepareOptions, describe_result, prepare_dataset

    options = PrepareOptions(args.size, args.mode, args.format, args.quality, args.shard_images)
    result = prepare_dataset(
        args.src, args.dst, options, workers=args.workers, strict=args.strict, quiet=args.quiet,
        labels=args.labels, devkit=args.devkit,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )  # fmt: skip
    print("\n".join(describe_result(result, args.dst)))
    return 0


# ----------------------------------------------------------------------------------------- main
# Each command module adds its parser here; order is the order of `alexnet --help`.
_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_summary,
    _add_train,
    _add_evaluate,
    _add_predict,
    _add_benchmark,
    _add_export,
    _add_visualize,
    _add_serve,
    _add_prepare,
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="alexnet",
        description="AlexNet (Krizhevsky, Sutskever, Hinton 2012): define, train, evaluate, predict, benchmark, "
        "export.  `alexnet COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _PARSERS:
        add(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def _error(command: str, error: Exception, status: int) -> int:
    """One line on stderr, from one process: the processes of a torchrun group all meet the same error."""
    from .training.distributed import main_process

    if main_process():
        print(f"alexnet {command}: error: {error}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a flag argparse refused (its message is printed)
        return e.code if isinstance(e.code, int) else 2
    warnings.showwarning = _show_warning  # one line per warning (e.g. each skipped unreadable image)
    try:
        return int(args.func(args) or 0)
    except (FlagError, ModeUnavailable, InputTooSmall) as e:  # a flag the command, model or machine refuses
        return _error(args.command, e, 2)
    except (UserError, TrainingDiverged) as e:  # the project's own errors; a bug keeps its traceback
        return _error(args.command, e, 1)
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
