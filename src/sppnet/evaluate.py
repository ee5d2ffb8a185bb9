"""Metrics: loss and accuracy, per-class precision/recall/F1, confusion matrix, calibration.

:func:`summarize_predictions` turns probabilities and labels into every metric sppnet reports.
Views for testing a trained run (``sppnet evaluate``):

    * fixed size S: each image warped to S x S (the study's view);
    * native S: each image whole at its own aspect ratio, shorter side S (SPP-net's full-image
      view), in shape-grouped padded batches;
    * scales S1,S2,...: the softmax averaged over several fixed sizes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import data as data_mod
from . import inference, runtime
from ._deprecated import moved
from .calibration import (ece_noise, ece_noise_floor, ece_of_bins, expected_calibration_error, fit_temperature,
                          reliability_bins, tempered_probabilities)
from .errors import ConfigError, DataError
from .inference import predict_batches, predict_logits
from .report import plot_confusion, plot_reliability
from .runs import RunFolder
from .sizing import Fixed, Native, SizePolicy

log = logging.getLogger(__name__)

__all__ = [
    "tempered_probabilities", "fit_temperature", "summarize_predictions", "Evaluation", "expected_calibration_error",
    "reliability_bins", "ece_noise_floor", "ece_noise", "evaluate_run", "calibrate_run",
]


@dataclass
class Evaluation:
    """Every metric of one evaluation.

    Attributes:
        loss: mean cross-entropy; accuracy: share right.
        precision, recall, f1, support: per class, in class order.
        confusion: (classes, classes) counts, rows true class, columns predicted.
        ece: expected calibration error (15 bins).
        confidence_right, confidence_wrong: mean top probability on right and wrong answers.
        reliability: the 15 confidence bins of the ECE (:func:`reliability_bins`).
        ece_floor: the ECE a perfectly calibrated model with these confidences would show on this
            many images (:func:`ece_noise_floor`); ece_high: the ECE such a model exceeds one time
            in 20; ece_p: the share of such models that show this ECE or more (below 0.05: more
            miscalibrated than the sample explains) (:func:`ece_noise`).
    """

    class_names: list[str]
    loss: float
    accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]
    ece: float
    confidence_right: float
    confidence_wrong: float
    count: int = 0
    extra: dict = field(default_factory=dict)
    reliability: list[dict] = field(default_factory=list)
    ece_floor: float = float("nan")
    ece_high: float = float("nan")
    ece_p: float = float("nan")

    def ece_text(self, sep: str = " ") -> str:
        """The ECE beside what a perfectly calibrated model would show on as many images (``sep``
        between the two)."""
        return (f"ECE: {self.ece:.4f}{sep}(a calibrated model would show {self.ece_floor:.4f} on {self.count} "
                f"images, over {self.ece_high:.4f} one time in 20; p = {self.ece_p:.2f})")

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "ece": self.ece,
            "ece_floor": self.ece_floor,
            "ece_high": self.ece_high,
            "ece_p": self.ece_p,
            "confidence_right": self.confidence_right,
            "confidence_wrong": self.confidence_wrong,
            "per_class": {
                name: {"precision": p, "recall": r, "f1": f, "support": s}
                for name, p, r, f, s in zip(self.class_names, self.precision, self.recall, self.f1, self.support)
            },
            "confusion": self.confusion,
            "reliability": self.reliability,
            **self.extra,
        }

    def report(self) -> str:
        """A text report: summary line, per-class table and confusion matrix."""
        width = max(12, *(len(n) for n in self.class_names))
        lines = [
            f"{self.count} images - loss: {self.loss:.4f} - accuracy: {self.accuracy:.4f} - "
            f"{self.ece_text()} - "
            f"mean confidence right: {self.confidence_right:.4f}, wrong: {self.confidence_wrong:.4f}",
            "",
            f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}",
        ]
        for name, p, r, f, s in zip(self.class_names, self.precision, self.recall, self.f1, self.support):
            lines.append(f"{data_mod.shown(name):<{width}} {p:>9.4f} {r:>9.4f} {f:>9.4f} {s:>8}")
        lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
        short = [n[:9] for n in self.class_names]
        lines.append(f"{'':<{width}} " + " ".join(f"{n:>9}" for n in short))
        for name, row in zip(self.class_names, self.confusion):
            lines.append(f"{name:<{width}} " + " ".join(f"{v:>9}" for v in row))
        return "\n".join(lines)


def summarize_predictions(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> Evaluation:
    """Computes all metrics from probabilities (N, classes) and true labels (N,)."""
    k = len(class_names)
    n = len(labels)
    if n == 0:
        nan = float("nan")
        return Evaluation(class_names, nan, nan, [nan] * k, [nan] * k, [nan] * k, [0] * k,
                          [[0] * k for _ in range(k)], nan, nan, nan, 0)
    probs = probs.double()
    loss = float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).numpy()
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), predicted.numpy()), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(0)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted_count > 0, tp / predicted_count, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    conf = confidence.numpy()
    bins = reliability_bins(conf, correct.astype(np.float64))
    ece = ece_of_bins(bins)
    noise = ece_noise(conf, ece)
    return Evaluation(
        class_names=list(class_names),
        loss=loss,
        accuracy=float(correct.mean()),
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
        support=support.tolist(),
        confusion=confusion.tolist(),
        ece=ece,
        confidence_right=float(conf[correct].mean()) if correct.any() else float("nan"),
        confidence_wrong=float(conf[~correct].mean()) if (~correct).any() else float("nan"),
        count=n,
        reliability=bins,
        ece_floor=noise.floor,
        ece_high=noise.high,
        ece_p=noise.p_value,
    )


def calibrate_run(run: RunFolder, calibration_store: data_mod.ImageStore, val_store: data_mod.ImageStore,
                  view: SizePolicy, flip: bool, batch_size: int = 32, device: torch.device | str = "cpu",
                  amp_dtype: torch.dtype | None = None) -> dict:
    """Fits the temperature of a run's best and last weights on its calibration hold-out (images
    of the training split it never trained on), in the view and mirror setting it validates
    with; writes ``calibration.json`` and adds the calibrated validation metrics to
    ``metrics.json`` (under ``calibrated``).

    Returns:
        ``{"best": {...}, "last": {...}}``: temperature, val_loss, val_accuracy, val_ece.
    """
    device = torch.device(device)
    class_names = list(run.run_config().class_names)
    entry: dict = {"images": len(calibration_store), "view": view.describe() + (", with mirror images" if flip else "")}
    calibrated: dict = {}
    metrics = run.read_json("metrics.json")
    for weights in ("best", "last"):
        if weights == "last" and metrics["best"]["epoch"] == metrics["epochs"]:
            entry["last"], calibrated["last"] = entry["best"], calibrated["best"]  # the same weights
            continue
        model = run.load_model(weights, device, calibrated=False)

        def logits_of(store):
            batches = view.batches(store, batch_size, shuffle=False, drop_incomplete=False)
            return predict_logits(model, batches, device, flip=flip, amp_dtype=amp_dtype)

        logits, labels, _ = logits_of(calibration_store)
        fitted_t = fit_temperature(logits, labels)
        fitted = {}
        for name, t in (("before", 1.0), ("after", fitted_t)):
            evaluation = summarize_predictions(tempered_probabilities(logits, t).float(), labels, class_names)
            fitted.update({f"ece_{name}": evaluation.ece, f"loss_{name}": evaluation.loss})
        # A temperature that does not lower the held-out loss is not kept: calibration never hurts.
        kept = fitted["loss_after"] < fitted["loss_before"]
        temperature = fitted_t if kept else 1.0
        entry[weights] = {"temperature": temperature, "fitted_temperature": fitted_t, "kept": kept, **fitted}
        val_logits, val_labels, _ = logits_of(val_store)
        evaluation = summarize_predictions(tempered_probabilities(val_logits, temperature).float(), val_labels, class_names)
        calibrated[weights] = {"temperature": temperature, "val_loss": evaluation.loss,
                               "val_accuracy": evaluation.accuracy, "val_ece": evaluation.ece,
                               "val_ece_floor": evaluation.ece_floor, "val_ece_high": evaluation.ece_high,
                               "val_ece_p": evaluation.ece_p}
    run.write_calibration(entry)
    metrics["calibrated"] = calibrated
    run.write_json("metrics.json", metrics)
    return calibrated


def _same_source(data: str, source: str) -> bool:
    if data == source:
        return True
    a, b = Path(data).expanduser(), Path(source).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _test_set(config, data: str | None) -> tuple[data_mod.Dataset, str]:
    """The images ``evaluate_run`` scores and a phrase that says which: the run's own validation
    set when ``data`` is None or the run's training data, else every image of ``data`` (its
    ``test/``, else ``val/``, in a train/val/test layout), class folders mapped by name."""
    if data is None or _same_source(str(data), config.data.source):
        val_source = config.train.val
        sets = data_mod.run_sets(data_mod.locate(config.data.source),
                                 data_mod.locate(val_source) if val_source else None,
                                 config.data.val_split, config.data.seed, config.data.holdout)
        if sets.source.class_names != list(config.class_names):
            raise DataError(f"{config.data.source}: classes {sets.source.class_names} differ from the run's "
                            f"{list(config.class_names)}")
        return sets.val, "the run's validation set" + (f" ({val_source})" if val_source else "")
    root = data_mod.locate(data)
    layout = data_mod.split_layout(root)
    folder = (layout.get("test") or layout.get("val") or layout["train"]) if layout else root
    return data_mod.scan(folder, config.class_names), f"every image of {folder}"


def evaluate_run(
    run_path,
    data: str | None = None,
    size: int | None = None,
    native: int | None = None,
    scales: Sequence[int] | None = None,
    weights: str = "best",
    batch_size: int = 32,
    device: str = "auto",
    limit: int | None = None,
    flip: bool | None = None,
    confusion_png: str | os.PathLike | None = None,
    reliability_png: str | os.PathLike | None = None,
    calibrated: bool = True,
) -> Evaluation:
    """Evaluates a run on a validation split under one view.

    Args:
        run_path: the run folder.
        data: a folder or archive of class subfolders to score every image of (its ``test/``,
            else ``val/``, when it holds a train/val/test layout), mapped to the run's classes by
            name (an unknown class folder is an error). Default, or the run's own training data:
            the run's validation set (its ``val`` folder, or its val_split, seed and holdout: a run
            tuned with ``holdout`` is evaluated on its held-out training files).
        size: warp images to size x size. native: whole images, shorter side ``native``.
        scales: average the softmax over these fixed sizes. At most one of size/native/scales;
            default: the run's own validation view.
        weights: ``best`` or ``last``.
        batch_size: images per batch (default 32).
        device: ``auto`` (default), ``cpu`` or ``cuda``.
        limit: only the first N validation images.
        flip: average each image's softmax with its mirror image's; default the run's own
            validation setting (``flip_test``).
        confusion_png: also draw the confusion matrix into this PNG file.
        reliability_png: also draw the reliability diagram (accuracy against confidence) into
            this PNG file.
        calibrated: use the run's fitted temperature, when it has one (``calibration.json``).

    Raises:
        ConfigError, DataError: bad options, missing run, mismatched classes.
    """
    given = [n for n, v in (("--size", size), ("--native", native), ("--scales", scales)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give only one of --size, --native, --scales (got {' and '.join(given)})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    run = RunFolder(run_path)
    config = run.run_config()
    runtime.configure()
    device_t = runtime.resolve_device(device)
    model = run.load_model(weights, device_t, config=config, calibrated=calibrated)
    temperature = run.temperature(weights) if calibrated else None
    flatten_size = config.model.get("input_size")
    if scales is not None:
        views = [Fixed(s) for s in scales]
        if not views:
            raise ConfigError("--scales must name at least one size, e.g. 180,224,256")
    elif size is not None:
        views = [Fixed(size)]
    elif native is not None:
        views = [Native(native)]
    else:
        views = [config.test_view]
    if flatten_size and any(v.to_config() != Fixed(flatten_size).to_config() for v in views):
        raise ConfigError(f"this run's flatten model takes {flatten_size}x{flatten_size} images only; use --size {flatten_size}")
    small = [v.describe() for v in views if v.smallest_size < config.stride]
    if small:
        raise ConfigError(f"{', '.join(small)}: smaller than the network's stride of {config.stride} px")

    val, scored = _test_set(config, data)
    if limit:
        val = val.subset(range(min(limit, len(val))))
    if len(val) == 0:
        raise DataError(f"no image to score in {scored}")
    if flip is None:
        flip = config.train.flip_test
    total = None
    for view in views:
        store = None  # the previous view's images go before the next view's are decoded
        folder, why = data_mod.store_folder([(val, view.store_size)], run.path)
        if why:
            log.warning("%s", why)
        store, kept, failures = data_mod.build_store(val, view.store_size, view.fixed_store_size, folder)
        probs, labels, indices = predict_batches(model, view.batches(store, batch_size, shuffle=False), device_t, flip)
        order = torch.argsort(indices)  # native batches are shape-sorted: restore dataset order
        probs, labels = probs[order], labels[order]
        total = probs if total is None else total + probs
    evaluation = summarize_predictions(total / len(views), labels, list(config.class_names))
    evaluation.extra = {
        "data": scored,
        "view": " + ".join(v.describe() for v in views) + (", with mirror images" if flip else ""),
        "weights": weights,
        "temperature": temperature,
        "skipped_files": [reason for _, reason in failures],
    }
    if confusion_png is not None:
        plot_confusion(evaluation.confusion, evaluation.class_names, Path(confusion_png),
                       f"{run_path}: {evaluation.extra['view']}")
    if reliability_png is not None:
        calibration = "uncalibrated" if temperature is None else f"temperature {temperature:.3f}"
        plot_reliability(evaluation.reliability, Path(reliability_png),
                         f"{run_path}: {evaluation.extra['view']}, {calibration}\n"
                         + evaluation.ece_text(sep="\n"))
    return evaluation


def __getattr__(name: str):
    # The batch helpers moved to sppnet.inference, which train, evaluate and predict all use.
    return moved(__name__, name, {"sppnet.inference": inference})
