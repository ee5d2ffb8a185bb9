"""The training configuration: one typed dataclass, the named recipes, validation.

:class:`TrainConfig` holds everything that defines a training run. Each field documents itself
once, in its metadata (``help``, the ``section`` it belongs to: model, sizes, augmentation,
optimisation, data or run), and ``sppnet train``'s options are made from those fields, so a
default and its help are written in one place. A flag, a field and a key of the run folder's
``config.json`` share one name (``--batch-size`` <-> ``batch_size``).

The named recipes are data: :data:`PRESETS` (``study``, ``study-plus``, ``best``) and the
study's comparison matrix :data:`STUDY_VARIANTS`. A configuration answers what the layers below
need: :meth:`TrainConfig.model_spec` for :mod:`sppnet.models`, :meth:`TrainConfig.size_policy`
for :mod:`sppnet.sizing`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import InitVar, dataclass, field
from typing import Any

from .errors import ConfigError
from .models import ModelSpec, builder_parameters, count_parameters
from .pooling import POOL_MODES
from .runtime import DEVICES, PRECISIONS
from .sizing import Fixed, SizePolicy, parse_policy, policy_from_config

__all__ = [
    "TrainConfig", "PRESETS", "PRESET_FACTS", "STUDY_VARIANTS", "SCHEDULES", "PRECISIONS", "DEFAULT_EPOCHS", "SECTIONS",
    "cli_fields",
]

DEFAULT_EPOCHS = 20
SCHEDULES = ("constant", "cosine")

#: Upper bounds that catch typing mistakes before they become a model or a batch that cannot fit.
LIMITS = {"levels": 32, "widths": 4096, "hidden": 65536, "batch_size": 8192, "epochs": 100_000}
LIMIT_REASONS = {
    "levels": "an SPP level of n bins per side multiplies the head's size by n * n",
    "widths": "a conv block that wide would not fit in memory",
    "hidden": "a dense layer that wide would not fit in memory",
    "batch_size": "a batch that large would not fit in memory",
    "epochs": "a typing mistake?",
}
MAX_PARAMETERS = 50_000_000

#: The groups of fields, in the order ``sppnet train --help`` shows them.
SECTIONS = ("model", "sizes", "augmentation", "optimisation", "data", "run")

#: Named recipes: the TrainConfig fields each sets (options given explicitly override them).
#: ``study`` is the study's exact setup and the default. ``study-plus`` keeps the study's network
#: and 20 epochs and changes only the training recipe and the test view. ``fast`` aims at the
#: study's accuracy and more in a third of its time (small whole images, the batch norm after the
#: pooling, a high learning rate, 16 epochs); ``best`` at the highest accuracy in 30 minutes on
#: two CPU cores (a wider network; whole images at a shorter side drawn per batch from 96 to 192
#: px, so that it holds its accuracy across sizes; 60 epochs). Both keep a moving average of the
#: weights, use bf16 where the hardware has it and fit a temperature on a tenth of the training split. How
#: they were chosen (on a part of the training split only) and what each ingredient brings:
#: docs/accuracy.md.
PRESETS: dict[str, dict[str, Any]] = {
    "study": {},
    "study-plus": {
        "policy": {"kind": "native", "size": 180},
        "schedule": "cosine",
        "warmup_epochs": 1,
        "lr": 2e-3,
        "flip_test": True,
    },
    "fast": {
        "policy": {"kind": "native", "size": 80},
        "widths": (16, 32, 64, 128),
        "batch_norm": True,
        "norm_after_pool": True,
        "rotation": 0.0,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "lr": 8e-3,
        "weight_decay": 0.05,
        "label_smoothing": 0.1,
        "ema": 0.99,
        "precision": "auto",
        "calibrate": 0.1,
        "flip_test": True,
        "epochs": 16,
    },
    "best": {
        "policy": {"kind": "native-range", "low": 96, "high": 192},
        "widths": (32, 64, 128, 256),
        "batch_norm": True,
        "norm_after_pool": True,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "lr": 2e-3,
        "weight_decay": 0.05,
        "label_smoothing": 0.1,
        "ema": 0.998,
        "precision": "auto",
        "calibrate": 0.1,
        "flip_test": True,
        "epochs": 60,
    },
}

#: What each preset is for and what it gave on the flowers (validation split, final epoch, three
#: seeds; minutes of one run on two CPU cores, decoding and calibration included), as measured in
#: docs/accuracy.md; ``sppnet presets`` prints them beside each preset's network and sizes.
PRESET_FACTS: dict[str, dict[str, str]] = {
    "study": {"pick": "to reproduce the study", "minutes": "4.3", "accuracy": "0.780 +- 0.006"},
    "study-plus": {"pick": "the study's network, trained better", "minutes": "not timed alone",
                   "accuracy": "0.806 +- 0.017"},
    "fast": {"pick": "to try things quickly", "minutes": "1.3", "accuracy": "0.802 +- 0.004"},
    "best": {"pick": "for the best accuracy from scratch", "minutes": "27", "accuracy": "0.888 +- 0.006"},
}

#: The study's comparison (``sppnet compare``): variant -> (TrainConfig fields, what the study
#: reported for it).
STUDY_VARIANTS: dict[str, tuple[dict[str, Any], dict[str, float]]] = {
    "flatten": (dict(model="flatten"), {"val_accuracy": 0.7275}),
    "spp-noaug": (dict(model="spp", augment=False, dropout=0.0), {"val_accuracy": 0.7289, "val_loss": 1.08}),
    "spp": (dict(model="spp"), {"val_accuracy": 0.7657, "best_val_accuracy": 0.7793}),
    "spp-multi": (dict(model="spp", policy={"kind": "multi", "sizes": [180, 224]}), {}),
    "spp-range": (dict(model="spp", policy={"kind": "range", "low": 180, "high": 224}), {}),
    "spp-native": (dict(model="spp", policy={"kind": "native", "size": 180, "max_aspect": 2.0}), {}),
    "gap": (dict(model="gap"), {}),
}


_EXAMPLES = {"size": 180, "sizes": (180, 224), "size_range": (180, 224), "native": 180, "progressive": (64, 96),
             "native_range": (96, 192)}


def _field(default: Any, section: str, help: str, cli: bool = True, choices: tuple | None = None, **kwargs):
    """A dataclass field with its help and section (and whether ``sppnet train`` has a flag)."""
    metadata = {"help": help, "section": section, "cli": cli, "choices": choices}
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the run folder's config.json.

    The defaults are the study's setup: the ``spp`` model with levels 1, 2, 4 and max pooling,
    images warped to 180 x 180, augmentation and dropout 0.2, 20 epochs of Adam at 1e-3 with
    batches of 32, on the Keras-compatible 80/20 split with seed 123. Each field's help is in its
    metadata (``dataclasses.fields(TrainConfig)``); ``sppnet train --help`` prints it.
    """

    data: str = _field("flowers", "data", "folder of class subfolders, archive (.tgz/.tar.gz/.tar/.zip) or 'flowers'",
                       cli=False)
    out: str = _field("runs/spp", "run", "the run folder", cli=False)
    # model
    model: str = _field("spp", "model", "the network: spp, flatten or gap (the study's CNN with that head), or "
                        "torchvision:NAME / timm:NAME (that network's features with an SPP head; extra "
                        "sppnet[backbones]); sppnet models lists them")
    levels: tuple[int, ...] = _field((1, 2, 4), "model", "SPP pyramid levels (spp and torchvision:/timm: models)")
    pool: str = _field("max", "model", "SPP pooling: max or avg (spp and torchvision:/timm: models)", choices=POOL_MODES)
    widths: tuple[int, ...] = _field((16, 32, 64), "model", "conv block widths (the study's CNN)")
    hidden: int = _field(128, "model", "dense layer units")
    batch_norm: bool = _field(False, "model", "batch norm after each conv")
    norm_after_pool: bool = _field(False, "model", "with --batch-norm: the norm after each block's pooling, on a map "
                                   "4x smaller (about 1.3x faster steps on a CPU)")
    dropout: float = _field(0.2, "model", "dropout rate before the dense layers")
    pretrained: str | None = _field(None, "model", "start the network's features from this local weights file "
                                    "(.safetensors, or a PyTorch state dict read without running code), or "
                                    "'default': the torchvision/timm weights already in their local cache "
                                    "(nothing is downloaded)")
    freeze_backbone: bool = _field(False, "model", "keep the backbone's weights and batch-norm statistics as "
                                   "they are; train the SPP head alone (torchvision:/timm: models)")
    backbone_lr: float = _field(1.0, "model", "the backbone's learning rate as a share of --lr (e.g. 0.1 to "
                                "fine-tune gently; torchvision:/timm: models)")
    # sizes (the policy: --size, --sizes, --size-range, --native, --progressive or --native-range;
    # see sizing.parse_policy)
    policy: dict = _field(lambda: Fixed(180).to_config(), "sizes", "the size policy", cli=False)
    flip_test: bool = _field(False, "sizes", "validate on each image and its mirror image")
    # augmentation
    augment: bool = _field(True, "augmentation", "random flip, rotation, zoom (Keras semantics)")
    rotation: float = _field(0.1, "augmentation", "augmentation: largest rotation, in turns")
    zoom: float = _field(0.1, "augmentation", "augmentation: largest relative zoom")
    # optimisation
    epochs: int | None = _field(DEFAULT_EPOCHS, "optimisation",
                                "epochs (or the preset's: best trains 60; with --resume, the run's own unless given)")
    batch_size: int = _field(32, "optimisation", "the global batch size")
    lr: float = _field(1e-3, "optimisation", "learning rate (Adam, or AdamW with --weight-decay)")
    schedule: str = _field("constant", "optimisation", "learning rate schedule: constant or cosine (to 0 at the end)",
                           choices=SCHEDULES)
    warmup_epochs: int = _field(0, "optimisation", "linear learning-rate warm-up, in epochs")
    weight_decay: float = _field(0.0, "optimisation", "decoupled (AdamW) weight decay; 0 is plain Adam")
    label_smoothing: float = _field(0.0, "optimisation", "label smoothing")
    ema: float = _field(0.0, "optimisation", "keep an exponential moving average of the weights with this decay per "
                        "step (e.g. 0.998) and validate and save it instead of the raw weights; 0 is off")
    precision: str = _field("fp32", "optimisation", "fp32, bf16 (autocast; fast where the CPU or GPU has bf16 units) or auto "
                            "(bf16 where the device has bf16 units, else fp32)",
                            choices=PRECISIONS)
    # data and split
    val: str | None = _field(None, "data", "validate on this folder (or archive) of class subfolders instead of a "
                             "split of DATA; a DATA folder holding train/ and val/ is used so by itself")
    val_split: float = _field(0.2, "data", "validation fraction (of DATA, without --val or a val/ folder)")
    holdout: float = _field(0.0, "data", "validate on this share of the training split instead, for tuning")
    calibrate: float = _field(0.0, "data", "hold out this share of the training split (never the validation "
                              "split) to fit a temperature that makes the confidences honest; 0 is off")
    seed: int = _field(123, "data", "seed of the split, initialisation, shuffling, augmentation and dropout")
    split_seed: int | None = _field(None, "data", "seed of the split alone, to vary the rest on one split "
                                    "(default: --seed)")
    limit: int | None = _field(None, "data", "use only the first N images of each subset (quick tries)")
    # run
    device: str = _field("auto", "run", "auto (CUDA if present), cpu or cuda", choices=DEVICES)
    tensorboard: bool = _field(False, "run", "write each epoch's numbers (and the curves) to RUN/tensorboard for "
                               "TensorBoard (extra sppnet[tensorboard])")
    preset: str = _field("study", "run", "named recipe: study (the study's setup), study-plus, fast, best (sppnet "
                         "presets compares them); options given explicitly override the preset's values",
                         choices=tuple(PRESETS))

    # The size policy by its flags, as keyword arguments: TrainConfig(native=180) is
    # TrainConfig(policy={"kind": "native", "size": 180}); tuples for the pairs and lists
    # (sizes=(180, 224), size_range=(180, 224), progressive=(64, 96), native_range=(96, 192)).
    size: InitVar[int | None] = None
    sizes: InitVar[Any] = None
    size_range: InitVar[Any] = None
    native: InitVar[int | None] = None
    progressive: InitVar[Any] = None
    native_range: InitVar[Any] = None

    def __post_init__(self, size=None, sizes=None, size_range=None, native=None, progressive=None,
                      native_range=None) -> None:
        given = {name: value for name, value in (("size", size), ("sizes", sizes), ("size_range", size_range),
                                                  ("native", native), ("progressive", progressive),
                                                  ("native_range", native_range)) if value is not None}
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, (int, str, list, tuple)):
                raise ConfigError(f"{name} takes a number or numbers (e.g. {name}={_EXAMPLES[name]!r}), got "
                                  f"{type(value).__name__}; a size-policy object goes in policy=")
        if given:
            def text(value, sep):
                return sep.join(map(str, value)) if isinstance(value, (list, tuple)) else value

            policy = parse_policy(size, text(sizes, ","), text(size_range, ":"), native, text(progressive, ":"),
                                  native_range=text(native_range, ":")).to_config()
            if policy["kind"] == "progressive":
                del policy["epochs"]  # the run's epochs, below
            self.policy = policy
        if isinstance(self.policy, SizePolicy):
            self.policy = self.policy.to_config()
        elif not isinstance(self.policy, dict):
            raise ConfigError(f"policy must be a size policy or its dict (e.g. {{'kind': 'native', 'size': 180}}), "
                              f"got {type(self.policy).__name__}")
        # A progressive policy grows over the run's epochs unless it names its own: the number is
        # fixed here, so that a run resumed with more --epochs keeps the sizes it started with.
        policy = self.policy
        if isinstance(policy, dict) and policy.get("kind") == "progressive" and "epochs" not in policy:
            if isinstance(self.epochs, int) and not isinstance(self.epochs, bool) and self.epochs >= 1:
                self.policy = {**policy, "epochs": self.epochs}

    @property
    def data_seed(self) -> int:
        """The seed of the train/validation split: ``split_seed``, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed

    @classmethod
    def from_preset(cls, preset: str = "study", **overrides) -> "TrainConfig":
        """A configuration from a named preset (see :data:`PRESETS`), with fields overridden.

        Raises:
            ConfigError: an unknown preset or field.
        """
        if preset not in PRESETS:
            raise ConfigError(f"unknown --preset {preset!r}: choose one of {', '.join(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        recipe = dict(PRESETS[preset])
        # A preset's network fields (widths, batch norm) shape the study's CNN; on another network
        # they do not apply and the rest of the recipe (sizes, schedule, ...) still does.
        takes = builder_parameters(overrides.get("model", recipe.get("model", "spp")))
        network = {f.name for f in dataclasses.fields(cls) if f.metadata.get("section") == "model"}
        recipe = {k: v for k, v in recipe.items() if k not in network or k in takes}
        return cls.from_dict({**recipe, **overrides, "preset": preset})

    def size_policy(self) -> SizePolicy:
        """The size policy of :attr:`policy` (raises ConfigError naming what is wrong)."""
        return policy_from_config(self.policy)

    def model_spec(self, num_classes: int) -> ModelSpec:
        """What :mod:`sppnet.models` builds for this configuration and ``num_classes`` classes: the
        fields whose names the model's builder takes (``levels`` for ``spp``, ``widths`` for the
        flower family, ``freeze_backbone`` for a backbone, ...)."""
        takes = builder_parameters(self.model)
        args: dict[str, Any] = {"num_classes": num_classes}
        if "input_size" in takes:  # a fixed-size head: the size of the policy
            args["input_size"] = self.size_policy().input_size
        for name in ("levels", "pool", "dropout", "widths", "hidden", "batch_norm"):
            if name in takes:
                value = getattr(self, name)
                args[name] = tuple(value) if isinstance(value, (list, tuple)) else value
        # Present only where set, so that the models without them record what they always did.
        for name in ("norm_after_pool", "freeze_backbone"):
            if name in takes and getattr(self, name):
                args[name] = True
        return ModelSpec(self.model, tuple(args.items()))

    def validate(self) -> None:
        """Checks every field.

        Raises:
            ConfigError: naming the option (as its flag), the value and what is allowed.
        """

        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{flag(name)} must be an integer >= {minimum}, got {value!r}")

        def number(name: str, low: float, high: float, high_open: bool = True) -> None:
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            ok = ok and low <= value and (value < high if high_open else value <= high)
            if not ok:
                bracket = ")" if high_open else "]"
                raise ConfigError(f"{flag(name)} must be a number in [{low}, {high}{bracket}, got {value!r}")

        for name in ("epochs", "batch_size", "hidden"):
            integer(name, 1)
        for name, most in LIMITS.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, int) and v > most for v in values):
                raise ConfigError(f"{flag(name)} must be at most {most} (got {value!r}): {LIMIT_REASONS[name]}")
        for name, minimum in (("limit", 1), ("split_seed", 0)):
            if getattr(self, name) is not None:
                integer(name, minimum)
        integer("seed", 0)
        for name in ("seed", "split_seed"):
            if isinstance(getattr(self, name), int) and getattr(self, name) > 2**32 - 1:
                raise ConfigError(f"{flag(name)} must be at most {2**32 - 1} (a 32-bit seed), got {getattr(self, name)}")
        integer("warmup_epochs", 0)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r}")
        number("rotation", 0, 0.5, high_open=False)
        number("zoom", 0, 1)
        number("weight_decay", 0, 1)
        number("label_smoothing", 0, 1)
        number("holdout", 0, 1)
        number("calibrate", 0, 0.5)
        number("ema", 0, 1)
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and f.name != "pool" and getattr(self, f.name) not in choices:
                raise ConfigError(f"{flag(f.name)} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        for name in ("augment", "batch_norm", "norm_after_pool", "flip_test", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        number("backbone_lr", 0, 1, high_open=False)
        if not isinstance(self.freeze_backbone, bool):
            raise ConfigError(f"freeze_backbone must be True or False, got {self.freeze_backbone!r}")
        if self.pretrained is not None and (not isinstance(self.pretrained, str) or not self.pretrained):
            raise ConfigError(f"--pretrained must name a weights file or 'default', got {self.pretrained!r}")
        takes = builder_parameters(self.model)  # raises for an unknown --model, with the closest name
        for name, used in (("freeze_backbone", self.freeze_backbone), ("backbone_lr", self.backbone_lr != 1.0),
                           ("norm_after_pool", self.norm_after_pool), ("batch_norm", self.batch_norm)):
            wanted = "freeze_backbone" if name == "backbone_lr" else name
            if used and wanted not in takes:
                raise ConfigError(f"{flag(name)} does not apply to --model {self.model}")
        if self.norm_after_pool and not self.batch_norm:
            raise ConfigError("--norm-after-pool moves the batch norm after the pooling; give --batch-norm too")
        policy = self.size_policy()
        if "input_size" in takes and not isinstance(policy, Fixed):
            raise ConfigError(
                f"--model {self.model} needs one fixed input size (--size), not {policy.describe()}; "
                "use --model spp or gap for other size policies"
            )
        spec = self.model_spec(num_classes=2)
        model = spec.build()  # raises for bad model arguments
        parameters = count_parameters(model)
        if parameters > MAX_PARAMETERS:
            raise ConfigError(f"this model would have {parameters:,} parameters ({4 * parameters / 1e9:.1f} GB of "
                              f"float32 weights, three times that to train with Adam), more than {MAX_PARAMETERS:,}; "
                              "use fewer --levels, --widths or --hidden units")
        if policy.smallest_size < model.stride:
            raise ConfigError(
                f"{policy.describe()}: images of {policy.smallest_size} px are smaller than the network's stride of "
                f"{model.stride} px; use a size of at least {model.stride}"
            )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["levels"] = list(self.levels)
        d["widths"] = list(self.widths)
        return d

    def check_types(self) -> None:
        """Checks that each field has its type (a configuration read from a file is not coerced:
        ``flip_test: "no"`` is an error, not True).

        Raises:
            ConfigError: naming the field, its value and the type it needs.
        """
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            allowed = typing.get_args(hint) if union else (hint,)
            ok = any(_is_a(value, a) for a in allowed)
            if not ok:
                raise ConfigError(f"{f.name} must be {' or '.join(_type_name(a) for a in allowed)}, got {value!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From :meth:`to_dict`'s form; keys that are not fields are ignored (older runs)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training configuration must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for name in ("levels", "widths"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


def _is_a(value: Any, kind: Any) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(kind) is tuple:
        return isinstance(value, (tuple, list)) and all(_is_a(v, int) for v in value)
    return isinstance(value, typing.get_origin(kind) or kind)


def _type_name(kind: Any) -> str:
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping"}
    return "a list of integers" if typing.get_origin(kind) is tuple else names.get(kind, str(kind))


def cli_fields() -> list[dataclasses.Field]:
    """The fields ``sppnet train`` has a flag for, section by section."""
    fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli")]
    return sorted(fields, key=lambda f: SECTIONS.index(f.metadata["section"]))
