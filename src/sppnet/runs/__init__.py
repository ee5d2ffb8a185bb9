"""The run folder: everything one training run writes, written atomically.

Layout::

    RUN/
      config.json         how the run was made: model, classes, size policy, data, versions
      best.safetensors    weights of the epoch with the best validation accuracy
      last.safetensors    weights of the last finished epoch
      history.csv         one row per epoch: epoch, loss, accuracy, val_loss, val_accuracy, seconds
      curves.png          training and validation accuracy and loss
      metrics.json        summary of the run (final and best epoch, timings, skipped files)
      state.pt            optimiser, epoch and RNG states for --resume (tensors only; with the
                          moving average of the weights when the run keeps one)
      calibration.json    the temperature fitted for the best and last weights (runs trained
                          with --calibrate); applied by load_model

Every file is written through :mod:`sppnet.files` (a temporary name beside it, then a rename),
so a run killed at any moment leaves each file either complete and old or complete and new.

``config.json`` is read once, into a typed :class:`RunConfig` (versioned by ``schema``; folders
written by sppnet 0.x, which have no ``schema``, read as schema 0), and every later question
(classes, model, input size, stride, test view, split) is asked of it. Checkpoints (the epoch's
weights, history, metrics and ``state.pt``) are written by :meth:`RunFolder.save_epoch` and read
back for ``--resume`` by :meth:`RunFolder.load_state`.

Two modules: :mod:`.record` (what is recorded: :class:`RunConfig`, :class:`SplitRecord`,
:class:`Checkpoint`) and :mod:`.folder` (the folder: :class:`RunFolder`).
"""

from ..files import atomic_write_bytes  # noqa: F401 (re-exported, as before)
from .folder import RunFolder
from .record import HISTORY_FIELDS, SCHEMA_VERSION, STATE_KEYS, Checkpoint, RunConfig, SplitRecord

__all__ = ["RunFolder", "RunConfig", "Checkpoint", "SplitRecord", "HISTORY_FIELDS", "SCHEMA_VERSION", "STATE_KEYS",
           "atomic_write_bytes"]
