"""Training: the configuration, the epoch loop, checkpoints and resuming.

``train(TrainConfig(...))`` decodes the data once into memory, builds the model, and runs
``train_one_epoch`` and a validation pass per epoch, writing the run folder as it goes (see
:mod:`sppnet.runs`). The loop does not know about image sizes: the size policy hands it batches.

Reproducibility: every random draw of epoch ``e`` (shuffle, augmentation, dropout) comes from
generators seeded with ``(seed, e)``, so the same seed gives the same numbers on the CPU, and a
resumed run continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import data as data_mod
from ._perf import bound_primitive_cache, keep_freed_memory
from ._version import __version__
from .augment import Augment, AugmentParams
from .distributed import DistContext, all_reduce_sum, gather_predictions, shared_store
from .distributed import init as dist_init
from .distributed import shutdown as dist_shutdown
from .errors import ConfigError, DataError
from .evaluate import predict_batches, summarize_predictions, to_device_batch
from .models import build_model, count_parameters
from .runs import RunFolder
from .sizing import Fixed, Native, SizePolicy, epoch_generator, policy_from_config

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "PRESETS", "train", "train_one_epoch", "resolve_device", "eval_policy", "model_from_config", "Reporter", "format_epoch_line"]

DEFAULT_EPOCHS = 20

#: Named recipes: the TrainConfig fields each sets (options given explicitly override them).
#: ``study`` is the study's exact setup and the default. ``study-plus`` keeps the study's network
#: and 20 epochs and changes only the training recipe and the test view; ``best`` may change the
#: network within the family and trains 50 epochs (about 26 minutes on a 2-core CPU). How they
#: were chosen (on a part of the training split only) and what each ingredient brings: README,
#: "Accuracy".
PRESETS: dict[str, dict[str, Any]] = {
    "study": {},
    "study-plus": {
        "policy": {"kind": "native", "size": 180},
        "schedule": "cosine",
        "warmup_epochs": 1,
        "lr": 2e-3,
        "flip_test": True,
    },
    "best": {
        "policy": {"kind": "native", "size": 128},
        "widths": (16, 32, 64, 128),
        "batch_norm": True,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "lr": 2e-3,
        "weight_decay": 0.05,
        "flip_test": True,
        "epochs": 50,
    },
}

SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name: None for fp32."""
    return torch.bfloat16 if precision == "bf16" else None


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the run folder's config.json.

    The defaults are the study's best setup: the ``spp`` model with levels 1, 2, 4 and max
    pooling, images warped to 180 x 180, augmentation and dropout 0.2, 20 epochs of Adam at 1e-3
    with batches of 32, on the Keras-compatible 80/20 split with seed 123.
    """

    data: str = "flowers"  # folder, archive or known dataset name
    out: str = "runs/spp"  # the run folder
    model: str = "spp"  # spp | flatten | gap
    levels: tuple[int, ...] = (1, 2, 4)  # SPP pyramid (spp only)
    pool: str = "max"  # SPP pooling: max | avg (spp only)
    policy: dict = field(default_factory=lambda: Fixed(180).to_config())  # see sizing.parse_policy
    augment: bool = True  # random flip, rotation 0.1 turn, zoom 0.1 (Keras semantics)
    dropout: float = 0.2
    epochs: int | None = DEFAULT_EPOCHS  # None when resuming: the run's own count
    batch_size: int = 32  # the global batch size
    lr: float = 1e-3  # Adam learning rate
    val_split: float = 0.2
    seed: int = 123  # split, initialisation, shuffling, augmentation and dropout
    device: str = "auto"  # auto (CUDA if present) | cpu | cuda
    limit: int | None = None  # use only the first N images of each subset (quick tries)
    preset: str = "study"
    # Beyond the study (its values are the defaults):
    rotation: float = 0.1  # augmentation: largest rotation, in turns
    zoom: float = 0.1  # augmentation: largest relative zoom
    schedule: str = "constant"  # learning rate: constant | cosine (to 0 at the last step)
    warmup_epochs: int = 0  # linear warm-up of the learning rate over the first epochs
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay; 0 is plain Adam
    label_smoothing: float = 0.0
    widths: tuple[int, ...] = (16, 32, 64)  # conv block widths
    hidden: int = 128  # dense layer units
    batch_norm: bool = False
    holdout: float = 0.0  # > 0: validate on this share of the *training* split (for tuning)
    flip_test: bool = False  # validation averages each image's and its mirror image's softmax
    split_seed: int | None = None  # the split's seed when it differs from ``seed``
    precision: str = "fp32"  # fp32 | bf16 (autocast: bfloat16 matmuls and convolutions)

    @property
    def data_seed(self) -> int:
        """The seed of the train/validation split: ``split_seed``, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed

    @classmethod
    def from_preset(cls, preset: str = "study", **overrides) -> "TrainConfig":
        """A configuration from a named preset (see ``PRESETS``), with fields overridden."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown --preset {preset!r}: choose one of {', '.join(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        values = {**PRESETS[preset], **overrides, "preset": preset}
        return cls.from_dict(values)

    def validate(self) -> None:
        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")

        def number(name: str, low: float, high: float, high_open: bool = True) -> None:
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            ok = ok and low <= value and (value < high if high_open else value <= high)
            if not ok:
                bracket = ")" if high_open else "]"
                raise ConfigError(f"--{name.replace('_', '-')} must be a number in [{low}, {high}{bracket}, got {value!r}")

        for name in ("epochs", "batch_size", "hidden"):
            integer(name, 1)
        for name, minimum in (("limit", 1), ("split_seed", 0)):
            if getattr(self, name) is not None:
                integer(name, minimum)
        integer("seed", 0)
        integer("warmup_epochs", 0)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r}")
        number("rotation", 0, 0.5, high_open=False)
        number("zoom", 0, 1)
        number("weight_decay", 0, 1)
        number("label_smoothing", 0, 1)
        number("holdout", 0, 1)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("augment", "batch_norm", "flip_test"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown --preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        policy = policy_from_config(self.policy)
        if self.model == "flatten" and not isinstance(policy, Fixed):
            raise ConfigError(
                f"--model flatten needs one fixed input size (--size), not {policy.describe()}; "
                "use --model spp or gap for other size policies"
            )
        model_from_config(self, num_classes=2)  # raises for bad model arguments

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["levels"] = list(self.levels)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for name in ("levels", "widths"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def eval_policy(policy: SizePolicy) -> SizePolicy:
    """The validation view of a training policy: native stays native, else the first/lower size."""
    if isinstance(policy, (Fixed, Native)):
        return policy
    cfg = policy.to_config()
    size = cfg["sizes"][0] if cfg["kind"] == "multi" else cfg["low"]
    return Fixed(size)


def model_from_config(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """Builds the run's model (weights freshly initialised)."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "dropout": config.dropout, "widths": tuple(config.widths),
                              "hidden": config.hidden, "batch_norm": config.batch_norm}
    if config.model == "spp":
        kwargs.update(levels=tuple(config.levels), pool=config.pool)
    elif config.model == "flatten":
        kwargs.update(input_size=policy_from_config(config.policy).to_config().get("size", 180))
    return build_model(config.model, **kwargs)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate at global step ``step`` (from 0) of ``total_steps``.

    Linear warm-up over ``warmup_epochs`` (as a share of the steps), then ``constant`` or
    ``cosine`` decay towards 0 at the last step. A function of the step alone, so a resumed run
    follows the same schedule.
    """
    warmup = min(total_steps, round(total_steps * config.warmup_epochs / config.epochs)) if config.epochs else 0
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "cosine":
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, the study's; AdamW when ``weight_decay`` > 0, with no decay on biases and norms."""
    if config.weight_decay == 0:
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


