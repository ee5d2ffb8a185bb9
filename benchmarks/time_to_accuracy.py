"""Minutes to accuracy: the ``fast`` preset against the study's, trained one after the other.

Each preset is trained from scratch with each training seed (the seed-123 split), one run at a
time, and timed from the call to the end of training (scanning, decoding, every epoch and its
validation, calibration): what a user waits for. It prints minutes and final-epoch validation
accuracy side by side, and the ratio of the medians of the wall-clock times measured in this run.

    python benchmarks/time_to_accuracy.py ../shared/datasets/flower_photos.tgz --out runs/tta
    python benchmarks/time_to_accuracy.py DATA --presets study,fast,best --seeds 123

Runs are written under ``--out/PRESET/seedN`` (an existing folder is replaced: its time would
not be this session's). The machine's CPU and its measured matmul peaks are printed first, so
that the minutes can be read against the hardware.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from sppnet.config import TrainConfig
from sppnet.train import Reporter, train

from throughput import matmul_peak


def cpu_name() -> str:
    """lscpu's model name (from /proc/cpuinfo), or what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Quiet(Reporter):
    def message(self, text: str) -> None:
        pass

    def epoch(self, line: str) -> None:
        pass


def timed_run(data: str, preset: str, seed: int, out: Path, device: str) -> dict:
    if out.exists():
        shutil.rmtree(out)
    config = TrainConfig.from_preset(preset, data=data, out=str(out), seed=seed, split_seed=123, device=device)
    start = time.perf_counter()
    metrics = train(config, reporter=Quiet())
    seconds = time.perf_counter() - start
    result = {"preset": preset, "seed": seed, "seconds": seconds, "val_accuracy": metrics["final"]["val_accuracy"],
              "epochs": metrics["epochs"]}
    (out / "time.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--out", default="runs/tta")
    parser.add_argument("--presets", default="study,fast", help="comma-separated; the first is the baseline")
    parser.add_argument("--seeds", default="123,1,2")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    presets = args.presets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    cpu = torch.device("cpu")
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; matmul peak measured now: "
          f"fp32 {matmul_peak(torch.float32, cpu):.0f} GFLOP/s, bf16 {matmul_peak(torch.bfloat16, cpu):.0f} GFLOP/s")
    results: dict[str, list[dict]] = {p: [] for p in presets}
    for seed in seeds:  # presets interleaved, so a slow hour of the machine hits all of them
        for preset in presets:
            r = timed_run(args.data, preset, seed, Path(args.out) / preset / f"seed{seed}", args.device)
            results[preset].append(r)
            print(f"{preset} seed {seed}: {r['seconds'] / 60:.2f} min, final val accuracy {r['val_accuracy']:.4f}",
                  flush=True)
    base = statistics.median(r["seconds"] for r in results[presets[0]])
    print("\n| preset | epochs | minutes per run (median; each) | val accuracy, final epoch (mean ± sd; each) "
          f"| time against {presets[0]} |")
    print("| --- | ---: | --- | --- | ---: |")
    for preset, runs in results.items():
        minutes = [r["seconds"] / 60 for r in runs]
        accs = [r["val_accuracy"] for r in runs]
        sd = f" ± {statistics.stdev(accs):.4f}" if len(accs) > 1 else ""
        print(f"| {preset} | {runs[0]['epochs']} | {statistics.median(minutes):.2f} ({', '.join(f'{m:.2f}' for m in minutes)}) "
              f"| {statistics.mean(accs):.4f}{sd} ({', '.join(f'{a:.4f}' for a in accs)}) "
              f"| {statistics.median(r['seconds'] for r in runs) / base:.2f} |")


if __name__ == "__main__":
    main()
