"""Classifying image files of any size with a trained run.

    predictor = Predictor.from_run("runs/spp")
    result = predictor.predict("sunflower.jpg")
    print(result.sentence())
    # This image most likely belongs to sunflowers with 98.94 percent confidence.

By default each image keeps its aspect ratio, with its shorter side at the run's training size
(no crop, no warp: what SPP is for). ``size=S`` warps it to S x S instead (the study's view; the
only one a ``flatten`` model accepts, at its own size).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image

from . import runtime
from .data import ImageStore, available_memory, decode_image, decode_many, expand_images, shown
from .errors import ConfigError, DataError, ExportError, SppnetError
from .inference import class_probabilities
from .models import ModelSpec
from .runs import RunFolder
from .sizing import Native

__all__ = ["Prediction", "Predictor", "OnnxModel", "load_predictor", "sentence", "shown", "expand_images",
           "to_pil_image"]


def sentence(class_name: str, confidence: float) -> str:
    """The study's sentence, with the confidence in percent to two decimals."""
    return f"This image most likely belongs to {shown(class_name)} with {100 * confidence:.2f} percent confidence."


@dataclass
class Prediction:
    """One image's prediction.

    Attributes:
        class_name: the most likely class; confidence: its probability.
        probabilities: every class's probability, in class order.
        width, height: the model's view: the size the image was classified at (its shorter side
            at the run's size, or the --size square).
        file_width, file_height: the image's own size (upright, as EXIF orientation shows it),
            when known.
    """

    source: str
    class_name: str
    confidence: float
    probabilities: dict[str, float]
    width: int
    height: int
    file_width: int | None = None
    file_height: int | None = None

    def sentence(self) -> str:
        return sentence(self.class_name, self.confidence)

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict:
        return {
            "image": self.source, "class": self.class_name, "confidence": self.confidence,
            "probabilities": self.probabilities, "width": self.width, "height": self.height,
            "file_width": self.file_width, "file_height": self.file_height,
        }


#: What Predictor.predict takes: a path, encoded bytes, a PIL image, an array or a tensor.
ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray, torch.Tensor]


