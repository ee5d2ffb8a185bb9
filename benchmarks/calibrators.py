"""Temperature scaling against two richer calibrators, on finished runs.

For each run (one that held out a share of its training split with ``--calibrate``), this
computes the logits of its last weights on that calibration hold-out and on the validation
split, in the view it validates with, fits each calibrator on the hold-out and prints its ECE
(15 bins) and cross-entropy on the validation split, beside the ECE a perfectly calibrated model
would show there (the noise floor; with its 95th percentile and how often it meets ``--target``),
each ECE's p (the share of perfectly calibrated samples with those confidences that show as
much or more), and what the temperature fitted on the validation split
itself would give (an oracle, not a calibrator: it reads the answers it is judged on), and the
least validation ECE any temperature reaches (another oracle: the lowest ECE temperature
scaling could show on this split, however it were fitted).

- ``temperature``: one T dividing the logits, fitted by cross-entropy (what sppnet does).
- ``ensemble``: ensemble temperature scaling (Zhang et al. 2020): w1 softmax(z / T) +
  w2 softmax(z) + w3 / K, the weights fitted by cross-entropy on a grid, T as above.
- ``logit mean``: the mirror views' logits averaged before one temperature, instead of their
  tempered softmaxes after it.

    python benchmarks/calibrators.py runs/presets/fast/seed123 runs/presets/best/seed123 ...
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from sppnet import data as data_mod
from sppnet.calibration import (ece_noise, expected_calibration_error, fit_temperature, simulated_eces,
                                tempered_probabilities)
from sppnet.inference import predict_logits
from sppnet.runs import RunFolder


def run_logits(path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(logits (views, N, K), labels) of a run's last weights on its calibration hold-out and
    its validation split."""
    run = RunFolder(path)
    config = run.run_config()
    if not config.train.calibrate:
        raise SystemExit(f"{path}: trained without a calibration hold-out (--calibrate)")
    model = run.load_model("last", torch.device("cpu"), calibrated=False)
    dataset = data_mod.scan(data_mod.locate(config.data.source))
    train, val = data_mod.run_split(dataset, config.data.val_split, config.data.seed, config.data.holdout)
    _, held_out = data_mod.calibration_split(train, config.train.calibrate, config.train.data_seed)
    view = config.test_view
    out = {}
    for name, subset in (("calibration", held_out), ("validation", val)):
        store, _, _ = data_mod.build_store(subset, view.store_size, view.fixed_store_size, None)
        batches = view.batches(store, 32, shuffle=False, drop_incomplete=False)
        logits, labels, _ = predict_logits(model, batches, torch.device("cpu"), flip=config.train.flip_test)
        out[name] = (logits.double(), labels)
    return out


def ece(probs: torch.Tensor, labels: torch.Tensor) -> float:
    probs = probs.numpy()
    return expected_calibration_error(probs.max(1), (probs.argmax(1) == labels.numpy()).astype(float))


def cross_entropy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))


def mix(weights: tuple[float, float, float], tempered: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Ensemble temperature scaling's probabilities: w1 tempered + w2 raw + w3 uniform."""
    w1, w2, w3 = weights
    return w1 * tempered + w2 * raw + w3 / tempered.shape[-1]


def fit_ensemble(tempered: torch.Tensor, raw: torch.Tensor, labels: torch.Tensor, steps: int = 50) -> tuple:
    """The mixture weights (w1, w2, w3), summing to 1, of least cross-entropy, on a grid."""
    candidates = [(w1, w2, 1 - w1 - w2) for w1 in np.linspace(0, 1, steps + 1)
                  for w2 in np.linspace(0, 1 - w1, max(2, round((1 - w1) * steps) + 1))]
    return min(candidates, key=lambda w: cross_entropy(mix(w, tempered, raw), labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders trained with --calibrate")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--target", type=float, default=0.02,
                        help="an ECE target: how often a perfectly calibrated model meets it")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("| run | calibrator | fitted | val ECE | p | val cross-entropy |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for path in args.runs:
        logits = run_logits(path)
        (cal, cal_labels), (val, val_labels) = logits["calibration"], logits["validation"]
        t = fit_temperature(cal, cal_labels)
        weights = fit_ensemble(tempered_probabilities(cal, t), tempered_probabilities(cal, 1.0), cal_labels)
        val_tempered, val_raw = tempered_probabilities(val, t), tempered_probabilities(val, 1.0)
        mean_cal, mean_val = cal.mean(0, keepdim=True), val.mean(0, keepdim=True)
        t_mean = fit_temperature(mean_cal, cal_labels)
        oracle = fit_temperature(val, val_labels)
        least = min(np.geomspace(0.25, 4.0, 561), key=lambda t: ece(tempered_probabilities(val, t), val_labels))
        rows = [("none", "", val_raw),
                ("temperature", f"T = {t:.3f}", val_tempered),
                ("ensemble", "w = " + ", ".join(f"{w:.2f}" for w in weights), mix(weights, val_tempered, val_raw)),
                ("logit mean", f"T = {t_mean:.3f}", tempered_probabilities(mean_val, t_mean)),
                ("(oracle temperature)", f"T = {oracle:.3f}", tempered_probabilities(val, oracle)),
                ("(temperature of least ECE)", f"T = {least:.3f}", tempered_probabilities(val, least))]
        for name, fitted, probs in rows:
            shown = ece(probs, val_labels)
            p = ece_noise(probs.numpy().max(1), shown).p_value
            print(f"| {path} | {name} | {fitted} | {shown:.4f} | {p:.2f} | {cross_entropy(probs, val_labels):.4f} |")
        calibrated = simulated_eces(val_tempered.numpy().max(1))
        print(f"| {path} | (noise floor at T: mean; 95th percentile; share at or below {args.target}) | | "
              f"{calibrated.mean():.4f}; {np.quantile(calibrated, 0.95):.4f}; "
              f"{np.mean(calibrated <= args.target):.2f} | | |")


if __name__ == "__main__":
    main()
