"""Training steps with the batch norm after each block's pooling, against before it (the default).

``--norm-after-pool`` builds each conv block as Conv + MaxPool + BatchNorm + ReLU instead of
Conv + BatchNorm + MaxPool + ReLU: the norm's forward and backward passes, memory-bound on a CPU,
work on a map four times smaller. This times whole training steps (batch assembly, augmentation,
forward, backward, AdamW) of the ``fast`` and ``best`` networks both ways, interleaved in one
process, on native batches of flower-like shapes (random pixels: speed does not depend on them),
and prints the median step of each and their ratio, with the CPU and its matmul peaks.

    python benchmarks/norm_after_pool.py [--precision bf16|fp32] [--rounds 5] [--steps 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sppnet.augment import Augment
from sppnet.config import PRESETS
from sppnet.data import ImageStore
from sppnet.models import build_model
from sppnet.runtime import autocast_dtype, keep_freed_memory
from sppnet.sizing import Native
from sppnet.train import train_one_epoch

from throughput import matmul_peak
from time_to_accuracy import cpu_name


def step_seconds(model, store, policy, precision: str, epoch: int) -> float:
    """Median seconds of one training step over an epoch of ``store``."""
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.05)
    augment, generator = Augment(rotation=0.0), torch.Generator().manual_seed(epoch)
    times = []

    def on_step(step, loss, accuracy):
        times.append(time.perf_counter())

    start = time.perf_counter()
    train_one_epoch(model, optimizer, policy.batches(store, 32, epoch=epoch, seed=0), torch.device("cpu"), augment,
                    generator, on_step, amp_dtype=autocast_dtype(precision))
    return statistics.median(np.diff([start, *times])[1:])  # the first step warms the caches up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each variant")
    parser.add_argument("--steps", type=int, default=12, help="steps per round")
    args = parser.parse_args()
    keep_freed_memory()
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; matmul peak measured now: "
          f"fp32 {matmul_peak(torch.float32, torch.device('cpu')):.0f} GFLOP/s, "
          f"bf16 {matmul_peak(torch.bfloat16, torch.device('cpu')):.0f} GFLOP/s; precision {args.precision}\n")
    print("| network | native size | step, norm before pooling (ms) | step, norm after pooling (ms) | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    for preset in ("fast", "best"):
        size = PRESETS[preset]["policy"]["size"]
        shapes = [(size, size * 3 // 2), (size, size * 4 // 3), (size * 4 // 3, size), (size, size)]
        images = [rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(32 * args.steps)]
        store, policy = ImageStore(images, [i % 5 for i in range(len(images))]), Native(size)
        models = {}
        for after in (False, True):
            torch.manual_seed(0)
            models[after] = build_model("spp", widths=PRESETS[preset]["widths"], batch_norm=True,
                                        norm_after_pool=after).to(memory_format=torch.channels_last)
        times = {False: [], True: []}
        for round_ in range(args.rounds + 1):
            for after, model in models.items():
                seconds = step_seconds(model, store, policy, args.precision, round_)
                if round_:  # round 0 warms up both
                    times[after].append(seconds)
        before, after = statistics.median(times[False]), statistics.median(times[True])
        widths = ",".join(map(str, PRESETS[preset]["widths"]))
        print(f"| {preset} ({widths}) | {size} | {1000 * before:.1f} | {1000 * after:.1f} | {before / after:.2f} |")


if __name__ == "__main__":
    main()
