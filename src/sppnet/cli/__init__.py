"""The ``sppnet`` command: one module per subcommand; each parses, calls one library function,
and prints.

sppnet's own errors (:class:`~sppnet.errors.SppnetError`) are printed as one line and exit with
status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .._version import __version__
from ..errors import SppnetError
from . import compare, data, evaluate, explain, export, predict, serve, train
from .common import PROG, ConsoleReporter

__all__ = ["main", "build_parser", "ConsoleReporter", "PROG"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Classify images of any size with CNNs that end in spatial pyramid pooling.",
        epilog="Run 'sppnet COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    train.add_parser(sub)
    evaluate.add_parser(sub)
    predict.add_parser(sub)
    explain.add_parser(sub)
    compare.add_parser(sub)
    serve.add_parser(sub)
    export.add_parser(sub)
    data.add_parsers(sub)
    return parser


def _printable_output() -> None:
    """File names need not be valid UTF-8 (Linux allows any bytes): print what cannot be encoded
    as escapes instead of failing in the middle of the output."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change (already written binary, closed)
                pass


def main(argv: Sequence[str] | None = None) -> int:
    _printable_output()
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
    except BrokenPipeError:  # output piped into head & co.: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
