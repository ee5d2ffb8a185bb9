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

Models are built by name: ``build_model("spp", num_classes=5)``; ``list_models()`` names them.
"""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .pooling import SpatialPyramidPooling, spatial_pyramid_pool
from .pooling import _is_tracing as _capturing  # scripted, traced, exported or compiled

__all__ = [
    "FlowerCNN", "build_model", "list_models", "register_model", "count_parameters", "max_pool_2x2",
    "conv3x3_sparse_grad",
]

_MODELS: dict[str, Callable[..., "FlowerCNN"]] = {}


def register_model(name: str) -> Callable[[Callable[..., "FlowerCNN"]], Callable[..., "FlowerCNN"]]:
    """Decorator that registers a model builder under ``name``."""

    def wrap(fn: Callable[..., "FlowerCNN"]) -> Callable[..., "FlowerCNN"]:
        if name in _MODELS:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def build_model(name: str, **kwargs) -> "FlowerCNN":
    """Builds a registered model by name.

    Args:
        name: one of :func:`list_models` (``"spp"``, ``"flatten"``, ``"gap"``).
        **kwargs: the builder's arguments, e.g. ``num_classes``, ``levels``, ``pool``, ``dropout``.

    Raises:
        ConfigError: for an unknown name (the message lists the valid ones and suggests the
            closest) or an invalid argument.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), list_models(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(list_models())}{hint}")
    try:
        return _MODELS[name](**kwargs)
    except TypeError as err:  # an unexpected keyword argument
        raise ConfigError(f"model {name!r}: {err}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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


def _is_plain_2x2(layer: nn.Module) -> bool:
    """An nn.MaxPool2d(2): 2x2 windows, stride 2, no padding or dilation, floor mode, no indices."""
    return (
        isinstance(layer, nn.MaxPool2d)
        and layer.kernel_size in (2, (2, 2))
        and layer.stride in (2, (2, 2))
        and layer.padding in (0, (0, 0))
        and layer.dilation in (1, (1, 1))
        and not layer.ceil_mode
        and not layer.return_indices
    )


def max_pool_2x2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2)`` (floor mode) as two element-wise maxima over strided views.

    The same values, NaN included, but without the int64 argmax indices that PyTorch's CPU
    kernel always writes: 1.1-2.1x faster on the study's channels-last maps and 7-10x on
    contiguous ones (``python benchmarks/rejected.py``). For inference only: its gradient splits
    ties instead of picking the first maximum, and costs more.
    """
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1))


class _Conv3x3SparseGrad(torch.autograd.Function):
    """A 3x3 convolution (stride 1, padding 1, no bias) whose backward pass visits only the
    output pixels that receive a gradient.

    Behind a max-pooling SPP head, the last conv block's output gradient is almost all zeros:
    each channel of each image passes gradient to at most sum(n * n) positions (21 for levels
    1, 2, 4), which the 2x2 pooling maps back to single pixels of the conv output, so 0.3-1 % of
    its values and 15-25 % of its pixels are non-zero at 180x180. Dense oneDNN kernels spend the
    same time on zeros; here the gradients are two matrix products over those pixels only:

        weight gradient (O, 9C) = G_p^T (O, P) @ patches (P, 9C)
        input gradient: rows of G_p (P, O) @ W (O, 9C), added into each pixel's 3x3 neighbours,

    where G_p holds the P pixels' output gradients and ``patches`` their 3x3 input neighbourhoods
    (zeros outside the map). The same sums as the dense kernels, in another order. When more than
    a third of the pixels carry a gradient the dense kernels are faster, and are used.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, None, 1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad
        n, o, h, w = grad.shape
        c, m = x.shape[1], n * h * w
        g_rows = grad.permute(0, 2, 3, 1).reshape(m, o)  # (N*H*W, O), a view of a channels-last grad
        pixels = g_rows.abs().sum(1).nonzero().squeeze(1)  # (P,) pixels with any gradient
        if pixels.numel() * 3 > m:
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [need_x, need_w, False]
            )
            return gx, gw
        g_p = g_rows.index_select(0, pixels)  # (P, O); index_select: several times faster than [] here
        dy = torch.tensor([d[0] for d in _NEIGHBOURS], device=grad.device)
        dx = torch.tensor([d[1] for d in _NEIGHBOURS], device=grad.device)
        ny, nx = (pixels // w % h)[:, None] + dy, (pixels % w)[:, None] + dx  # (P, 9)
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        neighbours = torch.where(inside, pixels[:, None] + (dy * w + dx), m)  # (P, 9); outside -> row m
        gx = gw = None
        if need_w:
            zero = x.new_zeros(1, c)  # row m: what lies outside the map
            x_rows = torch.cat((x.permute(0, 2, 3, 1).reshape(m, c), zero))  # (N*H*W + 1, C)
            patches = x_rows.index_select(0, neighbours.view(-1))  # (P * 9, C)
            gw = g_p.t().mm(patches.view(-1, 9 * c))  # (O, 9C)
            gw = gw.view(o, 3, 3, c).permute(0, 3, 1, 2)  # (O, C, 3, 3), channels-last
        if need_x:
            spread = g_p.mm(weight.permute(0, 2, 3, 1).reshape(o, 9 * c))  # (P, 9C)
            rows = x.new_zeros(m + 1, c)  # row m collects what falls outside the map
            rows.index_add_(0, neighbours.view(-1), spread.view(-1, c))
            gx = rows[:m].view(n, h, w, c).permute(0, 3, 1, 2)  # (N, C, H, W), channels-last
        return gx, gw


def conv3x3_sparse_grad(x: Tensor, weight: Tensor) -> Tensor:
    """``F.conv2d(x, weight, None, 1, 1)`` for a 3x3 kernel, with a backward pass that costs
    in proportion to the output pixels that receive a gradient (see :class:`_Conv3x3SparseGrad`).

    Shape:
        x: (N, C, H, W); weight: (O, C, 3, 3); output: (N, O, H, W).

    Raises:
        ConfigError: for other shapes.
    """
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[-2:]) != (3, 3) or weight.shape[1] != x.shape[1]:
        raise ConfigError(
            f"conv3x3_sparse_grad needs x (N, C, H, W) and weight (O, C, 3, 3), got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    return _Conv3x3SparseGrad.apply(x, weight)


class ConvBlock(nn.Sequential):
    """Conv 3x3 [+ BatchNorm] + MaxPool 2x2 + ReLU, as an ``nn.Sequential`` of those layers.

    Training, without batch norm: the conv's bias is added after the pooling. A max commutes
    with adding a per-channel constant, so the values are those of conv-with-bias then pool (bit
    for bit in the pooling; the convolution rounds its sum without the bias), and the bias
    gradient is summed over a map 4x smaller. On a CPU that saves most of the cost of the bias
    gradient inside the first layer's weight-gradient kernel (``python benchmarks/rejected.py``
    compares it). With ``sparse_grad`` (set by :class:`FlowerCNN` on the block that feeds a
    max-pooling SPP head) the convolution's backward pass runs on a CPU through
    :func:`conv3x3_sparse_grad`, which skips the output pixels that get no gradient.

    Inference on a CPU (eval mode with no gradient to compute): the layers run in order, the
    bias inside the convolution, and the 2x2 max pooling as :func:`max_pool_2x2`, which writes
    no argmax indices. Eval mode with gradients (e.g. saliency maps), other devices, and any
    traced, exported or compiled graph (so an exported file holds the plain MaxPool and Conv
    operators) run the layers as declared. The parameters and their names are nn.Conv2d's, so
    weights load either way.
    """

    def __init__(self, *layers: nn.Module, sparse_grad: bool = False) -> None:
        super().__init__(*layers)
        conv = self[0]
        if sparse_grad and (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != (
            (3, 3), (1, 1), (1, 1), (1, 1), 1
        ):
            raise ConfigError(f"sparse_grad needs a 3x3 conv with stride 1 and padding 1, got {conv}")
        self.sparse_grad = sparse_grad

    def _sparse_grad_applies(self, x: Tensor) -> bool:
        return (
            self.sparse_grad
            and x.device.type == "cpu"
            and x.dtype == self[0].weight.dtype
            and not torch.is_autocast_enabled("cpu")
            and not _capturing()
        )

    def forward(self, x: Tensor) -> Tensor:
        conv = self[0]
        if self.training:
            if conv.bias is None or len(self) != 3:
                return super().forward(x)
            if self._sparse_grad_applies(x):
                x = conv3x3_sparse_grad(x, conv.weight)
            else:
                x = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
            return F.relu(self[1](x) + conv.bias.view(1, -1, 1, 1), inplace=True)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
        if needs_grad or x.device.type != "cpu" or _capturing():  # measured on CPUs only
            return super().forward(x)
        for layer in self:
            x = max_pool_2x2(x) if _is_plain_2x2(layer) else layer(x)
        return x


class FlowerCNN(nn.Module):
    """The study's CNN: rescale, conv blocks, a pooling head, dropout and two dense layers.

    Each block is Conv 3x3 (same padding) + ReLU + MaxPool 2x2 (floor), as in Keras (computed
    as conv, pool, ReLU: the same function, cheaper). Weights are
    initialised like Keras (Glorot-uniform kernels, zero biases) so runs start where the study's did.

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
    ) -> None:
        super().__init__()
        if not isinstance(batch_norm, bool):
            raise ConfigError(f"batch_norm must be True or False, got {batch_norm!r}")
        num_classes = _check_int("num_classes", num_classes, 1)
        hidden = _check_int("hidden", hidden, 1)
        dropout = _check_dropout(dropout)
        widths = tuple(_check_int("every width", w, 1) for w in widths)
        if not widths:
            raise ConfigError("widths must name at least one conv block")
        self.config = dict(config or {})
        self.stride = 2 ** len(widths)
        # Behind max-pooling SPP only a few pixels of the last conv map get a gradient.
        sparse_last = isinstance(pool, SpatialPyramidPooling) and pool.mode == "max" and not batch_norm
        blocks, channels = [], 3
        for i, width in enumerate(widths):
            # Keras' Conv2D(activation="relu") then MaxPool2D; ReLU and max pooling commute
            # (both are monotone), so pooling first computes the same values and gradients with
            # the ReLU on a map 4x smaller: a large saving on CPU, where these passes are
            # memory-bound.
            # With batch_norm the block is Conv (no bias) + BatchNorm + ReLU + MaxPool, computed
            # as conv, norm, pool, ReLU for the same reason (the norm's scale may be negative, so
            # it stays before the pooling).
            layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            sparse_grad = sparse_last and i == len(widths) - 1
            blocks.append(ConvBlock(*layers, nn.MaxPool2d(2), nn.ReLU(inplace=True), sparse_grad=sparse_grad))
            channels = width
        self.features = nn.ModuleList(blocks)
        self.pool = pool
        self.num_features = pool.output_features(channels)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.num_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        self._init_like_keras()

    def _init_like_keras(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _check_input(self, x: Tensor, sizes: Tensor | None) -> None:
        if _capturing():
            return
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"the model needs input of shape (N, 3, H, W), got {tuple(x.shape)}")
        smallest = min(x.shape[-2:]) if sizes is None else int(sizes.min())
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

    def _rescale(self, x: Tensor) -> Tensor:
        """``x / 255``, written channels-last when the first conv's weights are channels-last
        and ``x`` is not (augmented batches come from ``grid_sample`` contiguous): one pass
        instead of the convolution reordering its input forward and again for the weight
        gradient."""
        scale = 1.0 / 255.0
        weight = self.features[0][0].weight
        if (
            x.dim() == 4
            and x.is_floating_point()
            and weight.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous(memory_format=torch.channels_last)
            and not (x.requires_grad and torch.is_grad_enabled())
            and not _capturing()
        ):
            return torch.mul(x, scale, out=torch.empty_like(x, memory_format=torch.channels_last))
        return x * scale

    def forward_features(self, x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Runs the rescaling and the conv blocks.

        Returns:
            The feature map (N, C, H / stride, W / stride) and the valid sizes of each image in it
            (None when ``sizes`` is None).
        """
        x = self._rescale(x)
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

    def forward_head(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        """Pools a feature map and classifies it; returns logits (N, num_classes)."""
        return self.classifier(self.pool(x, sizes))

    def forward(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        if sizes is not None:
            sizes = torch.as_tensor(sizes, device=x.device).long()
        self._check_input(x, sizes)
        x, sizes = self.forward_features(x, sizes)
        return self.forward_head(x, sizes)


@register_model("spp")
def spp(
    num_classes: int = 5,
    levels: Sequence[int] = (1, 2, 4),
    pool: str = "max",
    dropout: float = 0.2,
    widths: Sequence[int] = (16, 32, 64),
    hidden: int = 128,
    batch_norm: bool = False,
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
    return FlowerCNN(head, num_classes, widths, hidden, dropout, config, batch_norm)


@register_model("flatten")
def flatten(
    num_classes: int = 5,
    input_size: int = 180,
    dropout: float = 0.2,
    widths: Sequence[int] = (16, 32, 64),
    hidden: int = 128,
    batch_norm: bool = False,
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
    return FlowerCNN(FlattenHead(map_size), num_classes, widths, hidden, dropout, config, batch_norm)


@register_model("gap")
def gap(
    num_classes: int = 5,
    dropout: float = 0.2,
    widths: Sequence[int] = (16, 32, 64),
    hidden: int = 128,
    batch_norm: bool = False,
) -> FlowerCNN:
    """The study's CNN with global average pooling: any input size, one value per channel."""
    config = dict(name="gap", num_classes=num_classes, dropout=dropout,
                  widths=list(widths), hidden=hidden, batch_norm=batch_norm)
    return FlowerCNN(GlobalAvgPool(), num_classes, widths, hidden, dropout, config, batch_norm)
