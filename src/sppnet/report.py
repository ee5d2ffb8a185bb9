"""Plots: training curves, the confusion matrix, the comparison chart.

matplotlib is imported only when a plot is drawn, and figures are drawn on their own
``matplotlib.figure.Figure`` (no pyplot), so the user's backend and open figures are left alone.
This module draws and writes PNG files (through :mod:`sppnet.files`); it trains nothing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from ._deprecated import moved
from .files import atomic_write_bytes

__all__ = ["plot_curves", "plot_confusion", "plot_comparison", "plot_explanations", "heatmap_rgba", "heatmap_png"]


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
    left.set_ylabel("accuracy")
    right.set_ylabel("loss (cross-entropy)")
    finite = [r for r in history if r["val_accuracy"] == r["val_accuracy"]]  # not NaN
    if finite:
        best = max(finite, key=lambda r: r["val_accuracy"])
        left.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1)
        left.annotate(f"best {best['val_accuracy']:.4f} (epoch {best['epoch']})", (best["epoch"], best["val_accuracy"]),
                      textcoords="offset points", xytext=(-4, 6), ha="right", fontsize=8)
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


def plot_reliability(bins: Sequence[dict], path: Path, title: str = "Reliability") -> None:
    """A reliability diagram: each confidence bin's accuracy as a bar beside the diagonal a
    calibrated model would follow, with how many answers each bin holds underneath."""
    fig = _figure(figsize=(6, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = [b for b in bins if b["count"]]
    width = [b["high"] - b["low"] for b in filled]
    left = [b["low"] for b in filled]
    top.bar(left, [b["accuracy"] for b in filled], width=width, align="edge", edgecolor="black",
            color="#4c72b0", label="accuracy")
    top.bar(left, [abs(b["confidence"] - b["accuracy"]) for b in filled],
            bottom=[min(b["accuracy"], b["confidence"]) for b in filled], width=width, align="edge",
            color="#dd8452", alpha=0.6, hatch="//", edgecolor="#dd8452", label="gap to the mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(_label(title), fontsize=9)
    bottom.bar([b["low"] for b in bins], [b["count"] for b in bins], width=[b["high"] - b["low"] for b in bins],
               align="edge", color="gray", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("images")
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
    # The comparison (it trains, floor 9) moved to sppnet.compare and its old names here are gone:
    # the error says where they live now.
    return moved(__name__, name, {})


def heatmap_rgba(heatmap, opacity: float = 0.6):
    """A heat map (H, W) in [0, 1] as an RGBA uint8 array (H, W, 4): a colour scale whose
    opacity grows with the value, to lay over the photo."""
    import numpy as np
    from matplotlib import colormaps

    values = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    rgba = colormaps["jet"](values)  # (H, W, 4) floats
    rgba[..., 3] = opacity * np.sqrt(values)
    return (rgba * 255 + 0.5).astype(np.uint8)


def heatmap_png(heatmap, opacity: float = 0.6) -> bytes:
    """:func:`heatmap_rgba` encoded as a PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(heatmap_rgba(heatmap, opacity), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def plot_explanations(image, rows: Sequence[tuple[str, object, dict]], path: Path) -> None:
    """One row per explained class: the photo at its own aspect ratio with the heat map blended
    over it, and beside it each SPP level as a grid shaded by its bins' shares.

    Args:
        image: the photo, RGB uint8 (H, W, 3).
        rows: (title, heat map (H, W) in [0, 1], {level: n x n shares}) per class.
        path: the PNG to write.
    """
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    height, width = image.shape[:2]
    levels = max((len(pyramid) for _, _, pyramid in rows), default=0)
    photo_width = 4.0 * width / max(height, 1)
    fig = _figure(figsize=(photo_width + 1.6 * levels + 0.5, 4.2 * len(rows)))
    grid = fig.add_gridspec(len(rows), 1 + levels, width_ratios=[photo_width] + [1.4] * levels)
    for r, (title, heatmap, pyramid) in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(image)
        ax.imshow(heatmap_rgba(heatmap))
        ax.set_title(_label(title), fontsize=9, wrap=True)
        ax.axis("off")
        scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="jet")
        fig.colorbar(scale, ax=ax, fraction=0.04, pad=0.02).set_label("share of the class's evidence (Grad-CAM)",
                                                                         fontsize=7)
        for k, (level, shares) in enumerate(sorted(pyramid.items())):
            cell = fig.add_subplot(grid[r, 1 + k])
            cell.imshow(np.asarray(shares, dtype=np.float32), cmap="magma", vmin=0.0, vmax=1.0)
            for i in range(level):
                for j in range(level):
                    if level <= 4:
                        value = float(shares[i][j])
                        cell.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                                  color="black" if value > 0.5 else "white")
            cell.set_title(f"{level}x{level} bins", fontsize=8)
            cell.set_xticks([])
            cell.set_yticks([])
    _save(fig, path)
