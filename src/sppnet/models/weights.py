"""Pretrained weights from the user's own disk into a model's feature network (``--pretrained FILE``).

A file is a safetensors file or a PyTorch state dict, read with ``weights_only=True`` (a pickle
that would run code is refused, never executed). Its keys are matched to the feature network's
after dropping the prefixes that training code commonly adds or that the whole network's keys
carry (``module.``, ``model.``, ``backbone.``, ``features.``, ``encoder.``, ``body.``), so a
torchvision or timm checkpoint, a DataParallel one or a Lightning one all load. Tensors of the
network's own head (``fc.*``, ``classifier.*``) are reported as unused, not an error.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import DataError

__all__ = ["PretrainedReport", "read_state_dict", "load_pretrained"]

#: Prefixes dropped from both sides before keys are matched, in any order and number.
PREFIXES = ("module.", "model.", "backbone.", "features.", "encoder.", "body.", "_orig_mod.")

#: Keys under which checkpoints commonly nest their state dict.
NESTED = ("state_dict", "model", "model_state_dict", "module", "weights")


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did.

    Attributes:
        path: the file read.
        loaded: how many tensors of the feature network came from it.
        total: how many tensors the feature network has.
        missing: the network's tensors the file does not hold (they keep their initialisation).
        unexpected: the file's tensors that match nothing (e.g. the original classifier).
    """

    path: Path
    loaded: int
    total: int
    missing: list[str]
    unexpected: list[str]

    def line(self) -> str:
        """One line for the user: how many loaded, which were missing or unused."""

        def some(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

        text = f"Loaded {self.loaded} of {self.total} backbone tensors from {self.path}"
        if self.missing:
            text += f"; {len(self.missing)} missing (kept as initialised: {some(self.missing)})"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unused ({some(self.unexpected)})"
        return text


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a safetensors file or a PyTorch state dict, without running any code.

    Raises:
        DataError: naming the file: missing, a folder, truncated or damaged, a pickle holding
            anything but tensors, or no tensors at all.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--pretrained {path}: is a folder; give a .safetensors or .pt/.pth weights file")
    if not path.is_file():
        raise DataError(f"--pretrained {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    # torch.save writes a zip archive (or, before 1.6, a bare pickle); anything else is read as
    # safetensors, which is only tensors by design.
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"--pretrained {path}: not a readable safetensors file ({err})") from None
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "refused"
            raise DataError(f"--pretrained {path}: holds more than tensors, refused without running it "
                            f"({first[:160]})") from None
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
            raise DataError(f"--pretrained {path}: not a readable PyTorch weights file ({str(err)[:160]})") from None
        tensors = _unnest(loaded)
        if tensors is None:
            raise DataError(f"--pretrained {path}: holds a {type(loaded).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in tensors.items() if isinstance(v, Tensor)}
    if not tensors:
        raise DataError(f"--pretrained {path}: holds no tensors")
    return tensors


def _unnest(obj) -> dict | None:
    if isinstance(obj, dict) and any(isinstance(v, Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in NESTED:
            if isinstance(obj.get(key), dict):
                return _unnest(obj[key])
    return None


def _core(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_pretrained(network: nn.Module, path: str | os.PathLike) -> PretrainedReport:
    """Copies the matching tensors of a weights file into ``network`` (a model's ``features``).

    Raises:
        DataError: the file cannot be read (see :func:`read_state_dict`), none of its tensors
            match the network (another architecture?), or a matching tensor has another shape.
    """
    path = Path(path)
    tensors = read_state_dict(path)
    target = network.state_dict()
    by_core: dict[str, str] = {}
    for key in target:
        core = _core(key)
        if core in by_core:
            raise DataError(f"--pretrained: the network's tensors {by_core[core]!r} and {key!r} look alike; "
                            "load the weights from Python with load_state_dict instead")
        by_core[core] = key
    matched: dict[str, Tensor] = {}
    unexpected = []
    for key, value in tensors.items():
        own = by_core.get(_core(key))
        if own is None:
            unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(target[own].shape):
            raise DataError(f"--pretrained {path}: tensor {key!r} has shape {tuple(value.shape)}, the network's "
                            f"{own!r} needs {tuple(target[own].shape)} (weights of another architecture?)")
        matched[own] = value
    if not matched:
        raise DataError(f"--pretrained {path}: none of its {len(tensors)} tensors match the network (e.g. "
                        f"{next(iter(tensors))!r} against {next(iter(target))!r}); weights of another architecture?")
    with torch.no_grad():
        for key, value in matched.items():
            target[key].copy_(value.to(target[key].dtype))
    missing = [k for k in target if k not in matched and not k.endswith("num_batches_tracked")]
    return PretrainedReport(path, len(matched), len(target), missing, unexpected)
