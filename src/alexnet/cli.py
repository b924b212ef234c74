"""The ``alexnet`` command. Thin: each sub-command parses flags and calls a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .registry import UserError, list_models

Command = Callable[[argparse.Namespace], int | None]


def _model_arg(p: argparse.ArgumentParser, default: str | None = "alexnet2012") -> None:
    p.add_argument("--model", default=default, metavar="NAME", help=f"one of: {', '.join(list_models())}")


# ----------------------------------------------------------------------------------------- summary
def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="print a model's layer table (shapes, parameters, mult-adds)")
    _model_arg(p)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's)")
    p.add_argument("--json", action="store_true", help="print the same data as JSON")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args: argparse.Namespace) -> None:
    from .summary import model_summary

    table, data = model_summary(args.model, args.num_classes, args.input_size)
    print(json.dumps(data, indent=2) if args.json else table)


# ----------------------------------------------------------------------------------------- benchmark
def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    from .fast import INFERENCE_MODES, TRAINING_MODES

    p = sub.add_parser("benchmark", help="images/s of every fast mode against torchvision's AlexNet, same run")
    _model_arg(p, default="alexnet")
    p.add_argument("--batch-sizes", type=_csv(int), default=[1, 64], metavar="N,N", help="inference batch sizes")
    p.add_argument("--train", action="store_true", help="also time a training step (forward, backward, SGD)")
    p.add_argument("--train-batch-size", type=int, default=64)
    p.add_argument(
        "--modes", type=_csv(str), default=None, metavar="M,M", help=f"inference modes: {', '.join(INFERENCE_MODES)}"
    )
    p.add_argument(
        "--train-modes", type=_csv(str), default=None, metavar="M,M", help=f"one of: {', '.join(TRAINING_MODES)}"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement (fewer for slow ones)")
    p.add_argument("--no-allocator-tuning", action="store_true", help="leave glibc's malloc as it is")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--update-readme", metavar="README", help="rewrite the block between the bench markers")
    p.set_defaults(func=_cmd_benchmark)


def _cmd_benchmark(args: argparse.Namespace) -> None:
    from rich.console import Console

    from .bench import format_table, run_benchmark, update_readme

    err = Console(stderr=True)
    result = run_benchmark(
        args.model,
        args.batch_sizes,
        train=args.train,
        train_batch_size=args.train_batch_size,
        modes=args.modes,
        train_modes=args.train_modes,
        device=args.device,
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
    from .export import FORMATS

    p = sub.add_parser("export", help="export a checkpoint to ONNX / TorchScript / torch.export, verified")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a run folder")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--output", required=True, metavar="PATH")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the checkpoint's)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .export import ExportVerificationError, export_model

    model, meta = load_checkpoint(args.checkpoint, map_location="cpu")
    try:
        report = export_model(model, meta, args.format, args.output, args.input_size)
    except ExportVerificationError as e:
        print(f"alexnet export: verification failed: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {report['output']} ({report['format']}, {report['bytes'] / 1e6:.1f} MB, "
        f"input {report['input_shape']}); "
        f"verified with {report['verified_with']} on a batch of {report['check_batch']}: "
        f"max abs diff {report['max_abs_diff']:.2e} (tolerance {report['tolerance']:.1e})"
    )
    return 0


# ----------------------------------------------------------------------------------------- main
# Each command module adds its parser here; order is the order of `alexnet --help`.
_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [_add_summary, _add_benchmark, _add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad values reaching the library (e.g. an input below the minimum size)
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
