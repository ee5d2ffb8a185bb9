"""The study's comparison: trains each variant, then writes ``report.md`` with its plots.

``sppnet compare DATA`` trains the variants of :data:`sppnet.config.STUDY_VARIANTS` (Flatten,
SPP without augmentation and dropout, SPP, multi-size, range, native, GAP), each as a normal,
resumable run folder under ``out``, and writes ``out/report.md`` and ``out/comparison.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .config import STUDY_VARIANTS, TrainConfig
from .errors import ConfigError
from .files import atomic_write_bytes
from .report import plot_comparison
from .runs import RunFolder
from .train import Reporter, train

__all__ = ["compare", "write_comparison", "STUDY_VARIANTS"]


def compare(data: str, out: str | Path = "runs/compare", epochs: int = 20, variants: Sequence[str] | None = None,
            limit: int | None = None, device: str = "auto", seed: int = 123, reporter: Reporter | None = None) -> Path:
    """Trains the study's variants (each a normal, resumable run folder) and writes report.md.

    A variant whose run folder already holds ``epochs`` finished epochs is not trained again; a
    partial one is resumed.

    Returns:
        The path of report.md.
    """
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
