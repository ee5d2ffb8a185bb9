"""Batch inference: batches to the device, the mirror view, logits and probabilities over batches.

What training (validation), evaluation and prediction all run: :func:`to_device_batch` moves a
:class:`sppnet.sizing.Batch` to a device, :func:`mirror` flips each image of a padded batch within
its own width, :func:`class_probabilities` is one batch's softmax (with the mirror view averaged
in), :func:`predict_logits` and :func:`predict_batches` run a model in eval mode over batches.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .sizing import Batch

__all__ = ["to_device_batch", "mirror", "class_probabilities", "predict_batches", "predict_logits"]


def to_device_batch(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Moves a batch to ``device``: float images (channels last), sizes if padded, labels."""
    images = batch.images.to(device, non_blocking=True).float()
    images = images.contiguous(memory_format=torch.channels_last)
    sizes = batch.sizes.to(device) if batch.padded else None
    return images, sizes, batch.labels.to(device, non_blocking=True)


def mirror(images: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Mirrors images left-right; in a padded batch each image within its own width."""
    if sizes is None:
        return images.flip(-1)
    width = images.shape[-1]
    cols = torch.arange(width, device=images.device)
    w = sizes[:, 1:2].to(images.device)  # (N, 1)
    source = torch.where(cols < w, w - 1 - cols, cols)  # (N, W); the padding maps to itself
    index = source.view(-1, 1, 1, width).expand_as(images)
    return torch.gather(images, -1, index)


def class_probabilities(model: torch.nn.Module, images: torch.Tensor, sizes: torch.Tensor | None = None,
                        flip: bool = False) -> torch.Tensor:
    """The model's softmax (float32) for a batch; with ``flip``, averaged with the softmax of the
    mirror images (each padded image mirrored within its own width).

    Shape:
        images: (N, 3, H, W); sizes: (N, 2) or None; output: (N, classes).
    """
    probs = torch.softmax(model(images, sizes).float(), dim=1)
    if flip:
        probs = 0.5 * (probs + torch.softmax(model(mirror(images, sizes), sizes).float(), dim=1))
    return probs


def predict_batches(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device,
                    flip: bool = False, amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs a model (in eval mode) over batches.

    With ``flip``, each image's softmax is averaged with its mirror image's (test-time
    augmentation; the study's augmentation flips left-right, so both views are in-distribution).
    ``amp_dtype`` runs the model under autocast (e.g. bfloat16).

    Returns:
        probabilities (N, classes), labels (N,) and dataset indices (N,), on the CPU, in batch order.
    """
    logits, labels, indices = predict_logits(model, batches, device, flip, amp_dtype)
    if logits.numel() == 0:
        return torch.empty(0, 0), labels, indices
    return torch.softmax(logits, dim=-1).mean(0), labels, indices


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device,
                   flip: bool = False, amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`predict_batches`, but the logits of each view: (views, N, classes), views = 2
    with ``flip`` (the image, its mirror image), else 1; with labels (N,) and indices (N,)."""
    was_training = model.training
    model.eval()
    logits, labels, indices = [], [], []
    try:
        for batch in batches:
            images, sizes, _ = to_device_batch(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                views = [model(images, sizes)] + ([model(mirror(images, sizes), sizes)] if flip else [])
            logits.append(torch.stack([v.float() for v in views]).cpu())
            labels.append(batch.labels)
            indices.append(batch.indices)
    finally:
        model.train(was_training)
    if not logits:
        return torch.empty(1 + flip, 0, 0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(logits, dim=1), torch.cat(labels), torch.cat(indices)
