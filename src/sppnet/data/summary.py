"""A dataset's summary for ``sppnet data``: counts, split, image sizes, unreadable files."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .decode import image_size, load_images
from .index import Dataset, shown

__all__ = ["summarize"]

def summarize(dataset: Dataset, train: Dataset, val: Dataset, workers: int | None = None) -> str:
    """A human-readable summary: Keras' counts, per-class counts, image sizes, unreadable files.

    Every image is decoded (at a reduced scale where possible) to find unreadable ones.
    """
    lines = [
        f"Found {len(dataset)} files belonging to {len(dataset.class_names)} classes.",
        f"Using {len(train)} files for training.",
        f"Using {len(val)} files for validation.",
        "",
        f"{'class':<20} {'files':>7} {'train':>7} {'val':>7}",
    ]
    totals, in_train, in_val = dataset.class_counts(), train.class_counts(), val.class_counts()
    for name in dataset.class_names:
        lines.append(f"{shown(name):<20} {totals[name]:>7} {in_train[name]:>7} {in_val[name]:>7}")
    # Decode everything at about 1/8 scale: enough to find truncated and broken files, fast.
    result = load_images(dataset.paths(), lambda w, h: (max(1, w // 8), max(1, h // 8)), workers)
    sizes = []
    for i in result.kept:
        try:
            sizes.append(image_size(dataset.root / dataset.files[i]))
        except DataError as err:  # header unreadable though the pixels decoded: report it too
            result.failures.append((str(dataset.root / dataset.files[i]), str(err)))
    lines.append("")
    if sizes:
        widths = np.array([s[0] for s in sizes])
        heights = np.array([s[1] for s in sizes])
        lines.append(
            f"Image sizes (width x height): min {widths.min()}x{heights.min()}, "
            f"median {int(np.median(widths))}x{int(np.median(heights))}, max {widths.max()}x{heights.max()}; "
            f"{len(set(sizes))} distinct sizes; {int((widths > heights).sum())} landscape, "
            f"{int((widths < heights).sum())} portrait, {int((widths == heights).sum())} square"
        )
    if result.failures:
        lines.append(f"Unreadable files ({len(result.failures)}), skipped in training:")
        lines += [f"  {reason}" for _, reason in result.failures]
    else:
        lines.append("Unreadable files: none")
    return "\n".join(lines)
