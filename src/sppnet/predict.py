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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .data import ImageStore, _decode_many, decode_image
from .errors import ConfigError, DataError
from .evaluate import mirror
from .runs import RunFolder
from .sizing import Native

__all__ = ["Prediction", "Predictor", "sentence"]


def sentence(class_name: str, confidence: float) -> str:
    """The study's sentence, with the confidence in percent to two decimals."""
    return f"This image most likely belongs to {class_name} with {100 * confidence:.2f} percent confidence."


@dataclass
class Prediction:
    """One image's prediction.

    Attributes:
        class_name: the most likely class; confidence: its probability.
        probabilities: every class's probability, in class order.
        width, height: the size the image was classified at.
    """

    source: str
    class_name: str
    confidence: float
    probabilities: dict[str, float]
    width: int
    height: int

    def sentence(self) -> str:
        return sentence(self.class_name, self.confidence)

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict:
        return {
            "image": self.source, "class": self.class_name, "confidence": self.confidence,
            "probabilities": self.probabilities, "width": self.width, "height": self.height,
        }


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
        self.device = torch.device(device)
        self.train_size = int(train_size)
        flatten_size = getattr(model, "config", {}).get("input_size")
        if size is None and flatten_size:
            size = flatten_size  # a flatten model takes one size only
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
            raise ConfigError(f"--size must be an integer >= 8, got {size!r}")
        if size is not None and flatten_size and size != flatten_size:
            raise ConfigError(f"this run's flatten model takes {flatten_size}x{flatten_size} images only, not --size {size}")
        self.size = size
        self._native = Native(self.train_size)

    @classmethod
    def from_run(cls, path: str | os.PathLike, weights: str = "best", size: int | None = None,
                 device: str | torch.device = "cpu", flip: bool | None = None) -> "Predictor":
        """Loads a run folder's model (``best`` or ``last`` weights). ``flip`` defaults to the
        run's own test view (its ``flip_test``)."""
        if weights not in ("best", "last"):
            raise ConfigError(f"weights must be 'best' or 'last', got {weights!r}")
        run = RunFolder(path)
        config = run.read_config()
        model = run.load_model(weights, device)
        if flip is None:
            flip = bool(config.get("train", {}).get("flip_test", False))
        return cls(model, config["class_names"], config.get("input_size") or 180, size, device, flip)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, size: int | None = None, flip: bool = False) -> "Predictor":
        """Classifies with an ONNX file exported by sppnet, through onnxruntime (CPU)."""
        from .export import OnnxModel

        model = OnnxModel(path)
        return cls(model, model.class_names, model.input_size, size, "cpu", flip)

    def _target(self, width: int, height: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size, self.size
        return self._native.store_size(width, height)

    def prepare(self, image: str | os.PathLike | bytes | Image.Image | np.ndarray, name: str | None = None) -> torch.Tensor:
        """Decodes (a path or encoded bytes) and resizes one image: float (1, 3, H, W), RGB 0..255."""
        if isinstance(image, (str, os.PathLike, bytes, bytearray)):
            pil = decode_image(image, self._target, name=name)
        else:
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            if not isinstance(image, Image.Image):
                raise ConfigError(f"cannot classify a {type(image).__name__}: give a path, a PIL image or an array")
            pil = image.convert("RGB")
            target = self._target(*pil.size)
            if pil.size != target:
                pil = pil.resize(target, Image.Resampling.BILINEAR)
        array = torch.from_numpy(np.array(pil))  # (H, W, 3) uint8
        return array.permute(2, 0, 1).unsqueeze(0).float().contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities (N, classes) of prepared images; ``sizes`` (N, 2): the valid
        (height, width) of each image of a zero-padded batch."""
        x = x.to(self.device)
        args = () if sizes is None else (sizes.to(self.device),)
        probs = torch.softmax(self.model(x, *args).float(), dim=1)
        if self.flip:
            probs = 0.5 * (probs + torch.softmax(self.model(mirror(x, sizes), *args).float(), dim=1))
        return probs.cpu()

    def _prediction(self, source: str, probs: torch.Tensor, height: int, width: int) -> Prediction:
        best = int(probs.argmax())
        return Prediction(
            source=source,
            class_name=self.class_names[best],
            confidence=float(probs[best]),
            probabilities={name: float(p) for name, p in zip(self.class_names, probs)},
            width=int(width),
            height=int(height),
        )

    def predict_many(self, images: Iterable[str | os.PathLike], batch_size: int = 32, workers: int | None = None,
                     chunk: int = 256) -> Iterator[Prediction | DataError]:
        """Classifies many image files; yields, in their order, a :class:`Prediction` each, or the
        :class:`DataError` naming a file that cannot be read.

        Files are decoded ``chunk`` at a time in parallel threads (so memory holds one chunk);
        within a chunk, images of similar shape run together in batches of up to ``batch_size``,
        zero-padded to the largest with each image's valid size, which gives each image the
        probabilities it gets alone (the model's padded-batch contract). An ONNX model takes one
        size per batch, so there only images of the same shape share a batch.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        paths = list(images)
        padded_ok = not getattr(self.model, "one_size_per_batch", False)
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            # (Decoding the next chunk during inference was slower on 2 cores.)
            loaded = _decode_many(part, self._target, workers, warn=False)
            store = ImageStore(loaded.images, [0] * len(loaded.images))
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
            results = {i: k for k, i in enumerate(loaded.kept)}
            failures = iter(loaded.failures)
            for i, path in enumerate(part):
                if i in results:
                    k = results[i]
                    yield self._prediction(str(path), probs[k], *store.sizes[k].tolist())
                else:
                    yield DataError(next(failures)[1])

    def predict(self, image: str | os.PathLike | bytes | Image.Image | np.ndarray, name: str | None = None) -> Prediction:
        """Classifies one image: a path, the encoded bytes of an image file, a PIL image or an RGB
        uint8 array. ``name`` names it in messages and in the result (default: the path).

        Raises:
            DataError: naming the file, when it cannot be read or decoded.
        """
        x = self.prepare(image, name)
        source = name or (str(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__)
        return self._prediction(source, self.probabilities(x)[0], x.shape[-2], x.shape[-1])


def expand_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, sorted)."""
    from .data import IMAGE_EXTENSIONS

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                          and f.name.lower().endswith(IMAGE_EXTENSIONS))
        else:
            out.append(p)
    return out
