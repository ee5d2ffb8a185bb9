"""What a training checks before it writes anything, and after each epoch."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import data as data_mod
from ..config import TrainConfig
from ..errors import ConfigError, TrainingError
from ..models import builder_parameters
from ..runs import RunFolder
from ..sizing import largest_image

__all__ = ["check_batch_memory", "check_out_path", "check_finite"]


def check_batch_memory(config: TrainConfig) -> None:
    """Refuses sizes whose largest batch could not fit in memory, before anything is decoded: a
    lower bound (the input and the first layer's output, float32, nothing kept for backward).

    Raises:
        ConfigError: naming the size option and the bound.
    """
    available = data_mod.available_memory()
    if available is None:
        return
    height, width = largest_image(config.size_policy())
    first = config.widths[0] if "widths" in builder_parameters(config.model) else 16
    needed = config.batch_size * height * width * 4 * (3 + first)
    if needed > available:
        raise ConfigError(f"{config.size_policy().describe()}: a batch of {config.batch_size} images up to "
                          f"{height}x{width} needs more than {needed / 1e9:,.1f} GB for its activations, and "
                          f"{available / 1e9:,.1f} GB are free; use smaller sizes or a smaller --batch-size")


def check_out_path(config: TrainConfig) -> None:
    """Refuses an empty --out and one inside the data folder (its files would become images).

    Raises:
        ConfigError: naming --out.
    """
    if not str(config.out).strip():
        raise ConfigError("--out must name a folder, got ''")
    data = Path(config.data).expanduser()
    if data.is_dir():
        out, data = Path(config.out).expanduser().resolve(), data.resolve()
        if out == data or data in out.parents:
            raise ConfigError(f"--out {config.out} lies inside the data folder {config.data}: the run's files would "
                              "be read as data; choose a folder outside it")


def check_finite(epoch: int, row: dict, model: torch.nn.Module, run: RunFolder, history: list[dict]) -> None:
    """Stops a run that diverged before its epoch is saved: the folder keeps its last finite epoch.

    Raises:
        TrainingError: naming the epoch and what stopped being a number.
    """
    bad = [key for key in ("loss", "val_loss") if not math.isfinite(row[key])]
    if not bad and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        bad = ["weights"]
    if bad:
        kept = f"keeps epoch {history[-1]['epoch']}" if history else "keeps no epoch"
        raise TrainingError(f"epoch {epoch}: the {' and '.join(bad)} became NaN or infinite: the run diverged "
                            f"(try a lower --lr); {run.path} {kept}")
