"""The model registry: one table of builders drives ``--model``, ``sppnet models`` and ``build_model``.

Two kinds of entries, as in torchvision's ``models/_api.py`` (a dict of builders that rejects
duplicates) with a "did you mean" for unknown names:

    * a **model**: ``register_model("spp")``; built as ``build_model("spp", **arguments)``;
    * a **family**: ``register_family("torchvision")``, whose builder takes the network's name
      first; built as ``build_model("torchvision:resnet18", **arguments)``.

A builder's keyword parameters are the arguments the model takes: :func:`builder_parameters`
tells :class:`sppnet.config.TrainConfig` which of its fields to hand over, so no list of names
is kept anywhere else.
"""

from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError

__all__ = [
    "ModelSpec", "register_model", "register_family", "build_model", "list_models", "list_families",
    "builder_parameters", "count_parameters", "check_weights",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: dict[str, tuple[Callable[..., nn.Module], str, tuple[str, ...]]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model builder under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS or name in _FAMILIES:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return wrap


def register_family(name: str, what: str, examples: tuple[str, ...]):
    """Decorator that registers a family builder ``fn(network, **arguments)`` under ``name``.

    Args:
        name: the prefix of ``name:NETWORK``.
        what: one line for ``sppnet models`` (what the family is, what it needs installed).
        examples: network names to show.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS or name in _FAMILIES:
            raise ValueError(f"a model named {name!r} is already registered")
        _FAMILIES[name] = (fn, what, tuple(examples))
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of the registered models, sorted (the families are :func:`list_families`)."""
    return sorted(_MODELS)


def list_families() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Family -> (what it is, example network names): ``torchvision:NAME`` and ``timm:NAME``."""
    return {name: (what, examples) for name, (_, what, examples) in sorted(_FAMILIES.items())}


def _builder(name: str) -> tuple[Callable[..., nn.Module], tuple]:
    """The builder of ``name`` and the positional arguments it needs (a family's network)."""
    if not isinstance(name, str):
        raise ConfigError(f"a model name must be a string, got {name!r}")
    if name in _MODELS:
        return _MODELS[name], ()
    family, sep, network = name.partition(":")
    if sep and family in _FAMILIES:
        if not network:
            raise ConfigError(f"--model {name!r} names no network: e.g. {family}:{_FAMILIES[family][2][0]}")
        return _FAMILIES[family][0], (network,)
    # A family's network named bare ("resnet18") is matched on the network's name.
    candidates = {n: n for n in list_models()}
    for f, (_, _, examples) in _FAMILIES.items():
        candidates.update({e: f"{f}:{e}" for e in examples})
        candidates.update({f"{f}:{e}": f"{f}:{e}" for e in examples})
    close = difflib.get_close_matches(name, list(candidates), n=1)
    hint = f"; did you mean {candidates[close[0]]!r}?" if close else ""
    families = ", ".join(f"{f}:NAME" for f in _FAMILIES)
    raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(list_models())}"
                      f"{', ' + families if families else ''} (sppnet models lists them){hint}")


def builder_parameters(name: str) -> tuple[str, ...]:
    """The keyword arguments the builder of ``name`` takes (e.g. ``levels``, ``widths``)."""
    fn, positional = _builder(name)
    params = list(inspect.signature(fn).parameters.values())[len(positional):]
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def build_model(name: str, **kwargs) -> nn.Module:
    """Builds a registered model by name.

    Args:
        name: one of :func:`list_models` (``"spp"``, ``"flatten"``, ``"gap"``) or
            ``FAMILY:NETWORK`` (``"torchvision:resnet18"``, ``"timm:mobilenetv3_small_100"``: the
            network's features with an SPP head; extra ``sppnet[backbones]``).
        **kwargs: the builder's arguments, e.g. ``num_classes``, ``levels``, ``pool``, ``dropout``.

    Raises:
        ConfigError: for an unknown name (the message lists the valid ones and suggests the
            closest) or an invalid argument.
    """
    fn, positional = _builder(name)
    try:
        return fn(*positional, **kwargs)
    except TypeError as err:  # an unexpected keyword argument
        raise ConfigError(f"model {name!r}: {err}") from None


@dataclass(frozen=True)
class ModelSpec:
    """What a model is built from, as a run folder's ``config.json`` stores it (its ``model``).

    Attributes:
        name: a registered model (``spp``, ``flatten``, ``gap``) or ``FAMILY:NETWORK``.
        arguments: the builder's arguments (``num_classes``, ``widths``, ``levels``, ...); lists
            are kept as tuples.
    """

    name: str
    arguments: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """From ``{"name": ..., **arguments}`` (a model's ``config``).

        Raises:
            ConfigError: no ``name``, or arguments that are not a mapping.
        """
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ConfigError(f"a model spec needs a 'name' and its arguments, got {d!r}")
        args = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k != "name")
        return cls(d["name"], args)

    def to_dict(self) -> dict:
        return {"name": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.arguments}}

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.arguments).get(key, default)

    @property
    def stride(self) -> int:
        """The network's total stride: the one recorded (a backbone's, probed when it was built),
        else 2 per conv block of the flower family."""
        recorded = self.get("stride")
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            return recorded
        return 2 ** len(self.get("widths", (16, 32, 64)))

    def build(self, fast_paths: bool | None = None) -> nn.Module:
        """The model, freshly initialised (see :func:`build_model`)."""
        kwargs = dict(self.arguments)
        if "fast_paths" in builder_parameters(self.name):
            kwargs["fast_paths"] = fast_paths
        return build_model(self.name, **kwargs)


def check_weights(tensors: dict, model: nn.Module, path: str | os.PathLike, finite: bool = True) -> None:
    """Checks that ``tensors`` are the weights of ``model``: the same names and shapes, and (with
    ``finite``) no NaN or infinite value.

    Raises:
        DataError: naming ``path`` (where the tensors come from), the tensor and what is wrong.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise DataError(f"{path}: weights do not fit the model in config.json ({what}; "
                        f"{len(missing)} missing, {len(unexpected)} unexpected)")
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            raise DataError(f"{path}: {key!r} is not a tensor")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise DataError(f"{path}: tensor {key!r} has shape {tuple(value.shape)}, the model in config.json "
                            f"needs {tuple(expected[key].shape)}")
        if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DataError(f"{path}: tensor {key!r} holds NaN or infinite values; the run diverged or the "
                            "file is damaged")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
