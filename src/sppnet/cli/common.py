"""What the subcommands share: the parser helper, list options, console output."""

from __future__ import annotations

import argparse
import sys

from ..train.callbacks import ConsoleReporter

__all__ = ["PROG", "subcommand", "int_list", "ConsoleReporter", "download_progress"]

PROG = "sppnet"


def subcommand(sub: argparse._SubParsersAction, name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A subcommand parser with a help line, a description and an epilog of examples."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def int_list(text: str) -> tuple[int, ...]:
    """Parses ``1,2,4`` (an argparse type)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def download_progress():
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
