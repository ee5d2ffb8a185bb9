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
    * ``native-range A:B``: ``native``, each batch at a shorter side drawn uniformly from [A, B]
      (scale augmentation on whole images: the objects at many sizes for one set of weights).
      Images are stored at B and shrunk per batch; validated and tested at ``native B``.

A policy answers what its callers need: how to store an image (:meth:`SizePolicy.store_size`,
and :attr:`SizePolicy.fixed_store_size` when every image is stored at one size), the view a run
is validated and tested at (:meth:`SizePolicy.test_view`), the run's reference input size
(:attr:`SizePolicy.input_size`) and the smallest side an image may get
(:attr:`SizePolicy.smallest_size`); and it makes an epoch's batches from an
:class:`~sppnet.data.ImageStore` (:meth:`SizePolicy.batches`). The training loop knows nothing
about sizes: it takes the batches it is handed.
"""

from __future__ import annotations

from ..errors import ConfigError
from .native import MAX_ASPECT, Native, NativeRange, Progressive, padding_overhead, shrink_each
from .policy import MAX_SIZE, Batch, Fixed, Multi, Range, SizePolicy, epoch_generator, resize_batch

__all__ = [
    "largest_image",
    "Batch", "SizePolicy", "Fixed", "Multi", "Range", "Native", "Progressive", "NativeRange", "parse_policy",
    "policy_from_config", "padding_overhead", "shrink_each", "resize_batch", "epoch_generator", "MAX_ASPECT",
    "MAX_SIZE",
]


def parse_policy(
    size: int | None = None, sizes: str | None = None, size_range: str | None = None, native: int | None = None,
    progressive: str | None = None, epochs: int = 1, native_range: str | None = None,
) -> SizePolicy:
    """Builds a policy from the command-line options (at most one given; default fixed 180);
    ``epochs`` is the length of a progressive policy's growth."""
    options = [("--size", size), ("--sizes", sizes), ("--size-range", size_range), ("--native", native),
               ("--progressive", progressive), ("--native-range", native_range)]
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
    if native_range is not None:
        try:
            low, high = (int(p) for p in str(native_range).split(":"))
        except ValueError:
            raise ConfigError(f"--native-range must be LOW:HIGH like 96:192, got {native_range!r}") from None
        return NativeRange(low, high)
    if native is not None:
        return Native(native)
    return Fixed(180 if size is None else size)


def largest_image(policy: SizePolicy) -> tuple[int, int]:
    """The largest (height, width) an image of ``policy`` can be given in a batch: the square of
    a fixed size, the largest of several, or a whole image's shorter side with its longer side
    at ``max_aspect`` times it."""
    config = policy.to_config()
    side = max([v for k, v in config.items() if k in ("size", "high")] + list(config.get("sizes", [])) or [1])
    return side, int(side * config.get("max_aspect", 1.0))


def policy_from_config(config: dict) -> SizePolicy:
    """Rebuilds a policy from :meth:`SizePolicy.to_config`."""
    config = dict(config)
    kind = config.pop("kind", None)
    classes = {cls.kind: cls for cls in (Fixed, Multi, Range, Native, Progressive, NativeRange)}
    if kind not in classes:
        raise ConfigError(f"unknown size policy {kind!r}: choose one of {', '.join(classes)}")
    if kind == "multi":
        config["sizes"] = tuple(config["sizes"])
    return classes[kind](**config)
