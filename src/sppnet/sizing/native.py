"""The whole-image policies: ``native`` (each image at its own aspect ratio, shape-grouped padded
batches), ``progressive`` (``native`` at a shorter side growing over the epochs) and
``native-range`` (``native`` at a shorter side drawn for each batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.store import ImageStore
from ..errors import ConfigError
from .policy import Batch, SizePolicy, check_size, epoch_generator

__all__ = ["Native", "Progressive", "NativeRange", "MAX_ASPECT", "shrink_each", "padding_overhead"]

#: The longest side a ``native`` image may have, as a multiple of its shorter side S.
MAX_ASPECT = 2.0

#: The shortest side a ``native`` image is given (very elongated images are shrunk further).
NATIVE_MIN_SIDE = 8

#: Images a ``native`` epoch sorts by shape at a time: larger windows pad less but mix less.
NATIVE_WINDOW_BATCHES = 16


class Native(SizePolicy):
    """Each image at its own aspect ratio, shorter side ``size``; shape-grouped padded batches."""

    kind = "native"

    def __init__(self, size: int = 180, max_aspect: float = MAX_ASPECT) -> None:
        self.size = check_size(size, "size")
        if not 1 <= max_aspect <= 16:
            raise ConfigError(f"max_aspect must be a number in [1, 16], got {max_aspect!r}")
        self.max_aspect = float(max_aspect)

    def store_size(self, width: int, height: int) -> tuple[int, int]:
        scale = self.size / min(width, height)
        longest = self.max_aspect * self.size
        if max(width, height) * scale > longest:
            scale = longest / max(width, height)
        return max(NATIVE_MIN_SIDE, round(width * scale)), max(NATIVE_MIN_SIDE, round(height * scale))

    def epoch_size(self, epoch: int, seed: int) -> int | None:
        return None

    @property
    def smallest_size(self) -> int:
        # The shorter side; only an image more elongated than max_aspect gets less (>= 8).
        return self.size

    def describe(self) -> str:
        return f"native {self.size}"

    def to_config(self) -> dict:
        return {"kind": self.kind, "size": self.size, "max_aspect": self.max_aspect}

    def index_batches(self, store: ImageStore, batch_size: int, epoch: int = 0, seed: int = 0,
                      shuffle: bool = True) -> list[torch.Tensor]:
        """Indices of each batch: images of similar shape together."""
        if len(store) == 0:
            return []
        sizes = store.sizes.double()
        # Sort key: aspect ratio first, then height, so neighbours share both dimensions.
        key = (sizes[:, 0] / sizes[:, 1]) * 1e6 + sizes[:, 0]
        if not shuffle:
            order = torch.argsort(key, stable=True)
            return list(order.split(batch_size))
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(len(store), generator=generator)
        window = batch_size * NATIVE_WINDOW_BATCHES
        groups = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunk = chunk[torch.argsort(key[chunk], stable=True)]
            groups += list(chunk.split(batch_size))
        shuffled = torch.randperm(len(groups), generator=generator).tolist()
        return [groups[i] for i in shuffled]


class _ShrunkNative(Native):
    """``native`` stored at ``high`` (``size``), each batch shrunk to the side :meth:`batch_side`
    gives, image by image (each valid region resized on its own, so padding never bleeds in);
    validated and tested at ``native high``. Subclasses set ``low`` and ``batch_side``."""

    low: int

    @property
    def high(self) -> int:
        """The largest side: the stored, validated and tested one (``size``)."""
        return self.size

    def batch_side(self, indices: torch.Tensor, epoch: int, seed: int) -> int:
        raise NotImplementedError

    @property
    def smallest_size(self) -> int:
        return self.low

    def test_view(self) -> SizePolicy:
        return Native(self.high, self.max_aspect)

    def make_batch(self, store: ImageStore, indices: torch.Tensor, epoch: int = 0, seed: int = 0) -> Batch:
        images, sizes = store.gather(indices)
        side = self.batch_side(indices, epoch, seed)
        if side != self.high:
            images, sizes = shrink_each(images, sizes, side / self.high)
        return Batch(images, sizes, store.labels[indices], indices)


class Progressive(_ShrunkNative):
    """``native``, its shorter side growing linearly from ``low`` (first epoch) to ``high`` (epoch
    ``epochs`` and after). Images are stored at ``high`` and each batch is shrunk to the epoch's
    side, image by image (each valid region resized on its own, so padding never bleeds in)."""

    kind = "progressive"

    def __init__(self, low: int = 128, high: int = 180, epochs: int = 1, max_aspect: float = MAX_ASPECT) -> None:
        super().__init__(high, max_aspect)
        self.low = check_size(low, "the progressive lower size")
        if self.high < self.low:
            raise ConfigError(f"progressive sizes {low}:{high} shrink; write them as LOW:HIGH, e.g. 96:128")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"the progressive policy's epochs must be an integer >= 1, got {epochs!r}")
        self.epochs = epochs

    def side(self, epoch: int) -> int:
        """The shorter side of epoch ``epoch``'s images (0-based)."""
        if self.epochs == 1 or epoch >= self.epochs - 1:
            return self.high
        return round(self.low + (self.high - self.low) * epoch / (self.epochs - 1))

    def batch_side(self, indices: torch.Tensor, epoch: int, seed: int) -> int:
        return self.side(epoch)

    def describe(self) -> str:
        return f"progressive {self.low}:{self.high} over {self.epochs} epochs"

    def to_config(self) -> dict:
        return {"kind": self.kind, "low": self.low, "high": self.high, "epochs": self.epochs,
                "max_aspect": self.max_aspect}


