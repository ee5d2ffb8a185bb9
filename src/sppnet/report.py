"""Plots and the comparison report.

matplotlib is imported only when a plot is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from .runs import atomic_write_bytes

__all__ = ["plot_curves", "plot_confusion", "plot_comparison"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(Path(path), buffer.getvalue())


def plot_curves(history: Sequence[dict], path: Path, title: str | None = None) -> None:
    """Two panels, as in the study: training and validation accuracy, and loss, per epoch."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
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
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = "Confusion matrix") -> None:
    """The confusion matrix as a picture: rows true class, columns predicted, counts written in."""
    plt = _pyplot()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1))
    ax.imshow(confusion, cmap="Blues")
    top = max(max(row) for row in confusion) if k else 0
    for i in range(k):
        for j in range(k):
            value = confusion[i][j]
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def plot_comparison(histories: dict[str, Sequence[dict]], path: Path) -> None:
    """Validation accuracy and loss curves of several runs overlaid."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, history in histories.items():
        epochs = [r["epoch"] for r in history]
        left.plot(epochs, [r["val_accuracy"] for r in history], label=name)
        right.plot(epochs, [r["val_loss"] for r in history], label=name)
    left.set_title("Validation Accuracy")
    right.set_title("Validation Loss")
    for ax in (left, right):
        ax.set_xlabel("epoch")
    left.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The study's comparison

#: The study's variants: name -> (training options, what the study reported).
STUDY_VARIANTS: dict[str, tuple[dict, dict]] = {
    "flatten": (dict(model="flatten"), {"val_accuracy": 0.7275}),
    "spp-noaug": (dict(model="spp", augment=False, dropout=0.0), {"val_accuracy": 0.7289, "val_loss": 1.08}),
    "spp": (dict(model="spp"), {"val_accuracy": 0.7657, "best_val_accuracy": 0.7793}),
    "spp-multi": (dict(model="spp", policy={"kind": "multi", "sizes": [180, 224]}), {}),
    "spp-range": (dict(model="spp", policy={"kind": "range", "low": 180, "high": 224}), {}),
    "spp-native": (dict(model="spp", policy={"kind": "native", "size": 180, "max_aspect": 2.0}), {}),
    "gap": (dict(model="gap"), {}),
}


def compare(data: str, out: str | Path = "runs/compare", epochs: int = 20, variants: Sequence[str] | None = None,
            limit: int | None = None, device: str = "auto", seed: int = 123, reporter=None) -> Path:
    """Trains the study's variants (each a normal, resumable run folder) and writes report.md.

    A variant whose run folder already holds ``epochs`` finished epochs is not trained again; a
    partial one is resumed.

    Returns:
        The path of report.md.
    """
    from .errors import ConfigError
    from .runs import RunFolder
    from .train import TrainConfig, train

    names = list(variants) if variants else list(STUDY_VARIANTS)
    unknown = [n for n in names if n not in STUDY_VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(STUDY_VARIANTS)}")
    out = Path(out)
    for name in names:
        options, _ = STUDY_VARIANTS[name]
        run = RunFolder(out / name)
        config = TrainConfig(data=data, out=str(run.path), epochs=epochs, limit=limit, device=device, seed=seed, **options)
        done = len(run.read_history()) if run.file("state.pt").is_file() else 0
        if reporter is not None:
            reporter.message(f"== {name}: {done}/{epochs} epochs done")
        if done >= epochs:
            continue
        train(config, resume=run.exists() and run.file("state.pt").is_file(), reporter=reporter)
    return write_comparison(out, names)


def write_comparison(out: str | Path, names: Sequence[str]) -> Path:
    """Writes report.md and comparison.png for the run folders ``out/<name>``."""
    from .runs import RunFolder

    out = Path(out)
    rows, histories = [], {}
    for name in names:
        run = RunFolder(out / name)
        history = run.read_history()
        metrics = run.read_json("metrics.json")
        histories[name] = history
        study = STUDY_VARIANTS.get(name, ({}, {}))[1]
        val = metrics.get("validation", {})
        min_loss_epoch = min(history, key=lambda r: r["val_loss"])["epoch"]
        rows.append(
            f"| {name} | {metrics['final']['val_accuracy']:.4f} | {metrics['best']['val_accuracy']:.4f} "
            f"(epoch {metrics['best']['epoch']}) | {metrics['final']['val_loss']:.4f} (min at epoch {min_loss_epoch}) | "
            f"{metrics['final']['accuracy']:.4f} | {metrics['seconds_per_epoch_median']:.1f} | {metrics['parameters']:,} | "
            f"{val.get('confidence_right', float('nan')):.4f} | {val.get('confidence_wrong', float('nan')):.4f} | "
            f"{val.get('ece', float('nan')):.4f} | "
            f"{_study(study)} |"
        )
    lines = [
        "# sppnet compare",
        "",
        f"{len(names)} variants, {len(histories[names[0]]) if names else 0} epochs each, validation split of "
        "the Keras-compatible 80/20 split (seed 123). Final = last epoch; best = best epoch by validation accuracy.",
        "",
        "| variant | val acc (final) | val acc (best) | val loss (final) | train acc | s/epoch | parameters | "
        "mean confidence when right | when wrong | ECE (15 bins) | study |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
        "![validation curves](comparison.png)",
        "",
    ]
    plot_comparison(histories, out / "comparison.png")
    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _study(reported: dict) -> str:
    if not reported:
        return "—"
    parts = [f"val acc {reported['val_accuracy']:.4f}"]
    if "best_val_accuracy" in reported:
        parts.append(f"best {reported['best_val_accuracy']:.4f}")
    if "val_loss" in reported:
        parts.append(f"val loss {reported['val_loss']:.2f}")
    return ", ".join(parts)
