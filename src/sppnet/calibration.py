"""Calibration: how far a classifier's confidence is from its accuracy, and temperature scaling.

:func:`reliability_bins` and :func:`expected_calibration_error` (ECE, 15 equal-width bins);
:func:`ece_noise_floor`, the ECE a perfectly calibrated model would still show on a sample of
that size, and :func:`ece_noise`, whether an observed ECE is more than such a sample explains;
:func:`fit_temperature`, the one number that divides the logits to minimise the cross-entropy
(Guo et al. 2017), and :func:`tempered_probabilities`. Arrays and tensors only: the
run-level fitting (:func:`sppnet.evaluate.calibrate_run`) and its use
(:meth:`sppnet.runs.RunFolder.load_model`) live with the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["reliability_bins", "ece_of_bins", "expected_calibration_error", "simulated_eces", "ece_noise_floor",
           "EceNoise", "ece_noise", "tempered_probabilities", "fit_temperature", "too_few_to_calibrate",
           "MIN_IMAGES", "MIN_PER_CLASS"]

#: The fewest held-out images, and of each class, that a temperature is fitted on: on fewer, one
#: temperature fits the few answers it sees (2 images gave T = 0.05 and 100 % confidence).
MIN_IMAGES = 100
MIN_PER_CLASS = 10


def too_few_to_calibrate(counts: dict[str, int]) -> str | None:
    """Why a held-out set with these images per class is too small to fit a temperature on, or
    None when it is large enough (:data:`MIN_IMAGES` in all, :data:`MIN_PER_CLASS` of each class)."""
    total = sum(counts.values())
    if total < MIN_IMAGES:
        return f"{total} images, fewer than {MIN_IMAGES}"
    least = min(counts, key=counts.get)
    if counts[least] < MIN_PER_CLASS:
        return f"{counts[least]} of class {least}, fewer than {MIN_PER_CLASS}"
    return None


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Each answer's equal-width confidence bin (0 .. bins - 1; a confidence on an edge goes down)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> list[dict]:
    """Equal-width confidence bins: for each, its edges, how many answers fell in it, their
    accuracy and their mean confidence (None for an empty bin). A reliability diagram draws them."""
    which = _bin_index(confidence, bins)
    out = []
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": count,
                    "accuracy": float(correct[mask].mean()) if count else None,
                    "confidence": float(confidence[mask].mean()) if count else None})
    return out


def ece_of_bins(bins: list[dict]) -> float:
    """The ECE of :func:`reliability_bins`' bins: |accuracy - confidence| weighted by share."""
    n = sum(b["count"] for b in bins)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / n)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| x share."""
    return ece_of_bins(reliability_bins(confidence, correct, bins))


def simulated_eces(confidence: np.ndarray, bins: int = 15, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """The ECEs ``draws`` perfectly calibrated samples with these confidences show: in each draw,
    every answer is right with probability equal to its confidence. Seeded: the same every call."""
    n = len(confidence)
    if n == 0:
        return np.full(draws, np.nan)
    which = _bin_index(confidence, bins)
    outcomes = np.random.default_rng(seed).random((draws, n)) < confidence  # (draws, n)
    total = np.zeros(draws)
    for b in np.unique(which):
        mask = which == b
        total += np.abs(outcomes[:, mask].mean(1) - confidence[mask].mean()) * mask.sum()
    return total / n


def ece_noise_floor(confidence: np.ndarray, bins: int = 15, draws: int = 1000, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model would still show on this many answers: the mean of
    :func:`simulated_eces`.

    ECE is a biased estimate (each bin's |accuracy - confidence| is positive even when the
    expectation is 0); on the 734 flower validation photos this floor is about 0.03, so an ECE
    near it is as calibrated as a sample that size can show.
    """
    return float(np.mean(simulated_eces(confidence, bins, draws, seed)))


@dataclass(frozen=True)
class EceNoise:
    """An observed ECE against the ECEs perfectly calibrated samples of the same confidences show.

    Attributes:
        floor: their mean (:func:`ece_noise_floor`).
        high: their 95th percentile: a calibrated model shows more one time in 20.
        p_value: the share of them at or above the observed ECE. Small (below 0.05): the model
            is miscalibrated by more than the sample explains; large: the sample cannot tell it
            from a calibrated one.
    """

    floor: float
    high: float
    p_value: float


def ece_noise(confidence: np.ndarray, observed: float, bins: int = 15, draws: int = 1000, seed: int = 0) -> EceNoise:
    """How an observed ECE compares with what perfectly calibrated samples show (:class:`EceNoise`)."""
    if len(confidence) == 0:
        nan = float("nan")
        return EceNoise(nan, nan, nan)
    eces = simulated_eces(confidence, bins, draws, seed)
    return EceNoise(float(eces.mean()), float(np.quantile(eces, 0.95)), float(np.mean(eces >= observed - 1e-12)))


def tempered_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The softmax of ``logits / temperature`` averaged over the views (dimension 0)."""
    return torch.softmax(logits.double() / temperature, dim=-1).mean(0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature T that minimises the cross-entropy of :func:`tempered_probabilities`
    (temperature scaling, Guo et al. 2017): T > 1 softens over-confident logits, T < 1 sharpens
    under-confident ones. With one view the predicted class never changes; averaged over views
    it can, where the views disagree.

    A grid over log T in [``low``, ``high``], then golden-section search around its best point.

    Shape:
        logits: (views, N, classes); labels: (N,).
    """
    if logits.ndim != 3 or logits.shape[1] != len(labels) or len(labels) == 0:
        raise ValueError(f"need logits (views, N, classes) for N > 0 labels, got {tuple(logits.shape)} and {len(labels)}")

    def nll(log_t: float) -> float:
        probs = tempered_probabilities(logits, math.exp(log_t))
        return float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))

    grid = np.linspace(math.log(low), math.log(high), 81)
    losses = [nll(g) for g in grid]
    i = int(np.argmin(losses))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(40):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2))
