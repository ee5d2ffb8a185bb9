"""The ``sppnet`` command: parses arguments, calls the library, prints.

Each subcommand lives in its own ``_add_<name>`` / ``_run_<name>`` pair. sppnet's own errors
(:class:`~sppnet.errors.SppnetError`) are printed as one line and exit with status 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
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


def _add_data(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data",
        help="summarise a dataset and its training/validation split",
        description=(
            "Scan a dataset (a folder of class subfolders, an archive of one, or 'flowers'), split it "
            "as Keras' image_dataset_from_directory does, and print counts, image sizes and any "
            "unreadable files."
        ),
        epilog=(
            "examples:\n"
            "  sppnet data ../shared/datasets/flower_photos.tgz\n"
            "  sppnet data photos/ --val-split 0.1 --seed 7\n"
            "  sppnet data flowers --list val > val_files.txt"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="DATA", help="folder, archive (.tgz/.tar.gz/.tar/.zip) or 'flowers'")
    parser.add_argument("--val-split", type=float, default=0.2, help="validation fraction (default 0.2)")
    parser.add_argument("--seed", type=int, default=123, help="split seed (default 123)")
    parser.add_argument("--list", choices=["train", "val"], help="print only the files of that subset, in split order")
    parser.set_defaults(run=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    from . import data

    root = data.locate(args.data, progress=_download_progress())
    dataset = data.scan(root)
    train, val = data.split(dataset, args.val_split, args.seed)
    if args.list:
        for name in (train if args.list == "train" else val).files:
            print(name)
        return 0
    summary = data.summarize(dataset, train, val)
    print(summary)
    return 0


def _download_progress():
    """A progress callback for downloads: a bar on a terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        frac = min(done / total, 1.0) if total else 0.0
        bar = "=" * int(frac * 30)
        print(f"\rdownloading [{bar:<30}] {done / 1e6:7.1f}/{total / 1e6:.1f} MB", end="", file=sys.stderr)
        if done >= total:
            print(file=sys.stderr)

    return show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Classify images of any size with CNNs that end in spatial pyramid pooling.",
        epilog="Run 'sppnet COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_data(sub)
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
    except BrokenPipeError:  # output piped into head & co.: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
