"""Training and inference throughput of the study setup, against this machine's matmul peak.

Measures, in one run, with synthetic uint8 images (speed does not depend on pixel values):
  * training images/s of the study setup (spp 1,2,4, augmentation, dropout 0.2, 180x180,
    batch 32, Adam): the full step, batch assembly + augmentation + forward + backward + update,
    and the seconds an epoch of the 2,936 flower training images takes at that rate;
  * inference images/s at batch 32 (180x180) and single-image latency at 240x320;
  * the achieved FLOP/s as a fraction of the fp32 matmul peak measured in the same run
    (one training image at 180x180 costs about 0.54 GFLOP: forward 0.18, backward twice that);
  * where a training step's time goes: batch assembly, augmentation, forward, backward and the
    optimizer, timed around each phase (not with torch.profiler, whose bookkeeping changes how
    glibc reuses memory and turns the 66 MB gradient buffer of the first pooling layer into
    fresh pages every step, so that a zero-fill seems to take a third of the step);
  * with --precision bf16, the same under CPU autocast (bfloat16).

    python benchmarks/throughput.py [--precision fp32|bf16] [--steps 20] [--native]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from sppnet._perf import keep_freed_memory
from sppnet.augment import Augment
from sppnet.data import ImageStore
from sppnet.evaluate import to_device_batch
from sppnet.models import build_model
from sppnet.sizing import Fixed, Native
from sppnet.train import autocast_dtype, peak_rss_mb, train_one_epoch

FORWARD_GFLOP = 0.18  # per 180x180 image, conv layers (the dense layers are negligible)


def matmul_peak(dtype: torch.dtype, largest: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a square matmul, growing the size until one product takes >= 20 ms (so a CPU
    without fast units for ``dtype`` is measured in seconds, not minutes)."""
    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        t0 = time.perf_counter()
        a @ b
        if time.perf_counter() - t0 >= 0.02 or n >= largest:
            break
        n *= 2
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_phases(model, optimizer, batches, augment, generator) -> dict[str, float]:
    """Median seconds of each phase of the training steps over ``batches`` (the same work as
    :func:`sppnet.train.train_one_epoch`, timed phase by phase)."""
    model.train()
    times: dict[str, list[float]] = {k: [] for k in ("assembly", "augmentation", "forward", "backward", "optimizer")}
    batches = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        images, sizes, labels = to_device_batch(batch, torch.device("cpu"))
        t1 = time.perf_counter()
        images = augment(images, sizes, generator)
        t2 = time.perf_counter()
        loss = F.cross_entropy(model(images, sizes).float(), labels)
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        for name, a, b in zip(times, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            times[name].append(b - a)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--native", action="store_true", help="native-180 padded batches of flower-like shapes")
    args = parser.parse_args()
    keep_freed_memory()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    rng = np.random.default_rng(0)
    if args.native:
        shapes = [(180, 270), (180, 240), (240, 180), (180, 180)]
        images = [rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(32 * args.steps)]
        policy = Native(180)
    else:
        images = [rng.integers(0, 256, (180, 180, 3), dtype=np.uint8) for _ in range(32 * args.steps)]
        policy = Fixed(180)
    store = ImageStore(images, [i % 5 for i in range(len(images))])
    torch.manual_seed(0)
    model = build_model("spp").to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    augment, generator, device = Augment(), torch.Generator().manual_seed(0), torch.device("cpu")

    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16)
    if args.precision == "bf16" and peak16 < peak32:
        print(f"note: bf16 matmul runs at {peak16:.1f} GFLOP/s against {peak32:.0f} in fp32 here: this CPU has "
              "no bf16 units, so bf16 autocast is slower than fp32 on it")
    with autocast:
        amp = autocast_dtype(args.precision)
        train_one_epoch(model, optimizer, policy.batches(store, 32, epoch=0, seed=0), device, augment, generator,
                        amp_dtype=amp)  # warm-up
        step_times = []

        def on_step(step, loss, acc):
            step_times.append(time.perf_counter())

        t0 = time.perf_counter()
        train_one_epoch(model, optimizer, policy.batches(store, 32, epoch=1, seed=0), device, augment, generator, on_step,
                        amp_dtype=amp)
        steps = np.diff([t0, *step_times])
        train_ips = 32 / statistics.median(steps)

        phases = step_phases(model, optimizer, policy.batches(store, 32, epoch=2, seed=0), augment, generator)

        model.eval()
        x = torch.rand(32, 3, 180, 180).mul(255).contiguous(memory_format=torch.channels_last)
        one = torch.rand(1, 3, 240, 320).mul(255).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            model(x), model(one)
            batch_t, single_t = [], []
            for _ in range(args.steps):
                t = time.perf_counter(); model(x); batch_t.append(time.perf_counter() - t)
                t = time.perf_counter(); model(one); single_t.append(time.perf_counter() - t)
    infer_ips = 32 / statistics.median(batch_t)
    achieved = train_ips * 3 * FORWARD_GFLOP
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {args.precision}, "
          f"{policy.describe()} batches, medians of {args.steps}")
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s")
    print(f"training : {train_ips:6.1f} images/s ({1000 * statistics.median(steps):.0f} ms/step; "
          f"{2936 / train_ips:.1f} s per flowers epoch); {achieved:.0f} GFLOP/s = "
          f"{achieved / peak32:.0%} of fp32 peak, {achieved / peak16:.0%} of bf16 peak")
    total = sum(phases.values())
    print("training step phases (medians): " + ", ".join(
        f"{name} {1000 * t:.1f} ms ({t / total:.0%})" for name, t in phases.items()))
    print(f"inference: {infer_ips:6.1f} images/s at batch 32; single 240x320 image "
          f"{1000 * statistics.median(single_t):.1f} ms")
    print(f"peak RSS of this benchmark: {peak_rss_mb():.0f} MB (a full training run records its own in metrics.json)")


if __name__ == "__main__":
    main()
