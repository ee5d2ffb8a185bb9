"""Batched random flip, rotation and zoom with the semantics of Keras' preprocessing layers.

The study's augmentation is ``Sequential([RandomFlip("horizontal"), RandomRotation(0.1),
RandomZoom(0.1)])`` with reflected fill. :class:`Augment` draws the same random parameters per
image and applies all three in one bilinear resampling pass (``grid_sample``): output pixel
coordinates are mapped back through zoom, rotation and flip in turn, reflecting into the image
after each step exactly as the sequential Keras layers would, but the pixels are interpolated only
once (sharper than three passes).

Parameters (per image, drawn by :meth:`Augment.draw`, applied by :meth:`Augment.apply`):
    * flip: mirrored left-right with probability 0.5 (Keras ``RandomFlip("horizontal")``).
    * angle: uniform in [-rotation, rotation] turns (Keras ``RandomRotation(rotation)``;
      0.1 turn = 36 degrees); positive angles turn the picture counter-clockwise.
    * zoom: scale factor uniform in [1 - zoom, 1 + zoom], the same for height and width (Keras
      ``RandomZoom(zoom)``); above 1 zooms out (shows more), below 1 zooms in.

Fill modes, for the area that comes from outside the image:
    * ``"reflect"`` (default, Keras' default): ``d c b a | a b c d | d c b a``.
    * ``"constant"``: zeros (black).

Padded batches: with ``sizes``, each image is transformed about its own centre, filled from its
own valid region, and the padding stays zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError

__all__ = ["Augment", "AugmentParams", "FILL_MODES"]

FILL_MODES = ("reflect", "constant")


@dataclass
class AugmentParams:
    """Per-image random parameters: flip (N,) bool, angle (N,) radians, zoom (N,) factor."""

    flip: Tensor
    angle: Tensor
    zoom: Tensor


def _reflect(coord: Tensor, length: Tensor) -> Tensor:
    """Reflects pixel coordinates into [-0.5, length - 0.5] (``d c b a | a b c d``)."""
    folded = torch.remainder(coord + 0.5, 2 * length)  # [0, 2 * length)
    return length - (folded - length).abs() - 0.5


class Augment:
    """Random flip, rotation and zoom of image batches, Keras semantics.

    Args:
        flip: mirror left-right with probability 0.5. Default True.
        rotation: largest rotation in turns, in [0, 0.5]; 0 disables. Default 0.1 (36 degrees).
        zoom: largest relative zoom, in [0, 1); 0 disables. Default 0.1.
        fill: ``"reflect"`` (default) or ``"constant"`` (zeros).

    Raises:
        ConfigError: for a value outside those ranges or an unknown fill mode.
    """

    def __init__(self, flip: bool = True, rotation: float = 0.1, zoom: float = 0.1, fill: str = "reflect") -> None:
        if not isinstance(flip, bool):
            raise ConfigError(f"flip must be True or False, got {flip!r}")
        if isinstance(rotation, bool) or not isinstance(rotation, (int, float)) or not 0 <= rotation <= 0.5:
            raise ConfigError(f"rotation must be a number of turns in [0, 0.5], got {rotation!r}")
        if isinstance(zoom, bool) or not isinstance(zoom, (int, float)) or not 0 <= zoom < 1:
            raise ConfigError(f"zoom must be a number in [0, 1), got {zoom!r}")
        if fill not in FILL_MODES:
            raise ConfigError(f"fill must be one of {', '.join(FILL_MODES)}; got {fill!r}")
        self.flip, self.rotation, self.zoom, self.fill = flip, float(rotation), float(zoom), fill

    def __repr__(self) -> str:
        return f"Augment(flip={self.flip}, rotation={self.rotation}, zoom={self.zoom}, fill={self.fill!r})"

    def draw(self, n: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draws the random parameters of ``n`` images."""
        u = torch.rand(3, n, generator=generator, dtype=torch.float64)
        flip = (u[0] < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool)
        angle = (2 * u[1] - 1) * self.rotation * 2 * math.pi
        zoom = 1 + (2 * u[2] - 1) * self.zoom
        return AugmentParams(flip, angle.float(), zoom.float())

    def __call__(self, x: Tensor, sizes: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Augments a batch with freshly drawn parameters; see :meth:`apply`."""
        return self.apply(x, self.draw(x.shape[0], generator), sizes)

    def apply(self, x: Tensor, params: AugmentParams, sizes: Tensor | None = None) -> Tensor:
        """Applies given parameters to a batch.

        Args:
            x: images (N, C, H, W), float (uint8 is converted to float 0..255).
            params: from :meth:`draw`.
            sizes: optional (N, 2) valid (height, width) of each image of a zero-padded batch.

        Returns:
            Float tensor of the same shape, contiguous (NCHW, as ``grid_sample`` writes it; a
            channels-last model rescales it into channels-last in the same pass); padding
            stays zero.
        """
        if x.dim() != 4:
            raise ConfigError(f"augmentation needs a batch (N, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.float()
        n, _, height, width = x.shape
        device = x.device
        if sizes is None:
            h = torch.full((n,), height, dtype=torch.float32, device=device)
            w = torch.full((n,), width, dtype=torch.float32, device=device)
        else:
            h, w = sizes[:, 0].to(device, torch.float32), sizes[:, 1].to(device, torch.float32)
        h, w = h.view(n, 1, 1), w.view(n, 1, 1)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        ys = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1)
        xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width)
        zoom = params.zoom.to(device).view(n, 1, 1)
        cos = torch.cos(params.angle).to(device).view(n, 1, 1)
        sin = torch.sin(params.angle).to(device).view(n, 1, 1)
        reflect = self.fill == "reflect"

        # Output pixel -> input pixel, undoing the layers last to first: zoom, rotation, flip.
        # Zoom (and its reflection) is separable: rows (N, 1, W) and columns (N, H, 1) only.
        dx, dy = (xs - cx) * zoom, (ys - cy) * zoom
        if reflect:
            dx, dy = _reflect(dx + cx, w) - cx, _reflect(dy + cy, h) - cy
        # Counter-clockwise picture rotation: sample the input at the clockwise-rotated point
        # (y points down in pixel coordinates). The flip mirrors x about the centre, folded into
        # the coefficients: x_in = cx + sign * (cos * dx - sin * dy), y_in = cy + sin * dx + cos * dy,
        # each the sum of a row term (N, 1, W) and a column term (N, H, 1).
        sign = 1 - 2 * params.flip.to(device, torch.float32).view(n, 1, 1)
        terms = (
            ((sign * cos) * dx + cx, -(sign * sin) * dy, w, 2 / max(width - 1, 1)),
            (sin * dx, cos * dy + cy, h, 2 / max(height - 1, 1)),
        )
        grid = torch.empty(n, height, width, 2, device=device, dtype=torch.float32)
        if reflect and sizes is None:
            # The image fills the tensor: grid_sample's own reflection (align_corners=False)
            # reflects about the image's edges, [-0.5, length - 0.5] (d c b a | a b c d), and
            # clamps to the first and last pixel centres, as the explicit path below does; one
            # pass per coordinate. Pixel centre i -> (2 i + 1) / length - 1.
            for i, (row, col, _, _) in enumerate(terms):
                size = width if i == 0 else height
                torch.add(row * (2 / size) + (1 / size - 1), col, alpha=2 / size, out=grid[..., i])
            padding_mode, align_corners = "reflection", False
        else:
            # grid_sample's coordinates (align_corners=True): pixel centre i -> i * scale - 1.
            # Every full-size (N, H, W) pass writes in place or straight into the grid.
            for i, (row, col, length, scale) in enumerate(terms):
                out = grid[..., i]
                if reflect:
                    # Reflect into [-0.5, length - 0.5] (see _reflect), clamp to the first and
                    # last pixel centres of each image's valid region (beyond them, reflect's
                    # bilinear value is that pixel's), and scale: r = length - 0.5 -
                    # |((c + 0.5) mod 2 length) - length|.
                    folded = torch.add(row + 0.5, col).remainder_(2 * length).sub_(length).abs_()
                    torch.sub((length - 0.5) * scale - 1, folded, alpha=scale, out=out)
                    out.clamp_(torch.full_like(length, -1.0), (length - 1) * scale - 1)
                else:
                    torch.add(row * scale - 1, col * scale, out=out)
            # Constant fill reads zeros outside the image: beyond the tensor through
            # grid_sample's zero padding, and inside a padded batch from the (zero) padding.
            padding_mode, align_corners = ("border" if reflect else "zeros"), True
        out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
        if sizes is not None:
            valid = (ys < h) & (xs < w)  # (N, H, W)
            out = out * valid.unsqueeze(1).to(out.dtype)
        return out
