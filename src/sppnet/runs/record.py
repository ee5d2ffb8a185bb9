"""What a run folder records: its typed config.json (:class:`RunConfig`), the split, and
where a run stands (:class:`Checkpoint`)."""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .._version import __version__
from ..config import TrainConfig
from ..errors import ConfigError, DataError
from ..models import ModelSpec
from ..models.flower import RESCALE
from ..sizing import SizePolicy, policy_from_config


HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")

#: What state.pt holds (written by :meth:`RunFolder.save_epoch`).
STATE_KEYS = ("model", "optimizer", "epoch", "best_epoch", "best_val_accuracy")

#: The version of config.json's layout this code writes. 0: sppnet 0.x (no ``schema`` key).
SCHEMA_VERSION = 1


@dataclass
class Checkpoint:
    """Where a run stands: finished epochs, their history rows and the best epoch so far."""

    epoch: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: {"epoch": 0, "val_accuracy": -1.0})


@dataclass(frozen=True)
class SplitRecord:
    """Where a run's data came from and how it was split (config.json's ``data``)."""

    source: str
    root: str
    val_split: float = 0.2
    seed: int = 123
    holdout: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunConfig:
    """A run folder's config.json, typed: how the run was made and how to use its model.

    Attributes:
        train: the training configuration.
        model: what the model is built from.
        class_names: the class of each output, in order.
        policy: the training size policy; test_view: the view it is validated and tested at.
        input_size: the reference input size (prediction scales images' shorter side to it).
        stride: the network's total stride (the smallest input side it takes).
        data: the data source and split.
        versions: sppnet, torch and Python versions that wrote the run.
        schema: config.json's layout version (0: written by sppnet 0.x).
        input_convention: how the model reads its 0..255 input: ``{"kind": "rescale", "scale": 1/255}``
            (the flower family) or ``{"kind": "normalize", "mean": [...], "std": [...]}`` (a backbone;
            both applied inside the model).
    """

    train: TrainConfig
    model: ModelSpec
    class_names: tuple[str, ...]
    policy: SizePolicy
    test_view: SizePolicy
    input_size: int
    stride: int
    data: SplitRecord
    versions: dict[str, str]
    schema: int = SCHEMA_VERSION
    input_convention: dict = dataclasses.field(default_factory=lambda: dict(RESCALE))

    @classmethod
    def create(cls, config: TrainConfig, model_config: dict, class_names: Sequence[str], root: str | os.PathLike,
               model: torch.nn.Module | None = None) -> "RunConfig":
        """The RunConfig of a new run of ``config`` (whose model was built as ``model_config``;
        ``model``, when given, tells its stride and input convention)."""
        policy = config.size_policy()
        spec = ModelSpec.from_dict(model_config)
        convention = dict(getattr(model, "input_convention", RESCALE))
        return cls(
            train=config,
            model=spec,
            class_names=tuple(class_names),
            policy=policy,
            test_view=policy.test_view(),
            input_size=policy.input_size,
            stride=int(getattr(model, "stride", spec.stride)),
            input_convention=convention,
            data=SplitRecord(str(config.data), str(root), config.val_split, config.data_seed, config.holdout),
            versions={"sppnet": __version__, "torch": torch.__version__, "python": platform.python_version()},
        )

    def to_dict(self) -> dict:
        """config.json's content (the 0.x keys, plus ``schema`` and ``stride``)."""
        return {
            "schema": self.schema,
            "train": self.train.to_dict(),
            "model": self.model.to_dict(),
            "class_names": list(self.class_names),
            "policy": self.policy.to_config(),
            "eval_policy": self.test_view.to_config(),
            "input_size": self.input_size,
            "stride": self.stride,
            "input": dict(self.input_convention),
            "data": self.data.to_dict(),
            "versions": dict(self.versions),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "config.json") -> "RunConfig":
        """Reads config.json's content, of this schema or an older one.

        Raises:
            DataError: naming ``where`` and the field, when a field is missing or wrong.
        """

        def bad(key: str, why: str) -> DataError:
            return DataError(f"{where}: {key!r} {why}; is this a run folder made by sppnet train?")

        if not isinstance(d, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(d).__name__}")
        schema = d.get("schema", 0)
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 0:
            raise bad("schema", f"must be a version number, got {schema!r}")
        if schema > SCHEMA_VERSION:
            raise DataError(f"{where}: written by a newer sppnet (schema {schema}; this one reads up to "
                            f"{SCHEMA_VERSION}); upgrade sppnet")
        for key, kind in (("model", dict), ("class_names", list)):
            if not isinstance(d.get(key), kind):
                raise bad(key, "is missing or of the wrong type")
        names = d["class_names"]
        if not names or not all(isinstance(n, str) for n in names):
            raise bad("class_names", "must be a non-empty list of names")
        for key, most in (("num_classes", 100_000), ("hidden", 65_536), ("input_size", 100_000)):
            value = d["model"].get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most):
                raise bad("model", f"has {key} {value!r}, not an integer in 1..{most}")
        widths = d["model"].get("widths", [])
        if not isinstance(widths, list) or not all(isinstance(w, int) and 1 <= w <= 4096 for w in widths):
            raise bad("model", f"has widths {widths!r}, not a list of integers in 1..4096")
        if not isinstance(d.get("versions", {}), (dict, type(None))):
            raise bad("versions", "is not a mapping of names to versions")
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise bad("class_names", f"names {twice!r} twice")
        try:
            train = TrainConfig.from_dict(d.get("train", {}))
            train.check_types()
            spec = ModelSpec.from_dict(d["model"])
            policy = policy_from_config(d.get("policy") or train.policy)
            test_view = policy_from_config(d["eval_policy"]) if d.get("eval_policy") else policy.test_view()
        except (ConfigError, TypeError, KeyError, ValueError) as err:
            raise DataError(f"{where}: {err}") from None
        input_size = d.get("input_size") or test_view.input_size
        stride = d.get("stride", spec.stride)
        for key, value in (("input_size", input_size), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
                raise bad(key, f"must be an integer in 1..100000, got {value!r}")
        data = d.get("data") or {}
        try:
            split = SplitRecord(str(data.get("source", train.data)), str(data.get("root", "")),
                                float(data.get("val_split", train.val_split)), int(data.get("seed", train.data_seed)),
                                float(data.get("holdout", 0.0) or 0.0))
        except (TypeError, ValueError, AttributeError) as err:
            raise bad("data", f"is not a data record ({err})") from None
        convention = d.get("input", RESCALE)  # runs before 0.2 are all of the flower family
        if not isinstance(convention, dict) or convention.get("kind") not in ("rescale", "normalize"):
            raise bad("input", f"must be an input convention (kind rescale or normalize), got {convention!r}")
        return cls(train, spec, tuple(names), policy, test_view, input_size, stride, split,
                   dict(d.get("versions") or {}), schema, dict(convention))
