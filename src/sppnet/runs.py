"""The run folder: everything one training run writes, written atomically.

Layout::

    RUN/
      config.json         how the run was made: model, classes, size policy, data, versions
      best.safetensors    weights of the epoch with the best validation accuracy
      last.safetensors    weights of the last finished epoch
      history.csv         one row per epoch: epoch, loss, accuracy, val_loss, val_accuracy, seconds
      curves.png          training and validation accuracy and loss
      metrics.json        summary of the run (final and best epoch, timings, skipped files)
      state.pt            optimiser, epoch and RNG states for --resume (tensors only)

Every file is written to a temporary name beside it and renamed into place, so a run killed at
any moment leaves each file either complete and old or complete and new.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DataError

__all__ = ["RunFolder", "HISTORY_FIELDS", "atomic_write_bytes"]

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunFolder:
    """Reads and writes one run folder.

    Args:
        path: the folder (created on first write).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.file("config.json").is_file()

    # config and metrics ---------------------------------------------------------------------

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_bytes(self.file(name), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: missing; is {self.path} a run folder made by sppnet train?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None

    def read_config(self) -> dict:
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such run folder")
        return self.read_json("config.json")

    # weights --------------------------------------------------------------------------------

    def save_weights(self, name: str, state_dict: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        # safetensors writes to a path; write beside the target and rename for atomicity.
        target = self.file(f"{name}.safetensors")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_weights(self, name: str = "best") -> dict[str, torch.Tensor]:
        path = self.file(f"{name}.safetensors")
        if not path.is_file():
            raise DataError(f"{path}: missing; the run has no {name!r} weights yet")
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read weights ({err})") from None

    # history --------------------------------------------------------------------------------

    def write_history(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row[k]) for k in HISTORY_FIELDS})
        atomic_write_bytes(self.file("history.csv"), buffer.getvalue().encode())

    def read_history(self) -> list[dict]:
        path = self.file("history.csv")
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        try:
            return [{k: (int(r[k]) if k == "epoch" else float(r[k])) for k in HISTORY_FIELDS} for r in rows]
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: not a history written by sppnet ({err})") from None

    # the model ------------------------------------------------------------------------------

    def load_model(self, weights: str = "best", device: torch.device | str = "cpu") -> torch.nn.Module:
        """Rebuilds the run's model from config.json with its ``best`` or ``last`` weights (eval mode)."""
        from .models import build_model

        model_cfg = dict(self.read_config()["model"])
        name = model_cfg.pop("name")
        model = build_model(name, **{k: tuple(v) if isinstance(v, list) else v for k, v in model_cfg.items()})
        try:
            model.load_state_dict(self.load_weights(weights))
        except RuntimeError as err:
            raise DataError(
                f"{self.file(weights + '.safetensors')}: weights do not fit the model in config.json "
                f"({str(err).splitlines()[0]})"
            ) from None
        return model.to(device, memory_format=torch.channels_last).eval()

    # training state -------------------------------------------------------------------------

    def save_state(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.file("state.pt"), buffer.getvalue())

    def load_state(self) -> dict:
        path = self.file("state.pt")
        if not path.is_file():
            raise DataError(f"{path}: missing; nothing to resume (train without --resume to start)")
        try:
            # Tensors, numbers and strings only: never unpickle arbitrary objects.
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for corrupt or hostile files
            raise DataError(f"{path}: cannot read training state ({type(err).__name__}: {err})") from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
