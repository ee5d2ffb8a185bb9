"""The run folder itself: reading and writing its files atomically, checkpoints, the model."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import statistics
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, DataError, WriteError
from ..files import atomic_path, atomic_write_bytes, check_writable, remove_temporaries
from ..models import check_weights, count_parameters
from ..runtime import peak_rss_mb

from .record import HISTORY_FIELDS, STATE_KEYS, Checkpoint, RunConfig

#: The file a training holds while it writes the run folder (see :meth:`RunFolder.lock`).
LOCK = ".lock"

log = logging.getLogger(__name__)


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
        except RecursionError:
            raise DataError(f"{path}: nested too deeply to be a sppnet file") from None

    def read_config(self) -> dict:
        """config.json as a plain dict (prefer :meth:`run_config`)."""
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such run folder")
        return self.read_json("config.json")

    def run_config(self) -> RunConfig:
        """config.json, typed and checked (see :class:`RunConfig`)."""
        return RunConfig.from_dict(self.read_config(), str(self.file("config.json")))

    def write_run_config(self, config: RunConfig) -> None:
        self.write_json("config.json", config.to_dict())

    # weights --------------------------------------------------------------------------------

    def save_weights(self, name: str, state_dict: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        path = self.file(f"{name}.safetensors")
        with atomic_path(path) as tmp:
            try:
                save_file(tensors, str(tmp))
            except SafetensorError as err:  # its own type for I/O errors (a full disk): not an OSError
                raise WriteError(f"{path}: cannot write ({err})") from None

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

    def temperature(self, weights: str = "best") -> float | None:
        """The temperature fitted for the ``best`` or ``last`` weights (``calibration.json``,
        written by a run trained with ``calibrate`` > 0); None when the run has none."""
        path = self.file("calibration.json")
        if not path.is_file():
            return None
        entry = self.read_json("calibration.json")
        section = entry.get(weights) if isinstance(entry, dict) else None
        value = section.get("temperature") if isinstance(section, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
            raise DataError(f"{path}: no usable temperature for the {weights!r} weights (a positive number under "
                            f"'{weights}'.'temperature'); delete the file to use the model uncalibrated")
        return float(value)

    def write_calibration(self, entry: dict) -> None:
        """Stores the fitted temperatures: ``{"best": {"temperature": T, ...}, "last": {...}}``."""
        self.write_json("calibration.json", entry)

    def load_model(self, weights: str = "best", device: torch.device | str = "cpu",
                   fast_paths: bool | None = None, config: RunConfig | None = None,
                   calibrated: bool = True) -> torch.nn.Module:
        """Rebuilds the run's model with its ``best`` or ``last`` weights (eval mode).

        ``config``: the run's :meth:`run_config`, when the caller has read it already.
        ``calibrated``: when the run has a fitted temperature T (``calibration.json``), the last
        layer's weights and bias are divided by T, so that the model's logits are the calibrated
        ones: every user of the model (predict, evaluate, serve, explain, the exported ONNX and
        TorchScript files) gives calibrated probabilities, and the predicted class is unchanged.
        """
        if weights not in ("best", "last"):
            raise ConfigError(f"weights must be 'best' or 'last', got {weights!r}")
        config = config or self.run_config()
        try:
            model = config.model.build(fast_paths)
        except ConfigError as err:
            raise DataError(f"{self.file('config.json')}: cannot build its model ({err})") from None
        outputs = model.classifier[-1].out_features
        if outputs != len(config.class_names):
            raise DataError(f"{self.file('config.json')}: {len(config.class_names)} class names for a model with "
                            f"{outputs} outputs")
        path = self.file(f"{weights}.safetensors")
        tensors = self.load_weights(weights)
        check_weights(tensors, model, path)
        model.load_state_dict(tensors)
        temperature = self.temperature(weights) if calibrated else None
        if temperature is not None:
            with torch.no_grad():
                model.classifier[-1].weight.div_(temperature)
                model.classifier[-1].bias.div_(temperature)
        return model.to(device, memory_format=torch.channels_last).eval()

    # checkpoints ------------------------------------------------------------------------------

    def check_out(self, resume: bool) -> None:
        """Checks that a new run may be written here, or (``resume``) that there is one to resume.

        Raises:
            ConfigError: naming the folder and what to do instead.
        """
        if resume:
            if not self.exists():
                raise ConfigError(f"--resume: {self.path} holds no run to resume (no config.json)")
            return
        if self.exists():
            raise ConfigError(f"{self.path} already holds a run; pass --resume to continue it or choose another --out")
        if self.path.exists() and (not self.path.is_dir() or any(p.name != LOCK for p in self.path.iterdir())):
            raise ConfigError(f"--out {self.path} exists and is not an empty folder; choose another --out")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds the run folder for one writing process (an advisory lock on ``RUN/.lock``, which
        the system releases when the process ends, however it ends).

        Raises:
            ConfigError: another process holds it (the message names its pid).
        """
        try:
            import fcntl
        except ImportError:  # no advisory locks on this system: one writer is the user's care
            yield
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.file(LOCK), "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                owner = handle.read().strip()[:20]
                raise ConfigError(f"{self.path}: another training is writing this run folder"
                                  f"{f' (pid {owner})' if owner else ''}; wait for it to end or choose another "
                                  "--out") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                # A training refused before it wrote anything leaves nothing behind, not even the lock.
                if [q.name for q in self.path.iterdir()] == [LOCK]:
                    self.file(LOCK).unlink(missing_ok=True)
                    if created:
                        self.path.rmdir()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def check_writable(self) -> None:
        """Checks (creating nothing) that the run folder can be written.

        Raises:
            WriteError: naming the folder and why not.
        """
        check_writable(self.path, f"--out {self.path}")

    def save_epoch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, history: list[dict],
                   validation: dict, best: dict, train_rates: list[float], failures: list[tuple[str, str]],
                   averaged: torch.nn.Module | None = None) -> None:
        """Writes a finished epoch: weights, history, metrics, curves, then ``state.pt`` (last:
        it marks the epoch as finished, so a run killed before it resumes from the epoch before).

        Args:
            model: the model being trained. averaged: its moving average
                (``torch.optim.swa_utils.AveragedModel``), when the run keeps one: then the
                weights files hold the average (what was validated) and ``state.pt`` both.
            history: every epoch's row so far, the latest last.
            validation: the epoch's validation metrics (per-class values, no confusion matrix).
            best: ``{"epoch", "val_accuracy"}`` of the best epoch so far; updated here.
            train_rates: training images/s of each epoch this process has run (a resumed
                run's earlier epochs are not timed again), the latest last.
            failures: (path, reason) of each file the run skipped.
        """
        from ..report import plot_curves

        row = history[-1]

        def cpu_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

        train_state = cpu_copy(model)
        state_dict = train_state if averaged is None else cpu_copy(averaged.module)
        self.save_weights("last", state_dict)
        if row["val_accuracy"] > best["val_accuracy"] or best["epoch"] == 0:
            best.update(epoch=row["epoch"], val_accuracy=row["val_accuracy"])
            self.save_weights("best", state_dict)
        self.write_history(history)
        epoch_seconds = [r["seconds"] for r in history]
        metrics = {
            "epochs": row["epoch"],
            "final": {k: row[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
            "best": {"epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
                     "val_loss": history[best["epoch"] - 1]["val_loss"]},
            "validation": validation,
            "seconds_per_epoch_median": statistics.median(epoch_seconds),
            "train_images_per_second_last_epoch": train_rates[-1] if train_rates else None,
            "train_images_per_second_median": statistics.median(train_rates) if train_rates else None,
            "parameters": count_parameters(model),
            "peak_rss_mb": peak_rss_mb(),
            "skipped_files": [reason for _, reason in failures],
        }
        self.write_json("metrics.json", metrics)
        try:
            plot_curves(history, self.file("curves.png"))
        except ImportError:
            log.warning("matplotlib is not installed: no curves.png")
        state = {
            "model": train_state,
            "optimizer": optimizer.state_dict(),
            "epoch": row["epoch"],
            "best_epoch": best["epoch"],
            "best_val_accuracy": best["val_accuracy"],
            "torch_rng": torch.get_rng_state(),
        }
        if averaged is not None:
            state["averaged"] = cpu_copy(averaged)
        self.save_state(state)

    # training state -------------------------------------------------------------------------

    def save_state(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.file("state.pt"), buffer.getvalue())

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               averaged: torch.nn.Module | None = None) -> Checkpoint:
        """Loads the last finished epoch's model and optimizer states into ``model`` and
        ``optimizer`` (and the moving average into ``averaged``, when the run keeps one) and
        returns where the run stands; a fresh :class:`Checkpoint` when no epoch was finished (no
        ``state.pt``)."""
        for path in remove_temporaries(self.path):  # what a killed writer left behind
            log.info("removed %s, left by an interrupted write", path)
        if not self.file("state.pt").is_file():
            return Checkpoint()
        state = self.load_state()
        path = self.file("state.pt")
        check_weights(state["model"], model, path, finite=False)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if averaged is not None:
                if not isinstance(state.get("averaged"), dict):
                    raise KeyError("no moving average of the weights ('averaged') in it")
                averaged.load_state_dict(state["averaged"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise DataError(f"{path}: the training state does not fit the run's model and optimiser "
                            f"({str(err).splitlines()[0][:200]})") from None
        epoch = int(state["epoch"])
        history = self.read_history()
        if len(history) < epoch:
            raise DataError(f"{self.file('history.csv')}: holds {len(history)} epochs but state.pt says {epoch} "
                            "were finished")
        best = {"epoch": int(state["best_epoch"]), "val_accuracy": float(state["best_val_accuracy"])}
        return Checkpoint(epoch, history[:epoch], best)

    def load_state(self) -> dict:
        path = self.file("state.pt")
        if not path.is_file():
            raise DataError(f"{path}: missing; nothing to resume (train without --resume to start)")
        try:
            # Tensors, numbers and strings only: never unpickle arbitrary objects.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for corrupt or hostile files
            # Only the first line: torch goes on to suggest weights_only=False, unsafe advice here.
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise DataError(f"{path}: cannot read training state ({type(err).__name__}: {reason[:200]}); "
                            "it is not a state.pt written by sppnet, or it is damaged") from None
        missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise DataError(f"{path}: not a training state written by sppnet (missing {', '.join(missing)})")
        if not isinstance(state["model"], dict) or not isinstance(state["optimizer"], dict):
            raise DataError(f"{path}: not a training state written by sppnet ('model' and 'optimizer' must be "
                            "state dicts)")
        for key in ("epoch", "best_epoch"):
            if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
                raise DataError(f"{path}: {key!r} must be an epoch number, got {state[key]!r}")
        return state


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
