"""Spatial pyramid pooling (He et al. 2014, arXiv 1406.4729) with exact bins for every size.

A pyramid level ``n`` splits a feature map of height ``H`` and width ``W`` into ``n x n`` bins and
pools each bin to one value per channel. Bin ``i`` of level ``n`` spans the rows

    [floor(i * H / n), ceil((i + 1) * H / n))

and likewise the columns. These are the bins of ``torch.nn.functional.adaptive_max_pool2d``: they
cover the map, and none is empty, even when the map is smaller than ``n`` (bins then overlap).
The often-copied recipe window = stride = ceil(H / n) with valid padding does not have this
property (H = 22, n = 4 gives 3 bins).

Pool modes:
    * ``"max"``: the largest value of each bin (SPP-net).
    * ``"avg"``: the mean of each bin.

Output: for each level in the given order, ``C * n * n`` values ordered like
``adaptive_max_pool2d(x, n).flatten(1)``; ``C * sum(n * n)`` values in all, whatever ``H`` and ``W``.

Padded batches: ``sizes`` gives the valid height and width of each image in a zero-padded batch;
each image is then pooled over its own valid region, giving what pooling it alone would give.

The bins are computed with tensor operations from the (possibly symbolic) height and width, with
no Python loop over the batch and no data-dependent shapes, so the layer exports to ONNX with
dynamic height and width. In eager mode, uniform batches use PyTorch's adaptive pooling kernels,
which have the same bins and are faster.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .runtime import is_tracing

__all__ = ["POOL_MODES", "SpatialPyramidPooling", "spatial_pyramid_pool", "check_levels"]

POOL_MODES = ("max", "avg")


def check_levels(levels: Iterable[int]) -> tuple[int, ...]:
    """Validates pyramid levels and returns them as a tuple.

    Raises:
        ConfigError: if ``levels`` is empty or holds anything but integers >= 1.
    """
    try:
        levels = tuple(levels)
    except TypeError:
        raise ConfigError(f"levels must be a sequence of integers >= 1, got {levels!r}") from None
    if not levels:
        raise ConfigError("levels must not be empty; the study uses (1, 2, 4)")
    for n in levels:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"every level must be an integer >= 1, got {n!r} in levels {levels}")
    return levels


def _check_mode(mode: str) -> str:
    if mode not in POOL_MODES:
        raise ConfigError(f"mode must be one of {', '.join(POOL_MODES)}; got {mode!r}")
    return mode


def _check_sizes(sizes: Tensor, x: Tensor) -> Tensor:
    if not isinstance(sizes, Tensor):
        sizes = torch.as_tensor(sizes)
    if sizes.dtype.is_floating_point or sizes.dtype == torch.bool or sizes.dtype.is_complex:
        raise ConfigError(f"sizes must be an integer tensor, got dtype {sizes.dtype}")
    if sizes.shape != (x.shape[0], 2):
        raise ConfigError(
            f"sizes must have shape (N, 2) = ({x.shape[0]}, 2) for this batch, got {tuple(sizes.shape)}"
        )
    # Validating values needs the numbers on the host; skip while tracing, where they are symbolic.
    if not is_tracing():
        if bool((sizes < 1).any()):
            raise ConfigError(f"every valid size must be >= 1, got {sizes.tolist()}")
        too_big = (sizes[:, 0] > x.shape[-2]) | (sizes[:, 1] > x.shape[-1])
        if bool(too_big.any()):
            raise ConfigError(
                f"valid sizes {sizes.tolist()} exceed the tensor's height x width "
                f"{x.shape[-2]} x {x.shape[-1]}"
            )
    return sizes.to(device=x.device, dtype=torch.long)


def _bin_bounds(length: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """First and one-past-last position of each bin of level ``n``: (N, n) each."""
    i = torch.arange(n, device=length.device)  # (n,)
    length = length.unsqueeze(1)  # (N, 1)
    start = torch.div(i * length, n, rounding_mode="floor")  # (N, n)
    end = torch.div((i + 1) * length + (n - 1), n, rounding_mode="floor")  # ceil, (N, n)
    return start, end


def _bin_index(length: Tensor, extent: int | Tensor, n: int) -> tuple[Tensor, int | Tensor]:
    """Positions of each bin of level ``n`` along one axis, padded by repeating the last one.

    Args:
        length: (N,) valid length of each image along the axis.
        extent: the padded length of the axis (an int, symbolic under export).

    Returns:
        Index (N, n, K) and K, the longest a bin can be in this extent (bins are at most
        ceil(length / n) + 1 long). Repeating a position changes neither a max nor an argmax.
    """
    start, end = _bin_bounds(length, n)
    longest = (extent + n - 1) // n + 1
    k = torch.arange(longest, device=length.device)  # (K,)
    return torch.minimum(start.unsqueeze(-1) + k, end.unsqueeze(-1) - 1), longest  # (N, n, K)


def _max_level_explicit(x: Tensor, heights: Tensor, widths: Tensor, n: int) -> Tensor:
    """Max-pools one level with explicit per-image bins. Returns (N, C, n * n).

    The argmax of every bin is found without autograd (rows first, then columns: max is
    separable), and the output is gathered from ``x`` at those positions, so the backward pass is
    one small scatter, as in ``max_pool2d``.
    """
    n_img, channels, height, width = x.shape
    with torch.no_grad():
        rows, k_rows = _bin_index(heights, height, n)  # (N, n, K)
        rows = rows.reshape(n_img, 1, -1, 1).expand(-1, channels, -1, width)  # (N, C, n * K, W)
        by_rows, arg = x.gather(2, rows).unflatten(2, (n, k_rows)).max(3)  # (N, C, n, W)
        row_of = rows.unflatten(2, (n, k_rows)).gather(3, arg.unsqueeze(3)).squeeze(3)  # (N, C, n, W)
        cols, k_cols = _bin_index(widths, width, n)  # (N, n, K')
        cols = cols.reshape(n_img, 1, 1, -1).expand(-1, channels, n, -1)  # (N, C, n, n * K')
        arg = by_rows.gather(3, cols).unflatten(3, (n, k_cols)).argmax(4)  # (N, C, n, n)
        col = cols.unflatten(3, (n, k_cols)).gather(4, arg.unsqueeze(4)).squeeze(4)  # (N, C, n, n)
        flat = row_of.gather(3, col) * width + col  # (N, C, n, n): position of each bin's max
    return x.flatten(2).gather(2, flat.flatten(2))  # (N, C, n * n)


def _avg_level_explicit(x: Tensor, heights: Tensor, widths: Tensor, n: int) -> Tensor:
    """Average-pools one level with explicit per-image bins. Returns (N, C, n * n)."""

    def weights(length: Tensor, extent: int | Tensor) -> Tensor:
        start, end = _bin_bounds(length, n)
        pos = torch.arange(extent, device=x.device)
        inside = (pos >= start.unsqueeze(-1)) & (pos < end.unsqueeze(-1))  # (N, n, extent)
        return inside.to(x.dtype) / (end - start).unsqueeze(-1).to(x.dtype)

    # A bin's mean is separable: (row weights) @ x @ (column weights)^T.
    row_w = weights(heights, x.shape[-2]).unsqueeze(1)  # (N, 1, n, H)
    col_w = weights(widths, x.shape[-1]).unsqueeze(1)  # (N, 1, n, W)
    return (row_w @ x @ col_w.transpose(-1, -2)).flatten(2)  # (N, C, n * n)


def spatial_pyramid_pool(
    x: Tensor,
    levels: Sequence[int] = (1, 2, 4),
    mode: str = "max",
    sizes: Tensor | None = None,
) -> Tensor:
    """Pools a feature map into a fixed-length vector with a spatial pyramid.

    Args:
        x: feature map (N, C, H, W), any H, W >= 1.
        levels: bins per side of each pyramid level, in output order; integers >= 1.
            Default (1, 2, 4), the study's pyramid.
        mode: ``"max"`` (default, as in SPP-net) or ``"avg"``.
        sizes: optional (N, 2) integer tensor of the valid (height, width) of each image of a
            zero-padded batch; each image is pooled over its own valid region only. Default: the
            whole map.

    Returns:
        Tensor (N, C * sum(n * n)): the levels in the given order, each flattened like
        ``adaptive_max_pool2d(x, n).flatten(1)``.

    Raises:
        ConfigError (a ValueError): empty levels, a level < 1, an unknown mode, input that is not
            4-D or has an empty dimension, sizes of the wrong shape, a size < 1 or beyond the tensor.

    Shape:
        x: (N, C, H, W); sizes: (N, 2); output: (N, C * sum(n * n)).
    """
    levels = check_levels(levels)
    mode = _check_mode(mode)
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"spatial pyramid pooling needs a 4-D input (N, C, H, W), got {shape}")
    if not is_tracing() and (x.shape[-2] < 1 or x.shape[-1] < 1):
        raise ConfigError(f"spatial pyramid pooling needs H, W >= 1, got {tuple(x.shape)}")
    if not is_tracing() and not x.is_floating_point():
        raise ConfigError(f"spatial pyramid pooling needs a floating-point input, got {x.dtype}")
    if not is_tracing() and x.shape[0] == 0:  # an empty batch: no image, no bin to pool
        if sizes is not None:
            _check_sizes(sizes, x)
        return x.new_zeros((0, x.shape[1] * sum(n * n for n in levels)))

    if sizes is None and not is_tracing():
        pool = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
        return torch.cat([pool(x, n).flatten(1) for n in levels], dim=1)  # (N, C * sum(n * n))

    if sizes is None:
        # Under export the height and width are symbolic; derive per-image sizes from the shape.
        # (ones_like keeps the batch dimension symbolic too.)
        ones = torch.ones_like(x[:, 0, 0, 0], dtype=torch.long)  # (N,)
        heights, widths = ones * x.shape[-2], ones * x.shape[-1]
    else:
        sizes = _check_sizes(sizes, x)
        heights, widths = sizes[:, 0], sizes[:, 1]
    pool_level = _max_level_explicit if mode == "max" else _avg_level_explicit
    pooled = [pool_level(x, heights, widths, n).flatten(1) for n in levels]
    return torch.cat(pooled, dim=1)  # (N, C * sum(n * n))


class SpatialPyramidPooling(nn.Module):
    """Spatial pyramid pooling as a module; see :func:`spatial_pyramid_pool`.

    Args:
        levels: bins per side of each level, integers >= 1, in output order. Default (1, 2, 4).
        mode: ``"max"`` (default) or ``"avg"``.

    Shape:
        input: (N, C, H, W), any H, W >= 1, and optional sizes (N, 2);
        output: (N, C * sum(n * n)).
    """

    def __init__(self, levels: Sequence[int] = (1, 2, 4), mode: str = "max") -> None:
        super().__init__()
        self.levels = check_levels(levels)
        self.mode = _check_mode(mode)

    def output_features(self, channels: int) -> int:
        """Length of the output vector for a map with ``channels`` channels."""
        return channels * sum(n * n for n in self.levels)

    def forward(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        return spatial_pyramid_pool(x, self.levels, self.mode, sizes)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, mode={self.mode!r}"
