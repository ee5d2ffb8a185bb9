"""Training: the epoch loop, the learning-rate schedule and the optimiser.

``train(TrainConfig(...))`` decodes the data once (:func:`sppnet.data.build_store`), builds the
model from the configuration's model spec, and runs ``train_one_epoch`` and a validation pass
per epoch, writing the run folder and its checkpoints through :mod:`sppnet.runs` as it goes. The
loop does not know about image sizes: the size policy hands it batches.

Reproducibility: every random draw of epoch ``e`` (shuffle, augmentation, dropout) comes from
generators seeded with ``(seed, e)``, so the same seed gives the same numbers on the CPU, and a
resumed run continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.optim import swa_utils

from .. import config as config_module
from .. import data as data_mod
from .. import calibration, runtime
from .._deprecated import moved
from ..augment import Augment, AugmentParams
from ..config import DEFAULT_EPOCHS, TrainConfig
from ..distributed import DistContext, all_reduce_sum, gather_predictions, shared_store
from ..distributed import init as dist_init
from ..distributed import shutdown as dist_shutdown
from ..errors import DataError
from ..evaluate import calibrate_run, summarize_predictions
from ..inference import predict_batches, to_device_batch
from ..models import count_parameters, load_pretrained
from ..runs import Checkpoint, RunConfig, RunFolder
from ..sizing import SizePolicy, epoch_generator
from .callbacks import Callback, ConsoleReporter, Reporter, TensorBoard, format_epoch_line
from .checks import check_batch_memory, check_finite, check_out_path
from .optim import ema_update, learning_rate, make_optimizer

log = logging.getLogger(__name__)

#: Unreadable files named one a line before training; the rest are counted (metrics.json has all).
MAX_LISTED = 20

__all__ = ["train", "train_one_epoch", "learning_rate", "make_optimizer", "ema_update", "Reporter", "format_epoch_line"]


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches,
    device: torch.device,
    augment: Augment | None,
    generator: torch.Generator,
    on_step=None,
    ctx: DistContext | None = None,
    lr_at=None,
    label_smoothing: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    after_step=None,
) -> tuple[float, float, int]:
    """One pass over the training batches.

    The loss of each step is the mean over the global batch: under DistributedDataParallel
    (which averages gradients over ranks) each rank scales its sum by world_size / global batch,
    so uneven shares still give exactly the single-process gradient. Augmentation parameters are
    drawn for the whole global batch and each rank applies its share, as one process would.

    ``lr_at(step)`` (step counted from 0 in this epoch), when given, sets the learning rate of
    every parameter group before each step. ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the
    forward pass under autocast; weights, optimizer and loss stay float32. ``after_step()``, when
    given, is called after each optimiser step (to update a moving average of the weights).

    Returns:
        Mean loss, accuracy and the number of images seen (over all ranks).
    """
    ctx = ctx or DistContext()
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for step, batch in enumerate(batches, start=1):
        images, sizes, labels = to_device_batch(batch, device)
        global_n = batch.global_size or len(labels)
        if augment is not None:
            params = augment.draw(global_n, generator)
            if ctx.enabled:
                share = slice(ctx.rank, None, ctx.world_size)
                params = AugmentParams(params.flip[share], params.angle[share], params.zoom[share])
            images = augment.apply(images, params, sizes)
        if lr_at is not None:
            lr = lr_at(step - 1)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images, sizes)
        logits = logits.float()
        summed = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)
        loss = summed * (ctx.world_size / global_n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        n = len(labels)
        seen += n
        loss_sum += summed.detach().double()
        correct += (logits.detach().argmax(1) == labels).sum()
        if on_step is not None:
            on_step(step, float(loss_sum) / seen, int(correct) / seen)
    total_loss, total_correct, total_seen = all_reduce_sum(ctx, float(loss_sum), float(correct), float(seen))
    if total_seen == 0:
        return float("nan"), float("nan"), 0
    return total_loss / total_seen, total_correct / total_seen, int(total_seen)


@dataclass
class _Data:
    """What training needs from the data: the stores of both subsets and what was skipped."""

    root: Path
    class_names: list[str]
    train_store: data_mod.ImageStore
    val_store: data_mod.ImageStore
    failures: list[tuple[str, str]]
    calibration_store: data_mod.ImageStore | None = None


def _prepare(config: TrainConfig, policy: SizePolicy, reporter: Reporter, ctx: DistContext, run: RunFolder,
             store_dir: str | None) -> _Data:
    """Locates, scans and splits the data, and decodes both subsets once (per machine)."""
    root = data_mod.locate(config.data)
    val_root = data_mod.locate(config.val) if config.val is not None else None
    sets = data_mod.run_sets(root, val_root, config.val_split, config.data_seed, config.holdout)
    dataset, train_set, val_set = sets.source, sets.train, sets.val
    if len(dataset.class_names) < 2:
        raise DataError(f"{root}: one class folder ({dataset.class_names[0]}); a classifier needs at least two")
    empty = [name for name, count in dataset.class_counts().items() if count == 0]
    if len(dataset.class_names) - len(empty) < 2:
        raise DataError(f"{root}: fewer than two classes with images (empty: {', '.join(empty)}); a classifier "
                        "needs at least two")
    if empty:
        reporter.message(f"Warning: class folder(s) with no images: {', '.join(empty)}; the model will never "
                         "predict them (remove the folders, or add images)")
    if sets.missing:
        reporter.message(f"Note: no validation image of class(es) {', '.join(sets.missing)}")
    cal_set = None
    if config.calibrate:
        fitting, cal_set = data_mod.calibration_split(train_set, config.calibrate, config.data_seed)
        if config.limit:
            cal_set = cal_set.subset(range(min(config.limit, len(cal_set))))
        why = calibration.too_few_to_calibrate(
            {name: n for name, n in cal_set.class_counts().items() if name not in empty})
        if why:
            reporter.message(f"Warning: --calibrate {config.calibrate} would hold out {why}: too few to fit a "
                             "temperature that can be trusted; calibration skipped, those images train")
            cal_set = None
        else:
            train_set = fitting
    if config.limit:
        train_set = train_set.subset(range(min(config.limit, len(train_set))))
        val_set = val_set.subset(range(min(config.limit, len(val_set))))
    if len(train_set) == 0:
        raise DataError(f"{root}: no training images after the split")
    if len(val_set) == 0:
        raise DataError(f"{root}: no validation images (--val-split {config.val_split} of {len(sets.source)} files"
                        f"{', --val ' + str(config.val) if config.val else ''}): training validates every epoch; "
                        "raise --val-split or give --val DIR")
    val_view = policy.test_view()
    subsets = [(train_set, policy.store_size), (val_set, val_view.store_size)]
    if cal_set is not None:
        subsets.append((cal_set, val_view.store_size))
    folder, why = data_mod.store_folder(subsets, run.path, store_dir)
    if why:
        reporter.message(f"{why}; --store-dir picks another folder")

    def decode(subset, view):
        def build():
            store, kept, failures = data_mod.build_store(subset, view.store_size, view.fixed_store_size, folder,
                                                         keep_file=True)
            return store, len(kept), failures

        return build

    start = time.perf_counter()
    train_store, n_train, failed = shared_store(ctx, decode(train_set, policy), "train")
    val_store, n_val, failed_val = shared_store(ctx, decode(val_set, val_view), "val")
    failures = failed + failed_val
    cal_store, n_cal = None, 0
    if cal_set is not None:
        cal_store, n_cal, failed_cal = shared_store(ctx, decode(cal_set, val_view), "calibration")
        failures += failed_cal
    reporter.message(
        f"{sets.found}; using "
        f"{n_train} for training"
        f"{f', {n_cal} (held out from the training split) to calibrate' if cal_set is not None else ''}"
        f" and {n_val} for validation"
        f"{' (held out from the training split)' if config.holdout else ''} "
        f"(decoded in {time.perf_counter() - start:.1f}s)"
    )
    if n_train == 0:  # one line, however many files failed
        example = f"; e.g. {failures[0][1]}" if failures else ""
        raise DataError(f"{root}: none of the training images could be decoded ({len(failures)} unreadable "
                        f"file(s){example})")
    if failures:
        reporter.message(f"Skipped {len(failures)} unreadable file(s):")
        for _, reason in failures[:MAX_LISTED]:
            reporter.message(f"  {reason}")
        if len(failures) > MAX_LISTED:
            reporter.message(f"  ... and {len(failures) - MAX_LISTED} more (metrics.json lists every one)")
    return _Data(root, dataset.class_names, train_store, val_store, failures, cal_store)


def train(config: TrainConfig, resume: bool = False, reporter: Reporter | None = None, backend: str | None = None,
          store_dir: str | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """Trains a model and writes its run folder.

    Args:
        config: the run's configuration (not changed). With ``resume``, the configuration stored
            in the run folder is used instead, except ``device`` and ``epochs`` (if not None, it
            may extend the run).
        resume: continue the run in ``config.out`` from its last finished epoch.
        reporter: receives progress; default :class:`sppnet.train.callbacks.ConsoleReporter` (the Keras
            line of each epoch on stdout, a bar while it runs on a terminal).
        callbacks: each called with a dict of numbers after every epoch (``event`` "epoch":
            epoch, loss, accuracy, val_loss, val_accuracy, lr, seconds, images_per_second,
            best_epoch, best_val_accuracy, run) and at the end (``event`` "end"); see
            :mod:`sppnet.train.callbacks`. ``config.tensorboard`` adds :class:`sppnet.train.callbacks.TensorBoard`.
        backend: distributed backend under torchrun (gloo, nccl); default from the device.
        store_dir: decode the images into memory-mapped files in this folder instead of memory
            (for datasets larger than memory; each file is unlinked once mapped, so nothing stays
            on disk). Default: memory, or the run folder when the decoded images would take more
            than ``data.MEMORY_SHARE`` of the memory available.

    Under ``torchrun`` (see :mod:`sppnet.distributed`) every rank calls this; ``batch_size`` is
    the global batch, and rank 0 alone reports and writes the run folder.

    Returns:
        The run's metrics (also in metrics.json).

    Raises:
        ConfigError, DataError: bad options or data, before anything is written.
        KeyboardInterrupt: re-raised after the run folder is left consistent (the last finished
            epoch is saved; ``--resume`` continues from there).
    """
    reporter = reporter or ConsoleReporter()
    check_out_path(config)
    run = RunFolder(config.out)
    run.check_out(resume)
    stored = None
    if resume:
        stored = run.run_config()
        epochs = config.epochs if config.epochs is not None else stored.train.epochs
        config = dataclasses.replace(stored.train, out=str(run.path), device=config.device, epochs=epochs)
    elif config.epochs is None:
        config = dataclasses.replace(config, epochs=DEFAULT_EPOCHS)
    config.validate()
    check_batch_memory(config)
    data_mod.check_store_dir(store_dir)
    if Path(config.data).expanduser().exists():
        # Stored absolute, so evaluate and --resume work from any folder.
        config = dataclasses.replace(config, data=str(Path(config.data).expanduser().resolve()))
    device = runtime.resolve_device(config.device)
    run.check_writable()
    runtime.configure()
    callbacks = list(callbacks)
    if config.tensorboard:
        callbacks.append(TensorBoard(run.path / "tensorboard"))  # checks that tensorboard is installed
    ctx, device = dist_init(device, backend)
    try:
        with run.lock() if ctx.is_main else contextlib.nullcontext():  # one training writes a run folder
            return _train(config, resume, reporter if ctx.is_main else _Silent(), ctx, device, run, stored,
                          store_dir, callbacks if ctx.is_main else [])
    finally:
        dist_shutdown(ctx)


class _Silent(Reporter):
    def message(self, text: str) -> None:
        pass

    def epoch(self, line: str) -> None:
        pass


def _train(config: TrainConfig, resume: bool, reporter: Reporter, ctx: DistContext, device: torch.device,
           run: RunFolder, stored: RunConfig | None, store_dir: str | None, callbacks: list[Callback]) -> dict:
    ctx.barrier()  # every rank has checked --out before rank 0 writes anything
    policy = config.size_policy()
    data = _prepare(config, policy, reporter, ctx, run, store_dir)
    if resume and list(stored.class_names) != data.class_names:
        raise DataError(f"{data.root}: classes {data.class_names} differ from the run's {list(stored.class_names)}")

    torch.manual_seed(config.seed)
    model = config.model_spec(len(data.class_names)).build()
    if config.pretrained and not resume:  # a resumed run's checkpoint holds the weights
        source = model.default_weights() if config.pretrained == "default" else Path(config.pretrained).expanduser()
        reporter.message(load_pretrained(model.features, source).line())
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    augment = Augment(rotation=config.rotation, zoom=config.zoom) if config.augment else None
    averaged = None
    if config.ema:
        averaged = swa_utils.AveragedModel(model, multi_avg_fn=ema_update(config.ema), use_buffers=True)
    checkpoint = run.resume(model, optimizer, averaged) if resume else Checkpoint()
    start_epoch, history, best = checkpoint.epoch, checkpoint.history, checkpoint.best
    if resume and start_epoch == 0:
        # Killed before the first epoch was finished: nothing to continue, start in place.
        reporter.message(f"{run.path}: no finished epoch to resume; starting from epoch 1")
    elif start_epoch >= config.epochs:
        reporter.message(f"{run.path}: already trained for {start_epoch} epochs (asked for {config.epochs})")
    if ctx.is_main:
        run.write_run_config(RunConfig.create(config, model.config, data.class_names, data.root, model))
    amp_dtype = runtime.autocast_dtype(config.precision, device)
    reporter.message(
        f"Training {config.model} ({count_parameters(model):,} parameters) on {device}"
        f"{' in bf16 autocast' if amp_dtype is not None else ''}, "
        f"{policy.describe()}, {len(data.train_store)} images, batch {config.batch_size}"
        f"{f' over {ctx.world_size} processes' if ctx.enabled else ''}, epochs "
        f"{start_epoch + 1}..{config.epochs} -> {run.path}"
    )

    val_view = policy.test_view()
    steps = policy.num_batches(data.train_store, config.batch_size, ctx.world_size)
    train_rates: list[float] = []  # training images/s of each epoch this process ran
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(config.seed * 1_000_003 + epoch + 1)  # dropout draws of this epoch
            generator = epoch_generator(config.seed + 104_729, epoch)  # augmentation draws
            batches = policy.batches(data.train_store, config.batch_size, epoch=epoch, seed=config.seed,
                                     rank=ctx.rank, world_size=ctx.world_size)

            def on_step(step, loss, acc, _epoch=epoch, _t0=t0):
                reporter.step(_epoch + 1, config.epochs, step, steps, loss, acc, time.perf_counter() - _t0)

            def lr_at(step, _epoch=epoch):
                return learning_rate(config, _epoch * steps + step, config.epochs * steps)

            loss, acc, _ = train_one_epoch(
                net, optimizer, batches, device, augment, generator,
                on_step if reporter.wants_steps else None, ctx,
                lr_at=lr_at if config.schedule != "constant" or config.warmup_epochs else None,
                label_smoothing=config.label_smoothing, amp_dtype=amp_dtype,
                after_step=(lambda: averaged.update_parameters(model)) if averaged is not None else None,
            )
            train_seconds = time.perf_counter() - t0
            if train_seconds > 0:
                train_rates.append(len(data.train_store) / train_seconds)
            val_batches = val_view.batches(data.val_store, config.batch_size, shuffle=False, rank=ctx.rank,
                                           world_size=ctx.world_size, drop_incomplete=False)
            validated = model if averaged is None else averaged.module
            probs, labels, indices = gather_predictions(
                ctx, *predict_batches(validated, val_batches, device, flip=config.flip_test, amp_dtype=amp_dtype))
            evaluation = summarize_predictions(probs, labels, data.class_names)
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch + 1, "loss": loss, "accuracy": acc,
                "val_loss": evaluation.loss, "val_accuracy": evaluation.accuracy, "seconds": seconds,
            }
            check_finite(epoch + 1, row, model, run, history)
            history.append(row)
            if ctx.is_main:
                validation = {k: v for k, v in evaluation.to_dict().items() if k not in ("confusion", "reliability")}
                run.save_epoch(model, optimizer, history, validation, best, train_rates, data.failures, averaged)
            reporter.epoch(format_epoch_line(epoch + 1, config.epochs, steps, seconds, row))
            top = max(history, key=lambda r: r["val_accuracy"] if r["val_accuracy"] == r["val_accuracy"] else -1)
            group = optimizer.param_groups[0]
            event = {"event": "epoch", **row, "epochs": config.epochs, "lr": group["lr"] / group.get("lr_scale", 1.0),
                     "images_per_second": train_rates[-1] if train_rates else 0.0,
                     "best_epoch": top["epoch"], "best_val_accuracy": top["val_accuracy"], "run": str(run.path)}
            for callback in callbacks:
                callback(event)
    except KeyboardInterrupt:
        done = history[-1]["epoch"] if history else start_epoch
        if done and run.file("state.pt").is_file():
            reporter.message(f"Interrupted: {run.path} holds {done} finished epoch(s); continue with --resume")
        else:
            reporter.message(f"Interrupted before the first epoch finished: {run.path} holds no checkpoint "
                             "(no state.pt); --resume starts it again from epoch 1")
        raise
    ctx.barrier()
    if data.calibration_store is not None and ctx.is_main and history:
        calibrated = calibrate_run(run, data.calibration_store, data.val_store, policy.test_view(),
                                   config.flip_test, config.batch_size, device, amp_dtype)
        last, validation = calibrated["last"], run.read_json("metrics.json")["validation"]
        reporter.message(
            f"Calibrated on {len(data.calibration_store)} held-out training images: temperature "
            f"{last['temperature']:.3f} (last weights); validation ECE {validation['ece']:.4f} -> "
            f"{last['val_ece']:.4f} (a calibrated model would show {last['val_ece_floor']:.4f}; p = "
            f"{last['val_ece_p']:.2f}), loss {validation['loss']:.4f} -> {last['val_loss']:.4f}")
    ctx.barrier()
    metrics = run.read_json("metrics.json") if ctx.is_main and run.file("metrics.json").is_file() else {}
    for callback in callbacks:
        callback({"event": "end", "epochs": len(history), "best": metrics.get("best"), "metrics": metrics,
                  "run": str(run.path)})
    return metrics


def __getattr__(name: str):
    # Names that moved in the redesign keep working for a while (sppnet._deprecated lists them).
    if name in ("model_from_config", "eval_policy"):
        warnings.warn(f"sppnet.train.{name} is replaced by TrainConfig.model_spec(n).build() and "
                      "SizePolicy.test_view()", DeprecationWarning, stacklevel=2)
        return _model_from_config if name == "model_from_config" else (lambda policy: policy.test_view())
    return moved(__name__, name, {"sppnet.config": config_module, "sppnet.runtime": runtime, "sppnet.data": data_mod})


def _model_from_config(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    return config.model_spec(num_classes).build()
