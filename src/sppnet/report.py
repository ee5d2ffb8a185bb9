"""Plots: training curves, the confusion matrix, the comparison chart.

matplotlib is imported only when a plot is drawn, and figures are drawn on their own
``matplotlib.figure.Figure`` (no pyplot), so the user's backend and open figures are left alone.
This module draws and writes PNG files (through :mod:`sppnet.files`); it trains nothing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from .files import atomic_write_bytes

__all__ = ["plot_curves", "plot_confusion", "plot_comparison"]


def _label(text: str) -> str:
    """Text a font can draw: names from the file system may hold undecodable bytes (escaped)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(Path(path), buffer.getvalue())


def plot_curves(history: Sequence[dict], path: Path, title: str | None = None) -> None:
    """Two panels, as in the study: training and validation accuracy, and loss, per epoch."""
    epochs = [r["epoch"] for r in history]
    fig = _figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [r["accuracy"] for r in history], label="Training Accuracy")
    left.plot(epochs, [r["val_accuracy"] for r in history], label="Validation Accuracy")
    left.set_title("Training and Validation Accuracy")
    left.legend(loc="lower right")
    right.plot(epochs, [r["loss"] for r in history], label="Training Loss")
    right.plot(epochs, [r["val_loss"] for r in history], label="Validation Loss")
    right.set_title("Training and Validation Loss")
    right.legend(loc="upper right")
    for ax in (left, right):
        ax.set_xlabel("epoch")
    if title:
        fig.suptitle(_label(title))
    _save(fig, path)


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = "Confusion matrix") -> None:
    """The confusion matrix as a picture: rows true class, columns predicted, counts written in."""
    k = len(class_names)
    fig = _figure(figsize=(1.2 * k + 2, 1.2 * k + 1))
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    top = max(max(row) for row in confusion) if k else 0
    for i in range(k):
        for j in range(k):
            value = confusion[i][j]
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    names = [_label(n) for n in class_names]
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_label(title))
    _save(fig, path)


def plot_comparison(histories: dict[str, Sequence[dict]], path: Path) -> None:
    """Validation accuracy and loss curves of several runs overlaid."""
    fig = _figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    for name, history in histories.items():
        epochs = [r["epoch"] for r in history]
        left.plot(epochs, [r["val_accuracy"] for r in history], label=_label(name))
        right.plot(epochs, [r["val_loss"] for r in history], label=_label(name))
    left.set_title("Validation Accuracy")
    right.set_title("Validation Loss")
    for ax in (left, right):
        ax.set_xlabel("epoch")
    left.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def __getattr__(name: str):
    # The comparison (it trains) moved to sppnet.compare; the old names work for one release.
    if name in ("compare", "write_comparison", "STUDY_VARIANTS"):
        import importlib
        import warnings

        warnings.warn(f"sppnet.report.{name} moved to sppnet.compare.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("sppnet.compare"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
