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


# ----------------------------------------------------------------------------------------- main
# Each command module adds its parser here; order is the order of `alexnet --help`.
_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [_add_summary]


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
