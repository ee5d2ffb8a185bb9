"""The size policy's contract (:class:`SizePolicy`, :class:`Batch`) and the square policies:
``fixed``, ``multi`` and ``range`` (every image of a batch at one square size)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from ..data.store import ImageStore
from ..errors import ConfigError

__all__ = ["Batch", "SizePolicy", "Fixed", "Multi", "Range", "MAX_SIZE", "epoch_generator", "check_size", "resize_batch"]

#: The largest size a policy stores or batches images at.
MAX_SIZE = 4096

@dataclass
class Batch:
    """One batch: uint8 images N x 3 x H x W (zero-padded), valid sizes (N, 2), labels (N,)."""

    images: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    global_size: int = 0  # images in the global batch this (rank's) batch is part of; 0: len(self)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def padded(self) -> bool:
        h, w = self.images.shape[-2:]
        return bool((self.sizes[:, 0] != h).any() or (self.sizes[:, 1] != w).any())


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch), so a resumed run draws the same."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def check_size(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 8:
        raise ConfigError(f"{what} must be an integer >= 8, got {value!r}")
    if value > MAX_SIZE:
        raise ConfigError(f"{what} must be at most {MAX_SIZE} (an image of {value}x{value} takes "
                          f"{3 * value * value / 1e6:.0f} MB decoded, and its activations many times that), got {value}")
    return value


class SizePolicy:
    """Base class: store at a fixed square size, batch by random permutation."""

    kind = ""

    def store_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) at which to store an image of the given upright size."""
        raise NotImplementedError

    def epoch_size(self, epoch: int, seed: int) -> int | None:
        """The square size of this epoch's batches (None: the images' own sizes)."""
        raise NotImplementedError

    @property
    def fixed_store_size(self) -> tuple[int, int] | None:
        """The (width, height) every image is stored at, or None when it depends on the image."""
        return None

    @property
    def smallest_size(self) -> int:
        """The smallest side an image is given in this policy's batches (for ``native``: the
        shorter side, which only images more elongated than ``max_aspect`` go below)."""
        raise NotImplementedError

    @property
    def input_size(self) -> int:
        """The run's reference input size: the side of its test view (the shorter side for
        ``native``). Prediction scales images to it by default."""
        return self.test_view().size

    def test_view(self) -> "SizePolicy":
        """The view a run trained with this policy is validated and tested at: ``native`` and
        ``fixed`` stay as they are; ``multi`` tests at its first size, ``range`` at its lower."""
        return self

    def describe(self) -> str:
        raise NotImplementedError

    def to_config(self) -> dict:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SizePolicy) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_config().items())))

    def __repr__(self) -> str:
        return f"<SizePolicy {self.describe()}>"

    def index_batches(self, store: ImageStore, batch_size: int, epoch: int = 0, seed: int = 0,
                      shuffle: bool = True) -> list[torch.Tensor]:
        """The store indices of each (global) batch of one epoch, in order (none for an empty store)."""
        if len(store) == 0:
            return []
        if not shuffle:
            order = torch.arange(len(store))
        else:
            order = torch.randperm(len(store), generator=epoch_generator(seed, epoch))
        return list(order.split(batch_size))

    def make_batch(self, store: ImageStore, indices: torch.Tensor, epoch: int = 0, seed: int = 0) -> Batch:
        """Assembles the images at ``indices`` at this epoch's size."""
        size = self.epoch_size(epoch, seed)
        images, sizes = store.gather(indices)
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = resize_batch(images, size)
            sizes = torch.full_like(sizes, size)
        return Batch(images, sizes, store.labels[indices], indices)

    def batches(
        self, store: ImageStore, batch_size: int, epoch: int = 0, seed: int = 0, shuffle: bool = True,
        rank: int = 0, world_size: int = 1, drop_incomplete: bool = True,
    ) -> Iterator[Batch]:
        """Yields the batches of one epoch.

        With ``world_size`` > 1 (distributed training), ``batch_size`` is the global batch: every
        global batch is split across the ranks (rank r takes its positions r, r + world_size,
        ...), so all ranks run the same number of steps and each image is seen once per epoch in
        total. A last global batch with fewer images than ranks is dropped in training
        (``drop_incomplete``); for evaluation, ranks left without an image skip it.
        """
        for indices in self.index_batches(store, batch_size, epoch, seed, shuffle):
            global_size = len(indices)
            if world_size > 1:
                if global_size < world_size and drop_incomplete:
                    continue
                indices = indices[rank::world_size]
                if len(indices) == 0:
                    continue
            batch = self.make_batch(store, indices, epoch, seed)
            batch.global_size = global_size
            yield batch

    def num_batches(self, store: ImageStore, batch_size: int, world_size: int = 1) -> int:
        full, rest = divmod(len(store), batch_size)
        return full + (1 if rest >= world_size else 0) if world_size > 1 else math.ceil(len(store) / batch_size)


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resizes a uint8 batch to size x size, bilinear with antialiasing, staying uint8.

    PyTorch has a fast uint8 kernel for channels-last 3-channel images, faster than going
    through float.
    """
    images = images.contiguous(memory_format=torch.channels_last)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class Fixed(SizePolicy):
    """Every image warped to ``size`` x ``size``."""

    kind = "fixed"

    def __init__(self, size: int = 180) -> None:
        self.size = check_size(size, "size")

    def store_size(self, width: int, height: int) -> tuple[int, int]:
        return self.size, self.size

    def epoch_size(self, epoch: int, seed: int) -> int | None:
        return self.size

    @property
    def fixed_store_size(self) -> tuple[int, int] | None:
        return self.size, self.size

    @property
    def smallest_size(self) -> int:
        return self.size

    def describe(self) -> str:
        return f"fixed {self.size}"

    def to_config(self) -> dict:
        return {"kind": self.kind, "size": self.size}


class Multi(SizePolicy):
    """One size per epoch, cycling through ``sizes`` (SPP-net multi-size training)."""

    kind = "multi"

    def __init__(self, sizes: tuple[int, ...] = (180, 224)) -> None:
        sizes = tuple(sizes)
        if not sizes:
            raise ConfigError("sizes must name at least one size, e.g. 180,224")
        self.sizes = tuple(check_size(s, "every size") for s in sizes)

    def store_size(self, width: int, height: int) -> tuple[int, int]:
        return max(self.sizes), max(self.sizes)

    def epoch_size(self, epoch: int, seed: int) -> int | None:
        return self.sizes[epoch % len(self.sizes)]

    @property
    def fixed_store_size(self) -> tuple[int, int] | None:
        return max(self.sizes), max(self.sizes)

    @property
    def smallest_size(self) -> int:
        return min(self.sizes)

    def test_view(self) -> SizePolicy:
        return Fixed(self.sizes[0])

    def describe(self) -> str:
        return f"multi {','.join(map(str, self.sizes))}"

    def to_config(self) -> dict:
        return {"kind": self.kind, "sizes": list(self.sizes)}


class Range(SizePolicy):
    """A size drawn uniformly from [low, high] for each epoch."""

    kind = "range"

    def __init__(self, low: int = 180, high: int = 224) -> None:
        self.low = check_size(low, "the range's lower size")
        self.high = check_size(high, "the range's upper size")
        if self.high < self.low:
            raise ConfigError(f"size range {low}:{high} is empty; write it as LOW:HIGH, e.g. 180:224")

    def store_size(self, width: int, height: int) -> tuple[int, int]:
        return self.high, self.high

    def epoch_size(self, epoch: int, seed: int) -> int | None:
        generator = epoch_generator(seed + 7919, epoch)  # independent of the shuffle's draws
        return int(torch.randint(self.low, self.high + 1, (1,), generator=generator))

    @property
    def fixed_store_size(self) -> tuple[int, int] | None:
        return self.high, self.high

    @property
    def smallest_size(self) -> int:
        return self.low

    def test_view(self) -> SizePolicy:
        return Fixed(self.low)

    def describe(self) -> str:
        return f"range {self.low}:{self.high}"

    def to_config(self) -> dict:
        return {"kind": self.kind, "low": self.low, "high": self.high}