class Reporter:
    """Receives progress from :func:`train`. The default logs one line per epoch."""

    wants_steps = False

    def message(self, text: str) -> None:
        log.info(text)

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float, accuracy: float, elapsed: float) -> None:
        pass

    def epoch(self, line: str) -> None:
        log.info(line)


def format_epoch_line(epoch: int, epochs: int, steps: int, seconds: float, row: dict) -> str:
    """Keras' epoch line: ``Epoch 3/20 - 92/92 - 21s - 228ms/step - loss: ... - val_accuracy: ...``."""
    parts = [f"Epoch {epoch}/{epochs}", f"{steps}/{steps}", f"{seconds:.0f}s", f"{1000 * seconds / max(steps, 1):.0f}ms/step"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in row and not math.isnan(row[key]):
            parts.append(f"{key}: {row[key]:.4f}")
    return " - ".join(parts)


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
) -> tuple[float, float, int]:
    """One pass over the training batches.

    The loss of each step is the mean over the global batch: under DistributedDataParallel
    (which averages gradients over ranks) each rank scales its sum by world_size / global batch,
    so uneven shares still give exactly the single-process gradient. Augmentation parameters are
    drawn for the whole global batch and each rank applies its share, as one process would.

    ``lr_at(step)`` (step counted from 0 in this epoch), when given, sets the learning rate of
    every parameter group before each step. ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the
    forward pass under autocast; weights, optimizer and loss stay float32.

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
                group["lr"] = lr
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images, sizes)
        logits = logits.float()
        summed = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)
        loss = summed * (ctx.world_size / global_n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
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


def check_store_dir(store_dir: str | None) -> None:
    """Creates ``store_dir`` if needed and checks that files can be written there.

    Raises:
        ConfigError: it is not a writable folder.
    """
    if store_dir is None:
        return
    folder = Path(store_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--store-dir {store_dir}: not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(f"--store-dir {store_dir}: cannot write there ({err.strerror or err})") from None


def _prepare(config: TrainConfig, reporter: Reporter, ctx: DistContext, run: RunFolder, store_dir: str | None):
    root = data_mod.locate(config.data)
    dataset = data_mod.scan(root)
    train_set, val_set = data_mod.run_split(dataset, config.val_split, config.data_seed, config.holdout)
    if config.limit:
        train_set = train_set.subset(range(min(config.limit, len(train_set))))
        val_set = val_set.subset(range(min(config.limit, len(val_set))))
    if len(train_set) == 0:
        raise DataError(f"{root}: no training images after the split")
    policy = policy_from_config(config.policy)
    val_view = eval_policy(policy)

    subsets = [(train_set, policy.store_size), (val_set, val_view.store_size)]
    folder, why = data_mod.store_folder(subsets, run.path, store_dir)
    if why:
        reporter.message(f"{why}; --store-dir picks another folder")

    def decode(subset, view):
        def build():
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
            store, kept, failures = data_mod.ImageStore.from_dataset(subset, view.store_size, folder=folder)
            return store, len(kept), failures

        return build

    start = time.perf_counter()
    train_store, n_train, failed = shared_store(ctx, decode(train_set, policy), "train")
    val_store, n_val, failed_val = shared_store(ctx, decode(val_set, val_view), "val")
    failures = failed + failed_val
    reporter.message(
        f"Found {len(dataset)} files belonging to {len(dataset.class_names)} classes; using "
        f"{n_train} for training and {n_val} for validation"
        f"{' (held out from the training split)' if config.holdout else ''} "
        f"(decoded in {time.perf_counter() - start:.1f}s)"
    )
    if failures:
        reporter.message(f"Skipped {len(failures)} unreadable file(s):")
        for _, reason in failures:
            reporter.message(f"  {reason}")
    if n_train == 0:
        raise DataError(f"{root}: none of the training images could be decoded")
    return root, dataset.class_names, policy, val_view, train_store, val_store, failures


def _check_out(run: RunFolder, resume: bool) -> None:
    if resume:
        if not run.exists():
            raise ConfigError(f"--resume: {run.path} holds no run to resume (no config.json)")
        return
    if run.exists():
        raise ConfigError(f"{run.path} already holds a run; pass --resume to continue it or choose another --out")
    if run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
        raise ConfigError(f"--out {run.path} exists and is not an empty folder; choose another --out")


def train(config: TrainConfig, resume: bool = False, reporter: Reporter | None = None, backend: str | None = None,
          store_dir: str | None = None) -> dict:
    """Trains a model and writes its run folder.

    Args:
        config: the run's configuration. With ``resume``, the configuration stored in the run
            folder is used instead, except ``device`` and ``epochs`` (if not None, it may extend
            the run).
        resume: continue the run in ``config.out`` from its last finished epoch.
        reporter: receives progress; default logs one line per epoch.
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
    reporter = reporter or Reporter()
    run = RunFolder(config.out)
    _check_out(run, resume)
    stored = None
    if resume:
        stored = run.read_config()
        epochs, device_name = config.epochs, config.device
        config = TrainConfig.from_dict(stored["train"])
        config.out = str(run.path)
        config.device = device_name
        if epochs is not None:  # else keep the run's own epoch count
            config.epochs = epochs
    elif config.epochs is None:
        config.epochs = DEFAULT_EPOCHS
    config.validate()
    check_store_dir(store_dir)
    if Path(config.data).expanduser().exists():
        # Stored absolute, so evaluate and --resume work from any folder.
        config.data = str(Path(config.data).expanduser().resolve())
    ctx, device = dist_init(resolve_device(config.device), backend)
    try:
        return _train(config, resume, reporter if ctx.is_main else _Silent(), ctx, device, run, stored, store_dir)
    finally:
        dist_shutdown(ctx)


