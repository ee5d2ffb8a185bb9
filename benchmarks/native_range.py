"""Training steps of ``best``'s network on whole images drawn per batch from a range of sizes.

``--native-range LOW:HIGH`` stores the images at HIGH and shrinks each batch to a shorter side
drawn from [LOW, HIGH]: a step costs what its pixels cost, on average, plus the shrinking. This
times whole training steps (batch assembly and shrinking, augmentation, forward, backward,
AdamW) of ``best``'s network, interleaved in one process, on batches of flower-like shapes
(random pixels: speed does not depend on them): ``native`` at LOW, at the side whose area is the
range's mean area, at HIGH, and the range itself; it prints the median step of each and its
ratio to ``native`` at 128 (the third round's ``best``), with the CPU and its matmul peaks.

    python benchmarks/native_range.py [--range 96:192] [--rounds 4] [--steps 12]
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import torch

from sppnet.config import PRESETS
from sppnet.data import ImageStore
from sppnet.models import build_model
from sppnet.runtime import keep_freed_memory
from sppnet.sizing import Native, NativeRange

from norm_after_pool import step_seconds
from throughput import matmul_peak
from time_to_accuracy import cpu_name


def flower_like(size: int, count: int, rng: np.random.Generator) -> ImageStore:
    """``count`` random images of the flower photos' usual shapes, shorter side ``size``."""
    shapes = [(size, size * 3 // 2), (size, size * 4 // 3), (size * 4 // 3, size), (size, size)]
    images = [rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(count)]
    return ImageStore(images, [i % 5 for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--range", default="96:192", help="LOW:HIGH of the native range")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of each variant")
    parser.add_argument("--steps", type=int, default=12, help="steps per round")
    args = parser.parse_args()
    low, high = (int(v) for v in args.range.split(":"))
    keep_freed_memory()
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; matmul peak measured now: "
          f"fp32 {matmul_peak(torch.float32, torch.device('cpu')):.0f} GFLOP/s, "
          f"bf16 {matmul_peak(torch.bfloat16, torch.device('cpu')):.0f} GFLOP/s; bf16 autocast\n")
    rng = np.random.default_rng(0)
    count = 32 * args.steps
    mean_side = round(math.sqrt((high ** 3 - low ** 3) / (3 * (high - low)))) if high > low else high
    stores = {size: flower_like(size, count, rng) for size in sorted({128, low, mean_side, high})}
    variants = {f"native {size}": (stores[size], Native(size)) for size in stores}
    variants[f"native range {low}:{high}"] = (stores[high], NativeRange(low, high))
    torch.manual_seed(0)
    model = build_model("spp", widths=PRESETS["best"]["widths"], batch_norm=True,
                        norm_after_pool=True).to(memory_format=torch.channels_last)
    times = {name: [] for name in variants}
    for round_ in range(args.rounds + 1):
        for name, (store, policy) in variants.items():
            seconds = step_seconds(model, store, policy, "bf16", round_)
            if round_:  # round 0 warms every shape's kernels up
                times[name].append(seconds)
    base = statistics.median(times["native 128"])
    print("| batches of 32 (`best`'s network) | median step (ms) | ratio to native 128 |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        note = " (the range's mean area)" if name == f"native {mean_side}" else ""
        print(f"| {name}{note} | {1000 * statistics.median(values):.1f} | {statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
