"""CPU fast paths for the flower CNN family, behind one switch.

The study's network spends its CPU time in a few memory-bound passes. Each fast path below
computes the same function as the plain PyTorch layers (to float rounding) in less time on a CPU:

    * :func:`conv3x3_sparse_grad`: the backward pass of the last conv block behind a max-pooling
      SPP head visits only the output pixels that receive a gradient (a few percent of them).
    * :func:`max_pool_2x2`: 2x2 max pooling for inference without the argmax indices PyTorch's
      CPU kernel always writes.
    * :func:`rescale`: the 1/255 rescale written channels-last when the first convolution's
      weights are, so the convolution does not reorder its input twice.
    * :class:`FastConvBlock`: a conv block that uses them, and adds the conv's bias after the
      pooling in training (a max commutes with a per-channel constant), so the bias gradient is
      summed over a map 4x smaller.

The switch (as timm's ``use_fused_attn``): models ask :func:`fast_paths_enabled` when they are
built. It is on unless ``SPPNET_FAST_PATHS=0`` is in the environment, :func:`set_fast_paths`
turned it off, or a model is built with ``fast_paths=False``. Off, models are built from the
plain layers (``nn.Sequential`` of Conv, [BatchNorm], MaxPool, ReLU) with the same parameter
names, so weights load either way and give the same results to float tolerance. Traced, scripted,
exported and compiled graphs always take the plain layers. Measurements: docs/performance.md
(``python benchmarks/sparse_grad.py``, ``benchmarks/rejected.py``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .runtime import is_tracing

__all__ = [
    "fast_paths_enabled", "set_fast_paths", "fast_paths", "conv_block", "FastConvBlock", "conv3x3_sparse_grad",
    "max_pool_2x2", "rescale",
]

_override: bool | None = None


def fast_paths_enabled() -> bool:
    """Whether models built now use the CPU fast paths: :func:`set_fast_paths`'s value if set,
    else ``SPPNET_FAST_PATHS`` (``0``/``false``/``off`` turn them off), else True."""
    if _override is not None:
        return _override
    return os.environ.get("SPPNET_FAST_PATHS", "1").strip().lower() not in ("0", "false", "off", "no")


def set_fast_paths(enabled: bool | None) -> None:
    """Turns the fast paths on or off for models built from now on (None: back to the
    environment's ``SPPNET_FAST_PATHS``)."""
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"fast paths must be True, False or None, got {enabled!r}")
    _override = enabled


@contextlib.contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Within the block, models are built with (or without) the fast paths."""
    global _override
    before = _override
    set_fast_paths(enabled)
    try:
        yield
    finally:
        _override = before


def is_plain_2x2(layer: nn.Module) -> bool:
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

    The same values, NaN included, without the int64 argmax indices that PyTorch's CPU kernel
    always writes. For inference only: its gradient splits ties instead of picking the first
    maximum, and costs more.
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
    1, 2, 4), which the 2x2 pooling maps back to single pixels of the conv output. Dense oneDNN
    kernels spend the same time on zeros; here the gradients are two matrix products over those
    pixels only:

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
        g_p = g_rows.index_select(0, pixels)  # (P, O); index_select: faster than [] here (benchmarks/sparse_grad.py)
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


class FastConvBlock(nn.Sequential):
    """A conv block (Conv 3x3 [+ BatchNorm] + MaxPool 2x2 + ReLU, as ``nn.Sequential``) with the
    CPU fast paths.

    Training without batch norm: the conv's bias is added after the pooling (the same values:
    a max commutes with adding a per-channel constant), and with ``sparse_grad`` (the block
    that feeds a max-pooling SPP head) the convolution's backward pass runs on a CPU through
    :func:`conv3x3_sparse_grad`. Inference on a CPU (eval mode, no gradient to compute): the
    2x2 pooling is :func:`max_pool_2x2`. Eval mode with gradients (e.g. evidence maps), other
    devices and traced, exported or compiled graphs run the layers as declared.
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
            and not is_tracing()
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
        if needs_grad or x.device.type != "cpu" or is_tracing():  # measured on CPUs only
            return super().forward(x)
        for layer in self:
            x = max_pool_2x2(x) if is_plain_2x2(layer) else layer(x)
        return x


def conv_block(*layers: nn.Module, feeds_max_spp: bool = False, fast: bool | None = None) -> nn.Sequential:
    """A conv block of ``layers`` (Conv, [BatchNorm], MaxPool, ReLU): :class:`FastConvBlock` when
    the fast paths are on (``fast``, default :func:`fast_paths_enabled`), else ``nn.Sequential``.

    ``feeds_max_spp``: the block's output goes (through its pooling) to a max-pooling SPP head,
    so only a few of its pixels get a gradient (the sparse backward pass applies; not with batch
    norm, whose gradient is dense).
    """
    fast = fast_paths_enabled() if fast is None else fast
    if not fast:
        return nn.Sequential(*layers)
    sparse = feeds_max_spp and not any(isinstance(layer, nn.BatchNorm2d) for layer in layers)
    return FastConvBlock(*layers, sparse_grad=sparse)


def rescale(x: Tensor, scale: float, first_weight: Tensor, fast: bool = True) -> Tensor:
    """``x * scale``; with ``fast``, written channels-last when the first conv's weights are
    channels-last and ``x`` is not (augmented batches come from ``grid_sample`` contiguous): one
    pass instead of the convolution reordering its input forward and again for the weight
    gradient."""
    if (
        fast
        and x.dim() == 4
        and x.is_floating_point()
        and first_weight.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous(memory_format=torch.channels_last)
        and not (x.requires_grad and torch.is_grad_enabled())
        and not is_tracing()
    ):
        return torch.mul(x, scale, out=torch.empty_like(x, memory_format=torch.channels_last))
    return x * scale
