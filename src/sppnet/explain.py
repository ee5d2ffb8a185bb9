"""Where in the whole image the network looked: class evidence maps at any size.

    predictor = Predictor.from_run("runs/spp")
    explanation = explain(predictor, "sunflower.jpg")         # the predicted class
    explanation.heatmap            # (H, W) float in [0, 1], the photo's size (longer side at most 1024 px)
    explanation.pyramid            # {4: [[share, ...], ...], 2: ..., 1: ...}: evidence per SPP bin

**Method: Grad-CAM** (Selvaraju et al. 2017) on the map the last conv block hands to the head.
Each channel of that map is weighted by the mean gradient of the class's logit over the image's
own valid region, the weighted channels are summed, negative evidence is cut (ReLU), and the
result is scaled to [0, 1] and resized bilinearly from the map (1/stride of the image as the
model saw it) to the image. Grad-CAM was chosen because it needs one forward and one backward
pass through the head only (the gradient stops at the last conv block's output), so it costs
about a prediction, works for every head (SPP, Flatten, GAP) at any input size, and is exact for
padded batches: each image's weights are averaged over its own valid region, so its map is the
map it gets alone.

**The pyramid view** (SPP heads only): for each level n, the class's evidence in each of the
n x n bins is the gradient of the class's logit with respect to the bin's pooled value times that
value, summed over the channels, its positive part normalised to shares that sum to 1 over the
level. It says which regions of the pyramid carried the decision, in the head's own terms.

Gradients never reach the weights (``torch.autograd.grad`` on the map only), and the model's
train/eval mode is restored afterwards. The probabilities shown are the predictor's (averaged with
the mirror image when it has ``flip``); the map is that of the image as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .errors import ConfigError, DataError
from .pooling import SpatialPyramidPooling
from .predict import Prediction, Predictor, to_pil_image

__all__ = [
    "Explanation", "evidence_maps", "explain", "explain_top", "explain_files", "draw",
]


@dataclass
class Explanation:
    """Why one image got (or would get) a class.

    Attributes:
        prediction: the image's prediction (all classes' probabilities).
        class_name: the class explained; probability: its probability.
        heatmap: (H, W) float32 in [0, 1] at the image's own size, its longer side at most MAX_OVERLAY_SIDE (1024).
        model_heatmap: (h, w) float32 in [0, 1] at the size the model saw the image.
        pyramid: SPP level n -> n x n shares of the class's evidence (rows top to bottom), each
            level summing to 1 (or all 0 when the level holds no positive evidence); empty for
            heads without a pyramid.
        image: the photo as RGB uint8 (H, W, 3) at its original size, for drawing.
    """

    prediction: Prediction
    class_name: str
    probability: float
    heatmap: np.ndarray
    model_heatmap: np.ndarray
    pyramid: dict[int, list[list[float]]] = field(default_factory=dict)
    image: np.ndarray | None = None

    def peak(self) -> tuple[int, int]:
        """(x, y) of the heat map's largest value, in original-image pixels."""
        y, x = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return int(x), int(y)

    def to_dict(self) -> dict:
        return {
            "image": self.prediction.source, "class": self.class_name, "probability": self.probability,
            "probabilities": self.prediction.probabilities,
            "pyramid": {str(n): shares for n, shares in self.pyramid.items()},
            "peak": list(self.peak()),
        }


def _levels(model: torch.nn.Module) -> tuple[int, ...]:
    pool = getattr(model, "pool", None)
    return tuple(pool.levels) if isinstance(pool, SpatialPyramidPooling) else ()


def evidence_maps(model: torch.nn.Module, x: Tensor, sizes: Tensor | None, target: Tensor
                  ) -> tuple[list[Tensor], dict[int, Tensor]]:
    """Grad-CAM maps and pyramid shares of a (possibly zero-padded) batch.

    Args:
        model: a model of the flower family (with ``forward_features``, ``pool``, ``classifier``).
        x: float images (N, 3, H, W), RGB 0..255.
        sizes: (N, 2) valid (height, width) of each image, or None for a uniform batch.
        target: (N,) the class to explain for each image.

    Returns:
        Each image's map over its own valid region, (h_i, w_i) in [0, 1] at the image's input
        size; and for each SPP level n, shares (N, n, n).

    Shape:
        x: (N, 3, H, W); sizes: (N, 2); target: (N,).
    """
    features, map_sizes, sizes = _features(model, x, sizes)
    return _evidence(model, features, map_sizes, sizes, target)


