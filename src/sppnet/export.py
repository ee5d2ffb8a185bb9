"""Export to ONNX (dynamic batch, height and width) and TorchScript, verified after writing.

PyTorch's adaptive pooling cannot be exported to ONNX when the input size is symbolic, so the
usual SPP layers export at one fixed size only. sppnet's pooling computes its bins from the
(symbolic) height and width with ordinary tensor operations while being exported, so the whole
network exports with any N, H and W >= its stride.

The exported graph takes float RGB values 0..255, N x 3 x H x W (input ``image``), and returns
``logits`` and ``probabilities`` (N x classes). Class names, the training size and the model
name are stored in the ONNX model's metadata (``class_names`` as JSON, ``input_size``,
``model``, ``sppnet_version``). A run calibrated by temperature scaling (``calibration.json``)
exports calibrated logits and probabilities: the temperature is folded into the last layer, and
the metadata's ``temperature`` records which one.

ONNX needs the optional extra: ``pip install 'sppnet[export]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .errors import ConfigError, ExportError, SppnetError
from .files import atomic_path
from .predict import OnnxModel
from .runs import RunFolder

log = logging.getLogger(__name__)

__all__ = ["export_run", "export_onnx", "export_torchscript", "check_onnx", "check_torchscript", "OnnxModel", "ExportError"]

#: Sizes (height, width) an export is checked at, besides the training size.
CHECK_SIZES = ((8, 8), (37, 53), (180, 180), (240, 320), (333, 500), (1024, 768))
DEFAULT_OPSET = 18


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(
            f"this needs the {module} package: install the export extra with pip install 'sppnet[export]'"
        ) from None


class _WithProbabilities(nn.Module):
    """The model with a softmax output beside the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        return logits, torch.softmax(logits, dim=1)


@contextlib.contextmanager
def _exporter_warnings_quiet() -> Iterator[None]:
    """Silences the warnings the exporters themselves raise (tracer notices, deprecations of
    their internals), and only those: a user warning from the user's own code still shows."""
    with warnings.catch_warnings():
        # Deprecation notices of the exporters' internals (some are raised through copyreg).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        for module in (r"torch(\..*)?", r"onnxscript(\..*)?", r"onnx(\..*)?", r"onnx_ir(\..*)?", r"sppnet(\..*)?"):
            warnings.filterwarnings("ignore", module=module)
        yield


