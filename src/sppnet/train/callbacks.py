"""What training tells the outside: progress on the console, metric dicts to callbacks, TensorBoard.

:func:`sppnet.train.train` reports through a :class:`Reporter` (messages, a step bar, the Keras
epoch line: :class:`ConsoleReporter` prints them) and calls each callback with a dict of numbers:

    {"event": "epoch", "epoch": 3, "epochs": 20, "loss": 0.86, "accuracy": 0.67, "val_loss": 0.85,
     "val_accuracy": 0.68, "lr": 0.001, "seconds": 21.3, "images_per_second": 138.0,
     "best_epoch": 3, "best_val_accuracy": 0.68, "run": "runs/spp"}

after each epoch, and ``{"event": "end", "epochs": ..., "best": {...}, "metrics": {...}, "run": ...}``
once at the end. :class:`TensorBoard` is such a callback: each number becomes a scalar of
``RUN/tensorboard`` (extra ``sppnet[tensorboard]``), and the curves' figure an image at the end.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
from pathlib import Path
from typing import Callable

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Callback", "Reporter", "ConsoleReporter", "TensorBoard", "format_epoch_line", "require_tensorboard"]

#: A callback: called with each event's dict.
Callback = Callable[[dict], None]


class Reporter:
    """Receives progress from :func:`train`. The default logs one line per epoch."""

    wants_steps = False

    def message(self, text: str) -> None:
        log.info(text)

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float, accuracy: float, elapsed: float) -> None:
        pass

    def epoch(self, line: str) -> None:
        log.info(line)


def format_epoch_line(epoch: int, epochs: int, steps: int, seconds: float, row: dict) -> str:
    """Keras' epoch line: ``Epoch 3/20 - 92/92 - 21s - 228ms/step - loss: ... - val_accuracy: ...``."""
    parts = [f"Epoch {epoch}/{epochs}", f"{steps}/{steps}", f"{seconds:.0f}s", f"{1000 * seconds / max(steps, 1):.0f}ms/step"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in row and not math.isnan(row[key]):
            parts.append(f"{key}: {row[key]:.4f}")
    return " - ".join(parts)


class ConsoleReporter(Reporter):
    """Prints training progress to ``stream`` (default stdout): a bar on a terminal, one
    Keras-style line per epoch. What :func:`sppnet.train.train` shows by default."""

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


def require_tensorboard() -> None:
    """Raises ConfigError (one line, what to install) when torch.utils.tensorboard cannot work."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'sppnet[tensorboard]'")


class TensorBoard:
    """A callback that writes each epoch's numbers as TensorBoard scalars into ``log_dir`` (and
    the run's ``curves.png`` as an image at the end), through ``torch.utils.tensorboard``.

    Raises:
        ConfigError: the tensorboard package is missing.
    """

    def __init__(self, log_dir: str | Path) -> None:
        require_tensorboard()
        self.log_dir = Path(log_dir)
        self._writer = None

    def _open(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir))
        return self._writer

    def __call__(self, event: dict) -> None:
        writer = self._open()
        if event.get("event") == "epoch":
            for key, value in event.items():
                if key not in ("event", "epoch", "epochs") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and math.isfinite(value):
                    group = "validation" if key.startswith(("val_", "best_")) else "train"
                    writer.add_scalar(f"{group}/{key}", value, event["epoch"])
            writer.flush()
        elif event.get("event") == "end":
            curves = Path(event.get("run", "")) / "curves.png"
            if curves.is_file():
                import numpy as np
                from PIL import Image

                with Image.open(curves) as image:
                    writer.add_image("curves", np.asarray(image.convert("RGB")), event.get("epochs", 0), dataformats="HWC")
            writer.close()
            self._writer = None
