"""Accuracy of the presets: honest tuning on the training split, then 3 seeds on the validation split.

Two stages, each a set of ordinary run folders under ``--out`` (finished runs are reused,
interrupted ones resumed, so the script can be stopped and started again):

  1. ``tune/NAME``: each candidate recipe trained with ``--holdout 0.2``: validated on a fifth of
     the 2,936 training files; the validation split is never read. The ``study-plus-no-*`` runs
     remove one ingredient at a time; the test-view ingredients (mirror images, whole images)
     are measured on the ``study-plus`` tuning run by evaluating it without them.
  2. ``PRESET/seedN``: each preset trained on the whole training split and validated once on the
     validation split (seed 123), with training seeds 123, 1 and 2.

Then it prints one markdown table per stage: final-epoch validation accuracy (never the best
epoch: choosing an epoch by validation accuracy would peek), mean and spread over seeds, ECE,
mean confidence right/wrong and CPU minutes.

    python benchmarks/presets.py ../shared/datasets/flower_photos.tgz --out runs/presets
    python benchmarks/presets.py DATA --out runs/presets --report-only   # tables of what exists
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from sppnet.evaluate import evaluate_run
from sppnet.runs import RunFolder
from sppnet.config import TrainConfig
from sppnet.train import train

TUNING = {
    "study": dict(preset="study"),
    # native 180 + cosine at the study's 1e-3 + mirror test view, with label smoothing and decay
    "study-plus-ls-wd": dict(preset="study-plus", lr=1e-3, warmup_epochs=0, label_smoothing=0.1, weight_decay=0.05),
    "study-plus": dict(preset="study-plus"),
    "study-plus-no-native": dict(preset="study-plus", policy={"kind": "fixed", "size": 180}),
    "study-plus-no-cosine": dict(preset="study-plus", schedule="constant", lr=1e-3, warmup_epochs=0),
    # the best preset's schedule length, then its ingredients removed one at a time (at 20 epochs)
    "best50": dict(preset="best"),
    "best20": dict(preset="best", epochs=20),
    "best20-no-bn": dict(preset="best", epochs=20, batch_norm=False),
    "best20-3-blocks": dict(preset="best", epochs=20, widths=(16, 32, 64)),
    "best20-fixed": dict(preset="best", epochs=20, policy={"kind": "fixed", "size": 128}),
}
PRESETS = ("study", "study-plus", "best")
SEEDS = (123, 1, 2)


def finished(path: Path) -> bool:
    run = RunFolder(path)
    if not run.file("metrics.json").is_file():
        return False
    return run.read_json("metrics.json")["epochs"] >= run.read_config()["train"]["epochs"]


def ensure(path: Path, data: str, options: dict, device: str) -> None:
    if finished(path):
        return
    options = dict(options)
    preset = options.pop("preset")
    config = TrainConfig.from_preset(preset, data=data, out=str(path), device=device, **options)
    train(config, resume=RunFolder(path).exists())


def summary(path: Path) -> dict:
    run = RunFolder(path)
    metrics = run.read_json("metrics.json")
    history = run.read_history()
    return {
        "accuracy": metrics["final"]["val_accuracy"],
        "ece": metrics["validation"]["ece"],
        "right": metrics["validation"]["confidence_right"],
        "wrong": metrics["validation"]["confidence_wrong"],
        "minutes": sum(r["seconds"] for r in history) / 60,
        "epochs": metrics["epochs"],
    }


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--out", default="runs/presets")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the runs that exist")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.report_only:
        for name, options in TUNING.items():
            ensure(out / "tune" / name, args.data, {**options, "holdout": 0.2}, args.device)
        for preset in PRESETS:
            for seed in SEEDS:
                ensure(out / preset / f"seed{seed}", args.data, dict(preset=preset, seed=seed, split_seed=123), args.device)

    print("## Tuning on the training split (hold-out 587 of 2,936 training files, seed 123)\n")
    print("| recipe | hold-out acc (final epoch) | ECE | epochs | CPU minutes |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in TUNING:
        path = out / "tune" / name
        if finished(path):
            s = summary(path)
            print(f"| {name} | {s['accuracy']:.4f} | {s['ece']:.3f} | {s['epochs']} | {s['minutes']:.0f} |")
    for base in ("study", "study-plus"):
        tuned = out / "tune" / base
        if not finished(tuned):
            continue
        for label, kwargs in (("mirror images at test", dict(flip=True)), ("no mirror images at test", dict(flip=False)),
                              ("whole images (native 180) at test", dict(native=180, flip=False)),
                              ("warped to 180x180 at test", dict(size=180, flip=False))):
            ev = evaluate_run(tuned, weights="last", device=args.device, **kwargs)
            print(f"| {base}, {label} | {ev.accuracy:.4f} | {ev.ece:.3f} | | |")

    print("\n## Validation split (734 files, seed 123), 3 training seeds\n")
    print("| preset | val acc (final epoch), mean ± sd | per seed | ECE | confidence right / wrong | CPU minutes per run |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for preset in PRESETS:
        runs = [out / preset / f"seed{seed}" for seed in SEEDS]
        done = [summary(p) for p in runs if finished(p)]
        if not done:
            continue
        accs = [s["accuracy"] for s in done]
        print(f"| {preset} | {spread(accs)} | {', '.join(f'{a:.4f}' for a in accs)} | "
              f"{statistics.mean(s['ece'] for s in done):.3f} | "
              f"{statistics.mean(s['right'] for s in done):.3f} / {statistics.mean(s['wrong'] for s in done):.3f} | "
              f"{statistics.mean(s['minutes'] for s in done):.0f} |")


if __name__ == "__main__":
    main()
