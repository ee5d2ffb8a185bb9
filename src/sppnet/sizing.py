"""Size policies: at what size images are stored and batched, epoch by epoch.

Policies (each reproducible from the seed and reshuffled every epoch):

    * ``fixed S``: every image resized to S x S (warped), as Keras' ``image_size=(S, S)`` does.
    * ``multi S1,S2,...``: one size per epoch, cycling through the list: SPP-net's multi-size
      training, one set of weights. Images are stored at the largest size and resized per batch.
    * ``range A:B``: a size drawn uniformly from [A, B] at the start of each epoch.
    * ``native S``: every image keeps its aspect ratio with its shorter side S, no crop and no
      warp; the longer side is capped at ``MAX_ASPECT`` x S (a longer image is shrunk further,
      keeping its aspect ratio). Batches group images of similar shape, are zero-padded to the
      largest and carry each image's valid size.
    * ``progressive A:B``: ``native``, with a shorter side that grows linearly from A in the first
      epoch to B in the last (progressive resizing: whole images at growing sizes, one set of
      weights, which only a head that takes any size allows). Images are stored at B and shrunk
      per batch; the run is validated and tested at ``native B``.

A policy answers what its callers need: how to store an image (:meth:`SizePolicy.store_size`,
and :attr:`SizePolicy.fixed_store_size` when every image is stored at one size), the view a run
is validated and tested at (:meth:`SizePolicy.test_view`), the run's reference input size
(:attr:`SizePolicy.input_size`) and the smallest side an image may get
(:attr:`SizePolicy.smallest_size`); and it makes an epoch's batches from an
:class:`~sppnet.data.ImageStore` (:meth:`SizePolicy.batches`). The training loop knows nothing
about sizes: it takes the batches it is handed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .data.store import ImageStore
from .errors import ConfigError

__all__ = [
    "Batch", "SizePolicy", "Fixed", "Multi", "Range", "Native", "Progressive", "parse_policy", "padding_overhead",
]

#: The longest side a ``native`` image may have, as a multiple of its shorter side S.
MAX_ASPECT = 2.0

#: The largest size a policy stores or batches images at.
MAX_SIZE = 4096

#: The shortest side a ``native`` image is given (very elongated images are shrunk further).
NATIVE_MIN_SIDE = 8

#: Images a ``native`` epoch sorts by shape at a time: larger windows pad less but mix less.
NATIVE_WINDOW_BATCHES = 16


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


def _check_size(value, what: str) -> int:
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
        self.size = _check_size(size, "size")

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
        self.sizes = tuple(_check_size(s, "every size") for s in sizes)

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
        self.low = _check_size(low, "the range's lower size")
        self.high = _check_size(high, "the range's upper size")
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


class Native(SizePolicy):
    """Each image at its own aspect ratio, shorter side ``size``; shape-grouped padded batches."""

    kind = "native"

    def __init__(self, size: int = 180, max_aspect: float = MAX_ASPECT) -> None:
        self.size = _check_size(size, "size")
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


class Progressive(Native):
    """``native``, its shorter side growing linearly from ``low`` (first epoch) to ``high`` (epoch
    ``epochs`` and after). Images are stored at ``high`` and each batch is shrunk to the epoch's
    side, image by image (each valid region resized on its own, so padding never bleeds in)."""

    kind = "progressive"

    def __init__(self, low: int = 128, high: int = 180, epochs: int = 1, max_aspect: float = MAX_ASPECT) -> None:
        super().__init__(high, max_aspect)
        self.low = _check_size(low, "the progressive lower size")
        self.high = self.size
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

    @property
    def smallest_size(self) -> int:
        return self.low

    def test_view(self) -> SizePolicy:
        return Native(self.high, self.max_aspect)

    def describe(self) -> str:
        return f"progressive {self.low}:{self.high} over {self.epochs} epochs"

    def to_config(self) -> dict:
        return {"kind": self.kind, "low": self.low, "high": self.high, "epochs": self.epochs,
                "max_aspect": self.max_aspect}

    def make_batch(self, store: ImageStore, indices: torch.Tensor, epoch: int = 0, seed: int = 0) -> Batch:
        images, sizes = store.gather(indices)
        side = self.side(epoch)
        if side != self.high:
            images, sizes = shrink_each(images, sizes, side / self.high)
        return Batch(images, sizes, store.labels[indices], indices)


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


def parse_policy(
    size: int | None = None, sizes: str | None = None, size_range: str | None = None, native: int | None = None,
    progressive: str | None = None, epochs: int = 1,
) -> SizePolicy:
    """Builds a policy from the command-line options (at most one given; default fixed 180);
    ``epochs`` is the length of a progressive policy's growth."""
    options = [("--size", size), ("--sizes", sizes), ("--size-range", size_range), ("--native", native),
               ("--progressive", progressive)]
    given = [name for name, v in options if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give only one of {', '.join(name for name, _ in options)} (got {' and '.join(given)})")
    if sizes is not None:
        try:
            return Multi(tuple(int(s) for s in str(sizes).split(",") if s.strip()))
        except ValueError:
            raise ConfigError(f"--sizes must be comma-separated integers like 180,224, got {sizes!r}") from None
    if size_range is not None:
        parts = str(size_range).split(":")
        try:
            low, high = (int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"--size-range must be LOW:HIGH like 180:224, got {size_range!r}") from None
        return Range(low, high)
    if progressive is not None:
        try:
            low, high = (int(p) for p in str(progressive).split(":"))
        except ValueError:
            raise ConfigError(f"--progressive must be LOW:HIGH like 96:128, got {progressive!r}") from None
        return Progressive(low, high, epochs)
    if native is not None:
        return Native(native)
    return Fixed(180 if size is None else size)


def policy_from_config(config: dict) -> SizePolicy:
    """Rebuilds a policy from :meth:`SizePolicy.to_config`."""
    config = dict(config)
    kind = config.pop("kind", None)
    classes = {cls.kind: cls for cls in (Fixed, Multi, Range, Native, Progressive)}
    if kind not in classes:
        raise ConfigError(f"unknown size policy {kind!r}: choose one of {', '.join(classes)}")
    if kind == "multi":
        config["sizes"] = tuple(config["sizes"])
    return classes[kind](**config)
