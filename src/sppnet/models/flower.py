"""The flower CNN family: three conv blocks, then a pooling head, then a small classifier.

Every model has three stages, as in torchvision's AlexNet: ``features`` (the conv blocks),
``pool`` (the head that turns a map into a vector) and ``classifier``. The heads:

    * ``spp``: spatial pyramid pooling (levels 1, 2, 4 by default): any input size, a vector of
      ``channels * sum(n * n)`` values (64 * 21 = 1,344 for the study).
    * ``flatten``: flattens the map, so the input must have the size the model was built for.
    * ``gap``: global average pooling: any input size, one value per channel.

Input is a float tensor of RGB values 0..255, N x 3 x H x W; the model rescales by 1/255 itself.
``forward(x, sizes)`` accepts the valid (height, width) of each image of a zero-padded batch: the
padding is re-zeroed after every block and the head pools each image over its own region, so each
image gets the logits it would get alone.

Models are built by name through :mod:`sppnet.models.registry`: ``build_model("spp", num_classes=5)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .. import kernels
from ..errors import ConfigError
from ..pooling import SpatialPyramidPooling, spatial_pyramid_pool
from ..runtime import is_tracing
from .registry import register_model

__all__ = ["PooledClassifier", "FlowerCNN", "GlobalAvgPool", "FlattenHead", "spp", "flatten", "gap"]

#: The flower family's input convention: RGB 0..255, rescaled by 1/255 inside the model.
RESCALE = {"kind": "rescale", "scale": 1 / 255}

class GlobalAvgPool(nn.Module):
    """Global average pooling over each image's valid region."""

    def output_features(self, channels: int) -> int:
        return channels

    def forward(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        return spatial_pyramid_pool(x, (1,), "avg", sizes)  # (N, C)


class FlattenHead(nn.Module):
    """Flattens a map of one fixed size (the Keras ``Flatten`` head)."""

    def __init__(self, map_size: int) -> None:
        super().__init__()
        self.map_size = map_size

    def output_features(self, channels: int) -> int:
        return channels * self.map_size * self.map_size

    def forward(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        # Channels-last order, as Keras flattens an NHWC map, so weights line up with the study's.
        return x.permute(0, 2, 3, 1).flatten(1)  # (N, H * W * C)

    def extra_repr(self) -> str:
        return f"map_size={self.map_size}"


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return float(dropout)


class PooledClassifier(nn.Module):
    """What every sppnet model shares after its ``features``: a pooling head, then dropout and
    two dense layers; ``forward(x, sizes)`` = ``forward_head(*forward_features(x, sizes))``.
    Subclasses give ``forward_features`` and ``_check_input``."""

    @staticmethod
    def make_classifier(num_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
        """Dropout, Dense ``hidden`` + ReLU, Dense ``num_classes`` (the logits: its last layer)."""
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, hidden), nn.ReLU(inplace=True),
                             nn.Linear(hidden, num_classes))

    @staticmethod
    def smallest_side(x: Tensor, sizes: Tensor | None) -> int | None:
        """Checks that ``x`` is (N, 3, H, W) and returns the smallest valid side of its images;
        None while tracing (values are symbolic there)."""
        if is_tracing():
            return None
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"the model needs input of shape (N, 3, H, W), got {tuple(x.shape)}")
        return min(x.shape[-2:]) if sizes is None or len(sizes) == 0 else int(sizes.min())

    def forward_head(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        """Pools a feature map and classifies it; returns logits (N, num_classes)."""
        return self.classifier(self.pool(x, sizes))

    def forward(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        if sizes is not None:
            sizes = torch.as_tensor(sizes, device=x.device).long()
        self._check_input(x, sizes)
        x, sizes = self.forward_features(x, sizes)
        return self.forward_head(x, sizes)


class FlowerCNN(PooledClassifier):
    """The study's CNN: rescale, conv blocks, a pooling head, dropout and two dense layers.

    Each block is Conv 3x3 (same padding) + ReLU + MaxPool 2x2 (floor), as in Keras (computed
    as conv, pool, ReLU: the same function, cheaper). Weights are initialised like Keras (Glorot-uniform kernels, zero biases) so runs start where the study's did.

    Args:
        pool: the head, a module with ``output_features(channels)`` and ``forward(x, sizes)``.
        num_classes: number of output logits. Default 5 (the flowers).
        widths: output channels of each conv block. Default (16, 32, 64), the study's.
        hidden: units of the hidden dense layer. Default 128.
        dropout: dropout rate before the dense layers; 0 disables it. Default 0.2.
        config: the arguments the model was built with, kept for saving and rebuilding.
        batch_norm: a BatchNorm2d after each conv (whose bias it replaces). Default False (the
            study has none). In training, a padded batch's statistics include its padding (a few
            percent of the pixels with shape-grouped batches); in eval mode each image of a padded
            batch still gets the logits it would get alone.
        fast_paths: build the blocks with the CPU fast paths of :mod:`sppnet.kernels` (same
            results to float tolerance, faster on a CPU). Default: :func:`kernels.fast_paths_enabled`.
        norm_after_pool: with ``batch_norm``, each block is Conv + MaxPool + BatchNorm + ReLU: the
            norm works on the pooled map, 4x smaller (a different function, since max pooling
            and a norm with a negative scale do not commute; about 1.3x faster training steps
            on a CPU). Default False: Conv + BatchNorm + MaxPool + ReLU.

    Shape:
        x: (N, 3, H, W) float RGB 0..255 with H, W >= 2 ** len(widths); sizes: (N, 2) optional;
        output: (N, num_classes) logits.
    """

    def __init__(
        self,
        pool: nn.Module,
        num_classes: int = 5,
        widths: Sequence[int] = (16, 32, 64),
        hidden: int = 128,
        dropout: float = 0.2,
        config: dict | None = None,
        batch_norm: bool = False,
        fast_paths: bool | None = None,
        norm_after_pool: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("batch_norm", batch_norm), ("norm_after_pool", norm_after_pool)):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        num_classes = _check_int("num_classes", num_classes, 1)
        hidden = _check_int("hidden", hidden, 1)
        dropout = _check_dropout(dropout)
        widths = tuple(_check_int("every width", w, 1) for w in widths)
        if not widths:
            raise ConfigError("widths must name at least one conv block")
        if norm_after_pool and not batch_norm:
            raise ConfigError("norm_after_pool places the batch norm after the pooling; it needs batch_norm")
        self.config = dict(config or {})
        if norm_after_pool:
            self.config["norm_after_pool"] = True  # absent from the models without it, as before
        self.stride = 2 ** len(widths)
        self.input_convention = dict(RESCALE)
        self.fast_paths = kernels.fast_paths_enabled() if fast_paths is None else bool(fast_paths)
        max_spp = isinstance(pool, SpatialPyramidPooling) and pool.mode == "max"
        blocks, channels = [], 3
        for i, width in enumerate(widths):
            # Keras' Conv2D(activation="relu") then MaxPool2D. ReLU and max pooling commute (both
            # are monotone), so pooling first computes the same values and gradients with the
            # ReLU on a map 4x smaller. With batch_norm: Conv (no bias) + BatchNorm + MaxPool +
            # ReLU (the norm's scale may be negative, so it stays before the pooling), or with
            # norm_after_pool Conv + MaxPool + BatchNorm + ReLU (another function, cheaper).
            layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm)]
            if batch_norm and not norm_after_pool:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.MaxPool2d(2))
            if batch_norm and norm_after_pool:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            last = i == len(widths) - 1
            blocks.append(kernels.conv_block(*layers, feeds_max_spp=max_spp and last, fast=self.fast_paths))
            channels = width
        self.features = nn.ModuleList(blocks)
        self.pool = pool
        self.num_features = pool.output_features(channels)
        self.classifier = self.make_classifier(self.num_features, hidden, num_classes, dropout)
        self._init_like_keras()

    def _init_like_keras(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _check_input(self, x: Tensor, sizes: Tensor | None) -> None:
        smallest = self.smallest_side(x, sizes)
        if smallest is None:
            return
        if smallest < self.stride:
            raise ConfigError(
                f"input of {x.shape[-2]}x{x.shape[-1]} (smallest side {smallest}) is smaller than the "
                f"network's total stride of {self.stride} px; use images of at least "
                f"{self.stride}x{self.stride}"
            )
        if isinstance(self.pool, FlattenHead):
            size = self.config["input_size"]
            if tuple(x.shape[-2:]) != (size, size):
                raise ConfigError(
                    f"the flatten model was built for {size}x{size} input, got "
                    f"{x.shape[-2]}x{x.shape[-1]}; resize images to {size}x{size} or use the spp or "
                    "gap model, which take any size"
                )

    def forward_features(self, x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Runs the rescaling and the conv blocks.

        Returns:
            The feature map (N, C, H / stride, W / stride) and the valid sizes of each image in it
            (None when ``sizes`` is None).
        """
        x = kernels.rescale(x, 1.0 / 255.0, self.features[0][0].weight, self.fast_paths)
        for block in self.features:
            x = block(x)
            if sizes is not None:
                sizes = torch.div(sizes, 2, rounding_mode="floor")  # MaxPool2d(2) floors
                rows = torch.arange(x.shape[-2], device=x.device)
                cols = torch.arange(x.shape[-1], device=x.device)
                valid = (rows[None, :, None] < sizes[:, 0, None, None]) & (
                    cols[None, None, :] < sizes[:, 1, None, None]
                )  # (N, H, W)
                # Re-zero the padding, as the next conv would see it around an image alone.
                x = x * valid.unsqueeze(1).to(x.dtype)
        return x, sizes



@register_model("spp")
def spp(
    num_classes: int = 5,
    levels: Sequence[int] = (1, 2, 4),
    pool: str = "max",
    dropout: float = 0.2,
    widths: Sequence[int] = (16, 32, 64),
    hidden: int = 128,
    batch_norm: bool = False,
    fast_paths: bool | None = None,
    norm_after_pool: bool = False,
) -> FlowerCNN:
    """The study's CNN with a spatial pyramid pooling head: any input size.

    Args:
        levels: pyramid levels. Default (1, 2, 4).
        pool: ``"max"`` (default) or ``"avg"``.
        Others: see :class:`FlowerCNN`.
    """
    head = SpatialPyramidPooling(levels, pool)
    config = dict(name="spp", num_classes=num_classes, levels=list(head.levels), pool=pool,
                  dropout=dropout, widths=list(widths), hidden=hidden, batch_norm=batch_norm)
    return FlowerCNN(head, num_classes, widths, hidden, dropout, config, batch_norm, fast_paths,
                     norm_after_pool)


@register_model("flatten")
def flatten(
    num_classes: int = 5,
    input_size: int = 180,
    dropout: float = 0.2,
    widths: Sequence[int] = (16, 32, 64),
    hidden: int = 128,
    batch_norm: bool = False,
    fast_paths: bool | None = None,
    norm_after_pool: bool = False,
) -> FlowerCNN:
    """The study's baseline: a Flatten head, so only ``input_size`` x ``input_size`` images.

    Args:
        input_size: the one input height and width the model takes. Default 180.
        Others: see :class:`FlowerCNN`.
    """
    input_size = _check_int("input_size", input_size, 1)
    stride = 2 ** len(tuple(widths))
    if input_size < stride:
        raise ConfigError(f"input_size must be at least the network's stride of {stride}, got {input_size}")
    map_size = input_size
    for _ in widths:
        map_size //= 2
    config = dict(name="flatten", num_classes=num_classes, input_size=input_size,
                  dropout=dropout, widths=list(widths), hidden=hidden, batch_norm=batch_norm)
    return FlowerCNN(FlattenHead(map_size), num_classes, widths, hidden, dropout, config, batch_norm, fast_paths,
                     norm_after_pool)


@register_model("gap")
def gap(
    num_classes: int = 5,
    dropout: float = 0.2,
    widths: Sequence[int] = (16, 32, 64),
    hidden: int = 128,
    batch_norm: bool = False,
    fast_paths: bool | None = None,
    norm_after_pool: bool = False,
) -> FlowerCNN:
    """The study's CNN with global average pooling: any input size, one value per channel."""
    config = dict(name="gap", num_classes=num_classes, dropout=dropout,
                  widths=list(widths), hidden=hidden, batch_norm=batch_norm)
    return FlowerCNN(GlobalAvgPool(), num_classes, widths, hidden, dropout, config, batch_norm, fast_paths,
                     norm_after_pool)