def _check_sizes(model: nn.Module, input_size: int) -> list[tuple[int, int]]:
    fixed = getattr(model, "config", {}).get("input_size")
    if fixed:
        return [(fixed, fixed)]
    stride = getattr(model, "stride", 8)
    return sorted({(input_size, input_size), *((h, w) for h, w in CHECK_SIZES if min(h, w) >= stride)})


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    input_size: int = 180,
    opset: int = DEFAULT_OPSET,
    temperature: float | None = None,
) -> Path:
    """Writes an ONNX model with dynamic batch, height and width.

    Args:
        model: a model of the flower family (put in eval mode, on the CPU, for the export).
        path: the .onnx file to write (atomically: a failed export leaves no file).
        class_names: stored in the metadata; default ``class_0``, ``class_1``, ...
        temperature: the calibration temperature already folded into ``model``'s last layer
            (:meth:`RunFolder.load_model`), recorded in the metadata (``temperature``) for readers;
            the graph's outputs are the calibrated ones, nothing has to apply it again.
        input_size: the training size, stored in the metadata and used for the example input.
        opset: ONNX opset version (>= 18; default 18).

    Raises:
        ExportError: onnx is not installed, or the exporter failed.
    """
    onnx = _require("onnx")
    _require("onnxscript")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 18:
        raise ConfigError(f"--opset must be an integer >= 18, got {opset!r}")
    path = Path(path)
    model = model.to("cpu").eval()
    wrapper = _WithProbabilities(model)
    fixed = getattr(model, "config", {}).get("input_size")
    size = fixed or input_size
    example = torch.rand(2, 3, size, size) * 255
    if fixed:
        dynamic = ({0: torch.export.Dim("batch")},)
    else:
        stride = getattr(model, "stride", 8)
        dynamic = ({0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=stride),
                    3: torch.export.Dim("width", min=stride)},)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # the exporter logs optional-package notices as warnings
    try:
        with _exporter_warnings_quiet():
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                input_names=["image"], output_names=["logits", "probabilities"], verbose=False,
            )
        proto = program.model_proto
        names = list(class_names) if class_names else [f"class_{i}" for i in range(model.classifier[-1].out_features)]
        metadata = {
            "class_names": json.dumps(names),
            "input_size": str(size),
            "model": json.dumps(getattr(model, "config", {})),
            "sppnet_version": __version__,
        }
        if temperature is not None:
            metadata["temperature"] = repr(float(temperature))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))
    except SppnetError:
        raise
    except Exception as err:  # the exporters raise many types; report them as one line
        raise ExportError(f"ONNX export to {path} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    finally:
        onnx_log.setLevel(level)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, input_size: int = 180, batch_sizes: Sequence[int] = (1, 3)) -> float:
    """Runs the ONNX file with onnxruntime against PyTorch on several sizes.

    Returns:
        The largest absolute difference of the logits.
    """
    _require("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _compare(model, lambda x: session.run(["logits"], {"image": x.numpy()})[0], input_size, batch_sizes)


def _compare(model: nn.Module, run, input_size: int, batch_sizes: Sequence[int]) -> float:
    model = model.to("cpu").eval()
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in _check_sizes(model, input_size):
        for n in batch_sizes:
            x = torch.rand(n, 3, h, w, generator=generator) * 255
            with torch.inference_mode():
                expected = model(x).numpy()
            got = np.asarray(run(x))
            if got.shape != expected.shape:
                raise ExportError(f"exported model gave shape {got.shape} for input {tuple(x.shape)}, expected {expected.shape}")
            if not (np.isfinite(expected).all() and np.isfinite(got).all()):
                raise ExportError(f"the model's logits are not finite (NaN or infinite) for input {tuple(x.shape)}: "
                                  "its weights are damaged or the run diverged; nothing to compare")
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_torchscript(model: nn.Module, path: str | os.PathLike, input_size: int = 180) -> Path:
    """Writes a traced TorchScript module returning (logits, probabilities); any N, H, W.

    Class names and the training size are stored as the module's extra file ``sppnet.json``.
    """
    path = Path(path)
    model = model.to("cpu").eval()
    fixed = getattr(model, "config", {}).get("input_size")
    size = fixed or input_size
    try:
        with _exporter_warnings_quiet():
            traced = torch.jit.trace(_WithProbabilities(model), torch.rand(2, 3, size, size) * 255)
        extra = {"sppnet.json": json.dumps({"input_size": size, "model": getattr(model, "config", {}), "sppnet_version": __version__})}
        with atomic_path(path) as tmp, _exporter_warnings_quiet():
            torch.jit.save(traced, str(tmp), _extra_files=extra)
    except Exception as err:
        raise ExportError(f"TorchScript export to {path} failed: {type(err).__name__}: {err}") from err
    return path


def check_torchscript(model: nn.Module, path: str | os.PathLike, input_size: int = 180, batch_sizes: Sequence[int] = (1, 3)) -> float:
    """Loads a TorchScript file and compares it with PyTorch; returns the largest difference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still supported
        loaded = torch.jit.load(str(path), map_location="cpu")
    return _compare(model, lambda x: loaded(x)[0].detach().numpy(), input_size, batch_sizes)


def export_run(run_dir: str | os.PathLike, onnx: str | os.PathLike | None = None,
               torchscript: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET, weights: str = "best",
               check: bool | None = None) -> dict[str, tuple[Path, float | None]]:
    """Exports a run folder's model (what ``sppnet export`` does).

    Args:
        run_dir: the run folder.
        onnx: write an ONNX model here (dynamic batch, height and width).
        torchscript: write a traced TorchScript module here.
        opset: the ONNX opset (>= 18; default 18).
        weights: ``best`` (default) or ``last``.
        check: compare each export with PyTorch on several sizes. Default: on (for ONNX, when
            onnxruntime is installed).

    Returns:
        For each format written (``"onnx"``, ``"torchscript"``): the path and the largest logit
        difference against PyTorch (None when not checked).

    Raises:
        ConfigError: neither ``onnx`` nor ``torchscript`` given. ExportError, DataError: see above.
    """
    if not onnx and not torchscript:
        raise ConfigError("say what to write: --onnx FILE and/or --torchscript FILE")
    run = RunFolder(run_dir)
    config = run.run_config()
    model = run.load_model(weights, "cpu", fast_paths=False, config=config)
    with torch.inference_mode():  # weights can be finite and still overflow: never ship such a model
        size = max(config.input_size, config.stride)
        probe = model(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255)
    if not bool(torch.isfinite(probe).all()):
        raise ExportError(f"{run.path}: the {weights} weights give NaN or infinite logits (the run diverged); "
                          "nothing was exported")
    written: dict[str, tuple[Path, float | None]] = {}
    if onnx:
        path = export_onnx(model, onnx, list(config.class_names), config.input_size, opset, run.temperature(weights))
        do_check = check if check is not None else importlib.util.find_spec("onnxruntime") is not None
        written["onnx"] = (path, check_onnx(model, path, config.input_size) if do_check else None)
    if torchscript:
        path = export_torchscript(model, torchscript, config.input_size)
        written["torchscript"] = (path, check_torchscript(model, path, config.input_size) if check is not False else None)
    return written