class _Silent(Reporter):
    def message(self, text: str) -> None:
        pass

    def epoch(self, line: str) -> None:
        pass


def _train(config: TrainConfig, resume: bool, reporter: Reporter, ctx: DistContext, device: torch.device,
           run: RunFolder, stored: dict | None, store_dir: str | None) -> dict:
    keep_freed_memory()
    bound_primitive_cache()
    ctx.barrier()  # every rank has checked --out before rank 0 writes anything
    root, class_names, policy, val_view, train_store, val_store, failures = _prepare(
        config, reporter, ctx, run, store_dir
    )
    if resume and stored.get("class_names") != class_names:
        raise DataError(f"{root}: classes {class_names} differ from the run's {stored.get('class_names')}")

    torch.manual_seed(config.seed)
    model = model_from_config(config, len(class_names)).to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    augment = Augment(rotation=config.rotation, zoom=config.zoom) if config.augment else None
    history: list[dict] = []
    best = {"epoch": 0, "val_accuracy": -1.0}
    start_epoch = 0
    if resume and not run.file("state.pt").is_file():
        # Killed before the first epoch was finished: nothing to continue, start in place.
        reporter.message(f"{run.path}: no finished epoch to resume; starting from epoch 1")
    elif resume:
        state = run.load_state()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = run.read_history()[:start_epoch]
        best = {"epoch": int(state["best_epoch"]), "val_accuracy": float(state["best_val_accuracy"])}
        if start_epoch >= config.epochs:
            reporter.message(f"{run.path}: already trained for {start_epoch} epochs (asked for {config.epochs})")
    run_config = {
        "train": config.to_dict(),
        "model": model.config,
        "class_names": class_names,
        "policy": policy.to_config(),
        "eval_policy": val_view.to_config(),
        "input_size": policy.to_config().get("size") or val_view.to_config().get("size"),
        "data": {"source": str(config.data), "root": str(root), "val_split": config.val_split, "seed": config.data_seed,
                 "holdout": config.holdout},
        "versions": {"sppnet": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    if ctx.is_main:
        run.write_json("config.json", run_config)
    reporter.message(
        f"Training {config.model} ({count_parameters(model):,} parameters) on {device}, "
        f"{policy.describe()}, {len(train_store)} images, batch {config.batch_size}"
        f"{f' over {ctx.world_size} processes' if ctx.enabled else ''}, epochs "
        f"{start_epoch + 1}..{config.epochs} -> {run.path}"
    )

    steps = policy.num_batches(train_store, config.batch_size, ctx.world_size)
    train_rates: list[float] = []  # training images/s of each epoch this process ran
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(config.seed * 1_000_003 + epoch + 1)  # dropout draws of this epoch
            generator = epoch_generator(config.seed + 104_729, epoch)  # augmentation draws
            batches = policy.batches(train_store, config.batch_size, epoch=epoch, seed=config.seed,
                                     rank=ctx.rank, world_size=ctx.world_size)

            def on_step(step, loss, acc, _epoch=epoch, _t0=t0):
                reporter.step(_epoch + 1, config.epochs, step, steps, loss, acc, time.perf_counter() - _t0)

            def lr_at(step, _epoch=epoch):
                return learning_rate(config, _epoch * steps + step, config.epochs * steps)

            loss, acc, _ = train_one_epoch(
                net, optimizer, batches, device, augment, generator,
                on_step if reporter.wants_steps else None, ctx,
                lr_at=lr_at if config.schedule != "constant" or config.warmup_epochs else None,
                label_smoothing=config.label_smoothing, amp_dtype=autocast_dtype(config.precision),
            )
            train_seconds = time.perf_counter() - t0
            if train_seconds > 0:
                train_rates.append(len(train_store) / train_seconds)
            val_batches = val_view.batches(val_store, config.batch_size, shuffle=False, rank=ctx.rank,
                                           world_size=ctx.world_size, drop_incomplete=False)
            probs, labels, indices = gather_predictions(
                ctx, *predict_batches(model, val_batches, device, flip=config.flip_test,
                                      amp_dtype=autocast_dtype(config.precision)))
            evaluation = summarize_predictions(probs, labels, class_names)
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch + 1, "loss": loss, "accuracy": acc,
                "val_loss": evaluation.loss, "val_accuracy": evaluation.accuracy, "seconds": seconds,
            }
            history.append(row)
            if ctx.is_main:
                _save_epoch(run, model, optimizer, history, row, evaluation, best, config, train_rates, failures)
            reporter.epoch(format_epoch_line(epoch + 1, config.epochs, steps, seconds, row))
    except KeyboardInterrupt:
        done = history[-1]["epoch"] if history else start_epoch
        reporter.message(f"Interrupted: {run.path} holds {done} finished epoch(s); continue with --resume")
        raise
    ctx.barrier()
    metrics = run.read_json("metrics.json") if ctx.is_main and run.file("metrics.json").is_file() else {}
    return metrics


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if platform.system() == "Darwin" else 1024), 1)