class NativeRange(_ShrunkNative):
    """``native``, each batch at a shorter side drawn uniformly from [``low``, ``high``]: scale
    augmentation on whole images, so that one set of weights sees the objects at many sizes (the
    whole-image form of SPP-net's multi-size training). Images are stored at ``high`` and each
    batch is shrunk image by image, as ``progressive`` does; the run is validated and tested at
    ``native HIGH``. The side depends on the seed, the epoch and the batch's images only, so a
    resumed run draws the same sides."""

    kind = "native-range"

    def __init__(self, low: int = 128, high: int = 180, max_aspect: float = MAX_ASPECT) -> None:
        super().__init__(high, max_aspect)
        self.low = check_size(low, "the native range's lower size")
        if self.high < self.low:
            raise ConfigError(f"native range {low}:{high} is empty; write it as LOW:HIGH, e.g. 96:192")

    def side(self, indices: torch.Tensor, epoch: int, seed: int) -> int:
        """The shorter side of the batch of store images ``indices`` in epoch ``epoch``."""
        if len(indices) == 0 or self.low == self.high:
            return self.high
        # Keyed on the batch's first image: independent of the shuffle's draws and of the order
        # batches are made in.
        generator = epoch_generator(seed + 7919 + 104729 * int(indices.min()), epoch)
        return int(torch.randint(self.low, self.high + 1, (1,), generator=generator))

    batch_side = side

    def describe(self) -> str:
        return f"native range {self.low}:{self.high}"

    def to_config(self) -> dict:
        return {"kind": self.kind, "low": self.low, "high": self.high, "max_aspect": self.max_aspect}


def shrink_each(images: torch.Tensor, sizes: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Resizes each image's valid region of a padded uint8 batch by ``scale`` (bilinear with
    antialiasing, one call per distinct size) and pads the results again: (images, sizes)."""
    new_sizes = (sizes.double() * scale).round().clamp(min=1).long()
    height, width = (int(v) for v in new_sizes.max(0).values)
    out = torch.zeros(len(images), height, width, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    shapes, group = torch.unique(sizes, dim=0, return_inverse=True)
    for k, (h, w) in enumerate(shapes.tolist()):
        members = torch.nonzero(group == k).flatten()
        nh, nw = (int(v) for v in new_sizes[members[0]])
        crop = images[members, :, :h, :w]
        out[members, :, :nh, :nw] = F.interpolate(crop, size=(nh, nw), mode="bilinear", align_corners=False,
                                                  antialias=True)
    return out, new_sizes


def padding_overhead(batches) -> float:
    """Padded pixels / all pixels over some batches."""
    padded = valid = 0
    for batch in batches:
        h, w = batch.images.shape[-2:]
        padded += len(batch) * h * w
        valid += int((batch.sizes[:, 0] * batch.sizes[:, 1]).sum())
    return (padded - valid) / padded if padded else 0.0