def _features(model: torch.nn.Module, x: Tensor, sizes: Tensor | None
              ) -> tuple[Tensor, Tensor, Tensor]:
    """The conv features of a batch (eval mode, no gradient), their valid sizes and the images'."""
    if not all(hasattr(model, name) for name in ("forward_features", "pool", "classifier")):
        raise ConfigError("explaining needs a model of the flower family (an ONNX file has no gradients)")
    n, _, height, width = x.shape
    was_training = model.training
    model.eval()
    try:
        if sizes is not None:
            sizes = torch.as_tensor(sizes, device=x.device).long()
        with torch.no_grad():
            features, map_sizes = model.forward_features(x, sizes)  # (N, C, h, w)
    finally:
        model.train(was_training)
    if map_sizes is None:
        map_sizes = torch.tensor([features.shape[-2:]] * n, device=features.device)
        sizes = torch.tensor([[height, width]] * n, device=features.device)
    return features.detach().float(), map_sizes, sizes


def _evidence(model: torch.nn.Module, features: Tensor, map_sizes: Tensor, sizes: Tensor, target: Tensor
              ) -> tuple[list[Tensor], dict[int, Tensor]]:
    """:func:`evidence_maps` from the conv features: the head's gradients for ``target``."""
    n = len(features)
    was_training = model.training
    model.eval()
    try:
        features = features.clone().requires_grad_(True)
        with torch.enable_grad():
            pooled = model.pool(features, map_sizes)  # (N, F)
            logits = model.classifier(pooled)  # (N, K)
            chosen = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            grad_map, grad_pooled = torch.autograd.grad(chosen, (features, pooled))
    finally:
        model.train(was_training)
    features, pooled = features.detach(), pooled.detach()
    maps = []
    for i in range(n):
        h, w = (int(v) for v in map_sizes[i])
        a, g = features[i, :, :h, :w], grad_map[i, :, :h, :w]  # (C, h, w): the image's own region
        weights = g.mean(dim=(1, 2))  # (C,)
        cam = torch.relu((weights[:, None, None] * a).sum(0))  # (h, w)
        top = cam.max()
        cam = cam / top if top > 0 else cam
        full = (int(sizes[i, 0]), int(sizes[i, 1]))
        cam = F.interpolate(cam[None, None], size=full, mode="bilinear", align_corners=False)[0, 0]
        maps.append(cam.clamp(0, 1).cpu())
    pyramid = {}
    channels = features.shape[1]
    offset = 0
    for level in _levels(model):
        span = channels * level * level
        contribution = (grad_pooled[:, offset:offset + span] * pooled[:, offset:offset + span])
        per_bin = contribution.view(n, channels, level, level).sum(1).clamp_min(0)  # (N, n, n)
        total = per_bin.sum(dim=(1, 2), keepdim=True)
        pyramid[level] = torch.where(total > 0, per_bin / total.clamp_min(1e-30), torch.zeros_like(per_bin)).cpu()
        offset += span
    return maps, pyramid


