"""The ``sppnet`` command: parses arguments, calls the library, prints.

Each subcommand lives in its own ``_add_<name>`` / ``_run_<name>`` pair. sppnet's own errors
(:class:`~sppnet.errors.SppnetError`) are printed as one line and exit with status 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ._version import __version__
from .errors import SppnetError

PROG = "sppnet"


def _add_models(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "models",
        help="list the model family and parameter counts",
        description="List the registered models with their parameter counts for 5 classes.",
        epilog="example:\n  sppnet models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from .models import build_model, count_parameters, list_models

    for name in list_models():
        model = build_model(name)
        print(f"{name:<8} {count_parameters(model):>10,} parameters  {model.pool}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Classify images of any size with CNNs that end in spatial pyramid pooling.",
        epilog="Run 'sppnet COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_models(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except SppnetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