def _source(image, index: int | None = None) -> str:
    """A path as given; another image by its type (and its place among several)."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return type(image).__name__ if index is None else f"{type(image).__name__} {index}"


def to_pil_image(image) -> Image.Image:
    """A PIL image, an array (H, W, 3) or (H, W) or a tensor (3, H, W) / (H, W, 3), uint8 or
    float 0..255, as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3) and tensor.shape[-1] not in (1, 3):
            tensor = tensor.permute(1, 2, 0)  # (3, H, W) -> (H, W, 3)
        image = tensor.numpy()
    if not isinstance(image, np.ndarray):
        raise ConfigError(f"cannot classify a {type(image).__name__}: give a path, the bytes of an image file, a PIL "
                          "image, an array or a tensor")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3) or 0 in image.shape:
        raise ConfigError(f"an image array must be (H, W, 3) or (H, W), got shape {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
            raise ConfigError(f"an image array must hold finite numbers 0..255, got {image.dtype}")
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Image.fromarray(image).convert("RGB")


def _as_batch(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W), channels last."""
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().contiguous(memory_format=torch.channels_last)


class Predictor:
    """A trained model ready to classify images.

    Args:
        model: a model from the flower family (eval mode).
        class_names: the class of each output.
        train_size: the run's training size: the shorter side images are scaled to by default.
        size: if given, images are warped to ``size`` x ``size`` instead.
        device: where the model runs.
        flip: average each image's softmax with its mirror image's (twice the work).
    """

    def __init__(self, model: torch.nn.Module, class_names: Sequence[str], train_size: int = 180,
                 size: int | None = None, device: torch.device | str = "cpu", flip: bool = False) -> None:
        self.model = model.eval()
        self.flip = bool(flip)
        self.class_names = list(class_names)
        classifier = getattr(model, "classifier", None)
        outputs = getattr(classifier[-1], "out_features", None) if isinstance(classifier, torch.nn.Sequential) else None
        if outputs is not None and outputs != len(self.class_names):
            raise ConfigError(f"{len(self.class_names)} class names for a model with {outputs} outputs")
        self.device = torch.device(device)
        self.train_size = int(train_size)
        self.stride = int(getattr(model, "stride", 8))
        flatten_size = getattr(model, "config", {}).get("input_size")
        if size is None and flatten_size:
            size = flatten_size  # a flatten model takes one size only
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < self.stride):
            raise ConfigError(f"--size must be an integer >= {self.stride} (the network's stride), got {size!r}")
        available = available_memory()
        if size is not None and available is not None and size * size * 4 * 19 > available:
            # A lower bound: one image's input and a 16-channel first layer, float32.
            raise ConfigError(f"--size {size}: one {size}x{size} image needs more than "
                              f"{size * size * 4 * 19 / 1e9:,.1f} GB to classify, and {available / 1e9:,.1f} GB are "
                              "free; use a smaller --size")
        if size is not None and flatten_size and size != flatten_size:
            raise ConfigError(f"this run's flatten model takes {flatten_size}x{flatten_size} images only, not --size {size}")
        self.size = size
        self._native = Native(self.train_size)

    @classmethod
    def from_run(cls, path: str | os.PathLike, weights: str = "best", size: int | None = None,
                 device: str | torch.device = "cpu", flip: bool | None = None) -> "Predictor":
        """Loads a run folder's model (``best`` or ``last`` weights). ``flip`` defaults to the
        run's own test view (its ``flip_test``)."""
        run = RunFolder(path)
        config = run.run_config()
        model = run.load_model(weights, device, config=config)
        if flip is None:
            flip = config.train.flip_test
        return cls(model, config.class_names, config.input_size, size, device, flip)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, size: int | None = None, flip: bool = False) -> "Predictor":
        """Classifies with an ONNX file exported by sppnet, through onnxruntime (CPU)."""
        model = OnnxModel(path)
        return cls(model, model.class_names, model.input_size, size, "cpu", flip)

    def _target(self, width: int, height: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size, self.size
        return self._native.store_size(width, height)

    def _decode(self, image: ImageLike, name: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """One image as the model sees it, uint8 (H, W, 3) resized, and its own (width, height)."""
        own: list[tuple[int, int]] = []

        def target(width: int, height: int) -> tuple[int, int]:
            own.append((width, height))
            return self._target(width, height)

        if isinstance(image, (str, os.PathLike, bytes, bytearray)):
            pil = decode_image(image, target, name=name)
        else:
            pil = to_pil_image(image)
            size = target(*pil.size)
            if pil.size != size:
                pil = pil.resize(size, Image.Resampling.BILINEAR)
        return np.array(pil), (own[0] if own else pil.size)

    def prepare(self, image: ImageLike, name: str | None = None) -> torch.Tensor:
        """Decodes (a path or encoded bytes) or converts (a PIL image, an array, a tensor) and
        resizes one image: float (1, 3, H, W), RGB 0..255."""
        return self.prepare_sized(image, name)[0]

    def prepare_sized(self, image: ImageLike, name: str | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """:meth:`prepare`, and the image's own (width, height)."""
        array, own = self._decode(image, name)
        return _as_batch(array), own

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities (N, classes) of prepared images; ``sizes`` (N, 2): the valid
        (height, width) of each image of a zero-padded batch."""
        x = x.to(self.device)
        probs = class_probabilities(self.model, x, None if sizes is None else sizes.to(self.device), self.flip)
        return probs.cpu()

    def _prediction(self, source: str, probs: torch.Tensor, height: int, width: int) -> Prediction:
        if not bool(torch.isfinite(probs).all()):
            raise DataError(f"{source}: the model's output is not a number (NaN or infinite); its weights are "
                            "damaged or the run diverged")
        best = int(probs.argmax())
        return Prediction(
            source=source,
            class_name=self.class_names[best],
            confidence=float(probs[best]),
            probabilities={name: float(p) for name, p in zip(self.class_names, probs)},
            width=int(width),
            height=int(height),
        )

    def predict_many(self, images: Iterable[ImageLike], batch_size: int = 32, workers: int | None = None,
                     chunk: int = 256) -> Iterator[Prediction | DataError]:
        """Classifies many images (paths, encoded bytes, PIL images, arrays or tensors, as
        :meth:`predict` takes); yields, in their order, a :class:`Prediction` each, or the
        :class:`DataError` naming an image that cannot be read.

        Files are decoded ``chunk`` at a time in parallel threads (so memory holds one chunk);
        within a chunk, images of similar shape run together in batches of up to ``batch_size``,
        zero-padded to the largest with each image's valid size, which gives each image the
        probabilities it gets alone (the model's padded-batch contract). An ONNX model takes one
        size per batch, so there only images of the same shape share a batch.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        items = list(images)
        runtime.configure()
        padded_ok = not getattr(self.model, "one_size_per_batch", False)
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            arrays, own, errors = self._decode_chunk(part, workers)
            order = sorted(arrays)
            store = ImageStore([arrays[i] for i in order], [0] * len(order))
            probs = [None] * len(store)
            for indices in self._native.index_batches(store, batch_size, shuffle=False):  # by shape
                groups = [indices]
                if not padded_ok:  # equal shapes are neighbours in this order
                    counts = torch.unique_consecutive(store.sizes[indices], dim=0, return_counts=True)[1]
                    groups = indices.split(counts.tolist())
                for group in groups:
                    x, sizes = store.gather(group)
                    uniform = bool((sizes == sizes[0]).all())
                    for i, p in zip(group.tolist(), self.probabilities(x.float(), None if uniform else sizes)):
                        probs[i] = p
            position = {i: k for k, i in enumerate(order)}
            for i, item in enumerate(part):
                if i in errors:
                    yield errors[i]
                    continue
                k = position[i]
                prediction = self._prediction(_source(item, i + start), probs[k], *store.sizes[k].tolist())
                prediction.file_width, prediction.file_height = own.get(i) or (None, None)
                yield prediction

    def _decode_chunk(self, part: list, workers: int | None) -> tuple[dict, dict, dict]:
        """The images of a chunk as the model sees them, their own sizes and the errors, by index."""
        files = [i for i, item in enumerate(part) if isinstance(item, (str, os.PathLike))]
        loaded = decode_many([part[i] for i in files], self._target, workers, warn=False)
        arrays = {files[j]: array for j, array in zip(loaded.kept, loaded.images)}
        own = {files[j]: size for j, size in zip(loaded.kept, loaded.own_sizes)}
        kept = set(loaded.kept)
        errors = {i: DataError(reason) for i, (_, reason) in zip(
            (files[j] for j in range(len(files)) if j not in kept), loaded.failures)}
        for i, item in enumerate(part):
            if i in arrays or i in errors:
                continue
            try:
                arrays[i], own[i] = self._decode(item, _source(item, i))
            except SppnetError as err:
                errors[i] = err if isinstance(err, DataError) else DataError(str(err))
        return arrays, own, errors

    def predict(self, image: ImageLike, name: str | None = None) -> Prediction:
        """Classifies one image: a path, the encoded bytes of an image file, a PIL image, an RGB
        array (H, W, 3) (or a grey one (H, W)) or a tensor (3, H, W), uint8 or float on the
        0..255 scale. ``name`` names it in messages and in the result (default: the path).

        Raises:
            DataError: naming the file, when it cannot be read or decoded.
            ConfigError: an object that is not an image.
        """
        x, (file_width, file_height) = self.prepare_sized(image, name)
        prediction = self.predict_prepared(x, name or _source(image))
        prediction.file_width, prediction.file_height = file_width, file_height
        return prediction

    def predict_prepared(self, x: torch.Tensor, source: str) -> Prediction:
        """Classifies one image made by :meth:`prepare` (float (1, 3, H, W)), named ``source``."""
        return self._prediction(source, self.probabilities(x)[0], x.shape[-2], x.shape[-1])


class OnnxModel(torch.nn.Module):
    """An exported ONNX model run by onnxruntime, usable where sppnet expects a model.

    ``forward(x)`` returns the logits as a tensor. ``class_names``, ``input_size``, ``config``
    and ``stride`` come from the file's metadata (written by :func:`sppnet.export.export_onnx`).

    Raises:
        ExportError: onnxruntime is missing, or the file is missing or not an sppnet export.
    """

    one_size_per_batch = True  # no padded batches: Predictor.predict_many batches equal shapes only

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("this needs the onnxruntime package: install the export extra with "
                              "pip install 'sppnet[export]'") from None
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: no such ONNX file")
        try:
            options = ort.SessionOptions()
            # Idle onnxruntime threads otherwise spin after each run, starving other work.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise ExportError(f"{path}: cannot load ONNX model ({type(err).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.class_names = json.loads(meta["class_names"])
            self.input_size = int(meta["input_size"])
            self.config = json.loads(meta.get("model", "{}"))
            # Already folded into the graph's logits; recorded for readers (None: uncalibrated).
            self.temperature = float(meta["temperature"]) if "temperature" in meta else None
        except (KeyError, ValueError, TypeError):
            raise ExportError(f"{path}: not an ONNX model exported by sppnet (metadata missing)") from None
        if not (isinstance(self.class_names, list) and self.class_names
                and all(isinstance(n, str) for n in self.class_names)):
            raise ExportError(f"{path}: its metadata's class_names is not a list of names")
        if not 1 <= self.input_size <= 100_000 or not isinstance(self.config, dict):
            raise ExportError(f"{path}: its metadata's input_size or model is not valid")
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if "logits" not in outputs or [i.name for i in self.session.get_inputs()] != ["image"]:
            raise ExportError(f"{path}: not an ONNX model exported by sppnet (needs input 'image', output 'logits')")
        width = outputs["logits"][-1] if outputs["logits"] else None
        if isinstance(width, int) and width != len(self.class_names):
            raise ExportError(f"{path}: {len(self.class_names)} class names in its metadata for a model with "
                              f"{width} outputs")
        try:
            self.stride = ModelSpec.from_dict(self.config).stride
        except ConfigError:
            self.stride = 8

    def forward(self, x: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        if sizes is not None:
            raise ExportError("the ONNX model takes one image size per batch (no padded batches)")
        image = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(["logits"], {"image": image})[0])


def load_predictor(run_dir: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
                   weights: str = "best", size: int | None = None, device: str | torch.device = "cpu",
                   flip: bool | None = None) -> Predictor:
    """The :class:`Predictor` of a run folder, or of an exported ONNX file (``onnx``; one of the two).

    Args:
        weights: ``best`` (default) or ``last`` (run folders only).
        size: warp images to ``size`` x ``size`` instead of keeping their aspect ratio.
        device: ``cpu`` (default), ``cuda`` or ``auto`` (run folders only).
        flip: average each image with its mirror image; default the run's own test view (off
            for ONNX files).

    Raises:
        ConfigError: both or neither of ``run_dir`` and ``onnx``; DataError, ExportError: the
            run folder or file cannot be used.
    """
    if (run_dir is None) == (onnx is None):
        raise ConfigError("give either a run folder or --onnx FILE" + (", not both" if run_dir else ""))
    if onnx is not None:
        return Predictor.from_onnx(onnx, size, bool(flip))
    return Predictor.from_run(run_dir, weights, size, runtime.resolve_device(device), flip)