def _resize_map(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    if cam.shape == (height, width):
        return cam.astype(np.float32)
    image = Image.fromarray(cam.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


#: The longest side of the photo a heat map is laid over (and of the heat map): a large photo is
#: shown shrunk, so that explaining an 8000 x 8000 image costs what a 1024 x 1024 one does.
MAX_OVERLAY_SIDE = 1024


def _overlay_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, MAX_OVERLAY_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _original(image) -> np.ndarray:
    """The photo as RGB uint8 for the overlay: at its own size, its longer side at most
    :data:`MAX_OVERLAY_SIDE` (a JPEG is decoded at a reduced scale, never whole)."""
    from .data import decode_image

    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        return np.asarray(decode_image(image, _overlay_size))
    pil = to_pil_image(image)
    size = _overlay_size(*pil.size)
    return np.asarray(pil if pil.size == size else pil.resize(size, Image.Resampling.BILINEAR))


def explain_top(predictor: Predictor, image, k: int = 1, target: str | None = None,
                name: str | None = None) -> list[Explanation]:
    """Explains one image for its ``k`` likeliest classes (or for the class named ``target``).

    Args:
        predictor: a :class:`~sppnet.predict.Predictor` of a run (not of an ONNX file).
        image: a path, the bytes of an image file, a PIL image or an RGB uint8 array.
        k: how many of the likeliest classes to explain, most likely first.
        target: a class name to explain instead.
        name: how messages and results name the image.

    Raises:
        ConfigError: an unknown class name, ``k`` out of range, an ONNX predictor.
        DataError: the image cannot be read.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(predictor.class_names):
        raise ConfigError(f"--top-k must be an integer in 1..{len(predictor.class_names)}, got {k!r}")
    if target is not None and target not in predictor.class_names:
        raise ConfigError(f"--class {target!r} is not one of the run's classes: {', '.join(predictor.class_names)}")
    x, (file_width, file_height) = predictor.prepare_sized(image, name)
    source = name or (str(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__)
    prediction = predictor.predict_prepared(x, source)
    prediction.file_width, prediction.file_height = file_width, file_height
    if target is not None:
        classes = [predictor.class_names.index(target)]
    else:
        order = np.argsort([-prediction.probabilities[c] for c in predictor.class_names], kind="stable")
        classes = [int(c) for c in order[:k]]
    # The conv features once, the head's gradient for each class (its K copies are cheap).
    features, map_sizes, sizes = _features(predictor.model, x.to(predictor.device), None)
    k = len(classes)
    maps, pyramid = _evidence(predictor.model, features.expand(k, -1, -1, -1), map_sizes.expand(k, -1),
                              sizes.expand(k, -1), torch.tensor(classes))
    original = _original(image)
    height, width = original.shape[:2]
    out = []
    for j, c in enumerate(classes):
        cam = maps[j].numpy()
        out.append(Explanation(
            prediction=prediction,
            class_name=predictor.class_names[c],
            probability=prediction.probabilities[predictor.class_names[c]],
            heatmap=_resize_map(cam, width, height),
            model_heatmap=cam.astype(np.float32),
            pyramid={n: shares[j].tolist() for n, shares in pyramid.items()},
            image=original,
        ))
    return out


def explain(predictor: Predictor, image, target: str | None = None, name: str | None = None) -> Explanation:
    """Explains one image: the predicted class, unless ``target`` names another (see :func:`explain_top`)."""
    return explain_top(predictor, image, 1, target, name)[0]


def draw(explanations: Sequence[Explanation], path: str | os.PathLike) -> Path:
    """Writes one PNG for one image's explanations: per class, the photo with its heat map and
    the pyramid's shares; the first row's title is the study's sentence."""
    from .report import plot_explanations

    rows = []
    for k, e in enumerate(explanations):
        if k == 0 and e.class_name == e.prediction.class_name:
            title = f"{e.prediction.sentence()}\nEvidence for {e.class_name}"
        else:
            title = f"Evidence for {e.class_name} ({100 * e.probability:.2f} percent)"
        rows.append((title, e.heatmap, e.pyramid))
    path = Path(path)
    plot_explanations(explanations[0].image, rows, path)
    return path


def explain_files(predictor: Predictor, paths: Sequence[str | os.PathLike], out: str | os.PathLike, k: int = 1,
                  target: str | None = None) -> Iterator[tuple[Path, list[Explanation], Path] | DataError]:
    """Explains image files and draws each into ``out/<name>.explain.png`` (what ``sppnet
    explain`` does); two images of one name (``a/x.jpg``, ``b/x.jpg``) get ``x.explain.png`` and
    ``x-2.explain.png``, so that every input has its own picture. Yields, in order, (image, its
    explanations, the picture written), or the :class:`~sppnet.errors.DataError` naming a file
    that cannot be read."""
    out = Path(out)
    taken: set[str] = set()
    for path in map(Path, paths):
        try:
            explanations = explain_top(predictor, path, k, target)
        except DataError as err:
            yield err
            continue
        name, n = f"{path.stem}.explain.png", 1
        while name in taken:
            n += 1
            name = f"{path.stem}-{n}.explain.png"
        taken.add(name)
        yield path, explanations, draw(explanations, out / name)