def _save_epoch(run, model, optimizer, history, row, evaluation, best, config, train_rates, failures) -> None:
    """Writes an epoch's results. state.pt goes last: it marks the epoch as finished.

    ``train_rates``: training images/s of each epoch this process has run (a resumed run's
    earlier epochs are not timed again), the latest last."""
    from .report import plot_curves

    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    run.save_weights("last", state_dict)
    if row["val_accuracy"] > best["val_accuracy"] or best["epoch"] == 0:
        best.update(epoch=row["epoch"], val_accuracy=row["val_accuracy"])
        run.save_weights("best", state_dict)
    run.write_history(history)
    epoch_seconds = [r["seconds"] for r in history]
    metrics = {
        "epochs": row["epoch"],
        "final": {k: row[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
        "best": {"epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
                 "val_loss": history[best["epoch"] - 1]["val_loss"]},
        "validation": {k: v for k, v in evaluation.to_dict().items() if k not in ("per_class", "confusion")},
        "seconds_per_epoch_median": statistics.median(epoch_seconds),
        "train_images_per_second_last_epoch": train_rates[-1] if train_rates else None,
        "train_images_per_second_median": statistics.median(train_rates) if train_rates else None,
        "parameters": count_parameters(model),
        "peak_rss_mb": peak_rss_mb(),
        "skipped_files": [reason for _, reason in failures],
    }
    run.write_json("metrics.json", metrics)
    try:
        plot_curves(history, run.file("curves.png"))
    except ImportError:
        log.warning("matplotlib is not installed: no curves.png")
    run.save_state({
        "model": state_dict,
        "optimizer": optimizer.state_dict(),
        "epoch": row["epoch"],
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "torch_rng": torch.get_rng_state(),
    })
