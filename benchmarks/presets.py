"""Accuracy of the presets: honest tuning on the training split, then 3 seeds on the validation split.

Stages, each a set of ordinary run folders under ``--out`` (finished runs are reused, interrupted
ones resumed, so the script can be stopped and started again):

  1. ``tune/NAME``: each candidate recipe trained with ``--holdout 0.2``: validated on a fifth of
     the 2,936 training files; the validation split is never read. The runs in ``REMOVALS``
     (``best-no-ema``, ``best-fp32``, ...) remove one ingredient of a preset at a time, at the
     preset's full length, and get a table of their own: each one's change from the preset.
     The ``fast`` recipes, whose differences are of the size of their seed spread, are trained
     with seeds 123, 1 and 2 (``tune/NAME-seed1``, ``-seed2``), the others with seed 123.
  2. ``PRESET/seedN``: each preset trained on the whole training split (less its calibration
     hold-out) and validated once on the validation split (seed 123), with training seeds 123, 1, 2.

Then it prints one markdown table per stage: final-epoch validation accuracy (never the best
epoch: choosing an epoch by validation accuracy would peek), mean and spread over seeds, ECE
before and after temperature scaling, the weakest class's recall, minutes; and the size
table: each preset's seed-123 run tested on whole images at shorter side 128, 180, 256 and 320
and warped to 180 x 180; the same table on the hold-out for the size candidates of ``best``.

    python benchmarks/presets.py ../shared/datasets/flower_photos.tgz --out runs/presets
    python benchmarks/presets.py DATA --out runs/presets --stages final --presets fast,best
    python benchmarks/presets.py DATA --out runs/presets --report-only   # tables of what exists

Runs can be spread over processes (``--stages``, ``--presets``, ``--tuning``): each process
trains only what it is given, and ``--report-only`` prints everything that has finished.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from sppnet.config import PRESETS, TrainConfig
from sppnet.evaluate import evaluate_run
from sppnet.runs import RunFolder
from sppnet.train import train

TUNING = {
    # the round before this one, for reference
    "best-v1": dict(preset="best", widths=(16, 32, 64, 128), precision="fp32", ema=0.0, label_smoothing=0.0,
                    norm_after_pool=False, calibrate=0.0, epochs=50),
    "best-v2": dict(preset="best", norm_after_pool=False),  # the second round's best
    "best-v2-narrow": dict(preset="best", norm_after_pool=False, widths=(16, 32, 64, 128)),
    "best-v3": dict(preset="best", policy={"kind": "native", "size": 128}, epochs=70),  # the third round's best
    "best": dict(preset="best"),
    # best's ingredients removed one at a time, at its full length (60 epochs)
    "best-no-ema": dict(preset="best", ema=0.0),
    "best-no-label-smoothing": dict(preset="best", label_smoothing=0.0),
    "best-fp32": dict(preset="best", precision="fp32"),
    "best-norm-before-pool": dict(preset="best", norm_after_pool=False),
    "best-native-128": dict(preset="best", policy={"kind": "native", "size": 128}),
    # for the size target: whole images growing from 112 to 160 px (tested at 160)
    "best-progressive-112-160": dict(preset="best", policy={"kind": "progressive", "low": 112, "high": 160}),
    # fourth round, for the size target: each batch at a shorter side drawn from LOW:HIGH (tested at HIGH)
    "best-native-range-96-192": dict(preset="best", policy={"kind": "native-range", "low": 96, "high": 192}),
    "best-native-range-112-176": dict(preset="best", policy={"kind": "native-range", "low": 112, "high": 176}),
    "fast": dict(preset="fast"),
    "fast-no-ema": dict(preset="fast", ema=0.0),
    "fast-no-label-smoothing": dict(preset="fast", label_smoothing=0.0),
    "fast-fp32": dict(preset="fast", precision="fp32"),
    "fast-norm-before-pool": dict(preset="fast", norm_after_pool=False),
    # third round, each on three seeds (the differences are of the size of fast's seed spread)
    "fast-v2": dict(preset="fast", norm_after_pool=False, epochs=14),  # the second round's fast
    "fast-v2-progressive-48-96": dict(preset="fast", norm_after_pool=False, epochs=14,
                                      policy={"kind": "progressive", "low": 48, "high": 96}),
    "fast-v2-progressive-56-96": dict(preset="fast", norm_after_pool=False, epochs=14,
                                      policy={"kind": "progressive", "low": 56, "high": 96}),
    "fast-v2-progressive-64-96": dict(preset="fast", norm_after_pool=False, epochs=14,
                                      policy={"kind": "progressive", "low": 64, "high": 96}),
    "fast-14-epochs": dict(preset="fast", epochs=14),
    "fast-17-epochs": dict(preset="fast", epochs=17),
    "fast-20-epochs": dict(preset="fast", epochs=20),
    "study": dict(preset="study"),
}
#: Tuning runs trained with every seed of SEEDS (``tune/NAME`` for seed 123, ``tune/NAME-seedN``
#: for the others); the rest with seed 123 alone.
TUNED_ON_SEEDS = tuple(name for name in TUNING if name.split("-")[0] == "fast")
FINAL = ("study", "study-plus", "fast", "best")
#: Each preset's one-at-a-time removals (tuning recipes at the preset's full length) and what each takes away.
REMOVALS = {
    "best": {"best-no-ema": "moving average of the weights", "best-no-label-smoothing": "label smoothing",
             "best-fp32": "bf16 (trained in fp32)", "best-norm-before-pool": "batch norm after the pooling",
             "best-native-128": "sizes drawn per batch (whole images at 128)"},
    "fast": {"fast-no-ema": "moving average of the weights", "fast-no-label-smoothing": "label smoothing",
             "fast-fp32": "bf16 (trained in fp32)", "fast-norm-before-pool": "batch norm after the pooling"},
}
#: Tuning runs whose size table (on the hold-out) is printed: the candidates for best's size target.
SIZE_TUNING = ("best-v2", "best-v3", "best", "best-native-128", "best-progressive-112-160",
               "best-native-range-96-192", "best-native-range-112-176")
SEEDS = (123, 1, 2)
SIZE_VIEWS = (("whole, shorter side 128", dict(native=128)), ("whole, 180", dict(native=180)),
              ("whole, 256", dict(native=256)), ("whole, 320", dict(native=320)),
              ("warped to 180 x 180", dict(size=180)))


def tuning_paths(out: Path, name: str) -> dict[int, Path]:
    """The run folder of each seed a tuning recipe is trained with."""
    seeds = SEEDS if name in TUNED_ON_SEEDS else SEEDS[:1]
    return {seed: out / "tune" / (name if seed == SEEDS[0] else f"{name}-seed{seed}") for seed in seeds}


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
    calibrated = metrics.get("calibrated", {}).get("last")
    validation = metrics["validation"]
    return {
        "accuracy": metrics["final"]["val_accuracy"],
        "ece": validation["ece"],
        "ece_calibrated": calibrated["val_ece"] if calibrated else None,
        "temperature": calibrated["temperature"] if calibrated else None,
        "right": validation["confidence_right"],
        "wrong": validation["confidence_wrong"],
        "minutes": sum(r["seconds"] for r in history) / 60,
        "epochs": metrics["epochs"],
    }


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def mean_or_dash(values: list, fmt: str = ".3f") -> str:
    values = [v for v in values if v is not None]
    return format(statistics.mean(values), fmt) if values else "—"


def report(out: Path, device: str) -> None:
    print("## Tuning on the training split (hold-out 587 of 2,936 training files; training seed 123, or the mean "
          "± sd of seeds 123, 1, 2 where three are given)\n")
    print("| recipe | hold-out acc (final epoch) | ECE (calibrated) | epochs | minutes |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in TUNING:
        done = [summary(path) for path in tuning_paths(out, name).values() if finished(path)]
        if done:
            accuracy = spread([s["accuracy"] for s in done])
            if len(done) > 1:
                accuracy += " (" + ", ".join(f"{s['accuracy']:.4f}" for s in done) + ")"
            print(f"| {name} | {accuracy} | {mean_or_dash([s['ece'] for s in done])} "
                  f"({mean_or_dash([s['ece_calibrated'] for s in done])}) | {done[0]['epochs']} "
                  f"| {statistics.mean(s['minutes'] for s in done):.1f} |")

    print("\n## Removals: each ingredient of a preset taken out on its own, at the preset's full length "
          "(hold-out)\n")
    removal_table(out)

    print("\n## Validation split (734 files, seed 123), 3 training seeds, final epoch\n")
    print("ECE during training (bf16 where the run used it, before calibration), then as `sppnet evaluate` "
          "gives it (float32, with the run's temperature), beside the ECE a perfectly calibrated model would "
          "show on 734 images and, per seed, the share of such models that show as much or more (p; below 0.05: "
          "more miscalibrated than 734 photos explain).\n")
    print("| preset | val acc, mean ± sd | per seed | weakest class recall (mean; lowest seed) | ECE uncalibrated "
          "→ calibrated (floor; p per seed) | temperature | minutes per run |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    for preset in FINAL:
        runs = [out / preset / f"seed{seed}" for seed in SEEDS]
        done = [(p, summary(p)) for p in runs if finished(p)]
        if not done:
            continue
        accs = [s["accuracy"] for _, s in done]
        evaluations = [evaluate_run(path, weights="last", device=device) for path, _ in done]
        recalls = {name: [e.recall[i] for e in evaluations] for i, name in enumerate(evaluations[0].class_names)}
        weakest = min(recalls, key=lambda n: statistics.mean(recalls[n]))
        print(f"| {preset} | {spread(accs)} | {', '.join(f'{a:.4f}' for a in accs)} | "
              f"{weakest} {statistics.mean(recalls[weakest]):.3f}; {min(recalls[weakest]):.3f} | "
              f"{mean_or_dash([s['ece'] for _, s in done])} → {statistics.mean(e.ece for e in evaluations):.3f} "
              f"({statistics.mean(e.ece_floor for e in evaluations):.3f}; "
              f"{', '.join(f'{e.ece_p:.2f}' for e in evaluations)}) | "
              f"{mean_or_dash([s['temperature'] for _, s in done], '.2f')} | "
              f"{mean_or_dash([s['minutes'] for _, s in done], '.1f')} |")

    print("\n## Size robustness on the hold-out: the size candidates (seed 123), last weights\n")
    size_table({name: path for name in SIZE_TUNING for path in tuning_paths(out, name).values()}, device)
    print("\n## Size robustness: the seed-123 run of each preset, last weights, tested on other views\n")
    size_table({preset: out / preset / "seed123" for preset in FINAL}, device)


def removal_table(out: Path) -> None:
    """One row per finished removal: its hold-out accuracy (mean over the seeds its preset's tuning
    run has) and the change from the preset's own tuning run, in points."""
    print("| preset | ingredient removed | hold-out acc (final epoch) | change (points) | ECE (calibrated) "
          "| minutes |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for preset, removals in REMOVALS.items():
        done = [summary(path) for path in tuning_paths(out, preset).values() if finished(path)]
        if not done:
            continue
        base = [s["accuracy"] for s in done]
        print(f"| {preset} | (none) | {spread(base)} | | {mean_or_dash([s['ece_calibrated'] for s in done])} | "
              f"{statistics.mean(s['minutes'] for s in done):.1f} |")
        for name, ingredient in removals.items():
            done = [summary(path) for path in tuning_paths(out, name).values() if finished(path)]
            if not done:
                continue
            accuracy = statistics.mean(s["accuracy"] for s in done)
            change = 100 * (accuracy - statistics.mean(base))
            print(f"| {preset} | {ingredient} | {spread([s['accuracy'] for s in done])} | {change:+.1f} | "
                  f"{mean_or_dash([s['ece_calibrated'] for s in done])} | "
                  f"{statistics.mean(s['minutes'] for s in done):.1f} |")


def size_table(runs: dict[str, Path], device: str) -> None:
    """One row per finished run: its accuracy on each of SIZE_VIEWS (the run's own validation
    files) and the spread over the whole-image views 128-256."""
    print("| run | " + " | ".join(label for label, _ in SIZE_VIEWS) + " | spread over whole 128–256 |")
    print("| --- | " + " | ".join("---:" for _ in SIZE_VIEWS) + " | ---: |")
    for name, path in runs.items():
        if not finished(path):
            continue
        config = RunFolder(path).run_config()
        if config.model.get("input_size"):
            continue  # a flatten model takes one size only
        accs = [evaluate_run(path, weights="last", device=device, **view).accuracy for _, view in SIZE_VIEWS]
        whole = accs[:3]
        print(f"| {name} | " + " | ".join(f"{a:.4f}" for a in accs) + f" | {max(whole) - min(whole):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--out", default="runs/presets")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stages", default="tune,final", help="which stages to train: tune, final or both")
    parser.add_argument("--tuning", default=",".join(TUNING), help="which tuning runs to train")
    parser.add_argument("--presets", default=",".join(FINAL), help="which presets to train in the final stage")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="training seeds of the final stage")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the runs that exist")
    parser.add_argument("--no-report", action="store_true", help="train only (for processes that share the work)")
    args = parser.parse_args()
    out = Path(args.out)
    stages = args.stages.split(",")
    if not args.report_only:
        if "tune" in stages:
            for name in args.tuning.split(","):
                if name not in TUNING:
                    raise SystemExit(f"--tuning: unknown recipe {name!r}")
                for seed, path in tuning_paths(out, name).items():
                    ensure(path, args.data, {**TUNING[name], "holdout": 0.2, "seed": seed, "split_seed": 123},
                           args.device)
        if "final" in stages:
            for seed in map(int, args.seeds.split(",")):
                for preset in args.presets.split(","):
                    if preset not in PRESETS:
                        raise SystemExit(f"--presets: unknown preset {preset!r}")
                    ensure(out / preset / f"seed{seed}", args.data, dict(preset=preset, seed=seed, split_seed=123),
                           args.device)
    if not args.no_report:
        report(out, args.device)


if __name__ == "__main__":
    main()
