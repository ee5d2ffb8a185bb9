"""What the subcommands share: the parser helper, list options, console output."""

from __future__ import annotations

import argparse
import sys

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


class ConsoleReporter:
    """Prints training progress: a bar on a terminal, one Keras-style line per epoch."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.wants_steps = self.stream.isatty()
        self._bar_shown = False

    def message(self, text: str) -> None:
        self._clear()
        print(text, file=self.stream, flush=True)

    def step(self, epoch, epochs, step, steps, loss, accuracy, elapsed) -> None:
        eta = elapsed / step * (steps - step)
        filled = int(30 * step / steps)
        bar = "=" * filled + (">" if filled < 30 else "") + "." * max(0, 29 - filled)
        print(f"\rEpoch {epoch}/{epochs} {step}/{steps} [{bar}] ETA {eta:4.0f}s - loss: {loss:.4f} - accuracy: {accuracy:.4f}",
              end="", file=self.stream, flush=True)
        self._bar_shown = True

    def epoch(self, line: str) -> None:
        self.message(line)

    def _clear(self) -> None:
        if self._bar_shown:
            print("\r\033[K", end="", file=self.stream)
            self._bar_shown = False


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
