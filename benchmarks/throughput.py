"""Training and inference throughput of the study setup, against this machine's matmul peak.

Measures, in one run, with synthetic uint8 images (speed does not depend on pixel values):
  * training images/s of the study setup (spp 1,2,4, augmentation, dropout 0.2, 180x180,
    batch 32, Adam): the full step, batch assembly + augmentation + forward + backward + update,
    and the seconds an epoch of the 2,936 flower training images takes at that rate;
  * inference images/s at batch 32 (180x180) and single-image latency at 240x320;
  * the achieved FLOP/s as a fraction of the fp32 matmul peak measured in the same run
    (one training image at 180x180 costs about 0.54 GFLOP with dense kernels: forward 0.18,
    backward twice that; the sparse last-conv gradient does less, so this is dense-equivalent);
  * where a training step's time goes: batch assembly, augmentation, forward, backward and the
    optimizer, timed around each phase (not with torch.profiler, whose bookkeeping changes how
    glibc reuses memory and turns the 66 MB gradient buffer of the first pooling layer into
    fresh pages every step, so that a zero-fill seems to take a third of the step);
  * with --precision bf16, the same under autocast (bfloat16);
  * with --device cuda, all of it on the GPU (channels-last, peaks measured on the GPU, every
    timer read after a device synchronize).

    python benchmarks/throughput.py [--precision fp32|bf16] [--steps 20] [--native] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from sppnet.runtime import keep_freed_memory
from sppnet.augment import Augment
from sppnet.data import ImageStore
from sppnet.errors import ConfigError
from sppnet.inference import to_device_batch
from sppnet.models import build_model
from sppnet.sizing import Fixed, Native
from sppnet.runtime import autocast_dtype, peak_rss_mb, resolve_device
from sppnet.train import train_one_epoch

FORWARD_GFLOP = 0.18  # per 180x180 image, conv layers (the dense layers are negligible)


def sync(device: torch.device) -> None:
    """Waits for the device's queued work, so that a host timer read next covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """GFLOP/s of a square matmul, growing the size until one product takes >= 20 ms (so a CPU
    without fast units for ``dtype`` is measured in seconds, not minutes)."""
    n, largest = 256, (8192 if device.type == "cuda" else 2048)
    while True:
        a, b = (
            torch.randn(n, n, dtype=dtype, device=device),
            torch.randn(n, n, dtype=dtype, device=device),
        )
        a @ b
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if time.perf_counter() - t0 >= 0.02 or n >= largest:
            break
        n *= 2
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_phases(model, optimizer, batches, augment, generator, device, amp_dtype) -> dict[str, float]:
    """Median seconds of each phase of the training steps over ``batches`` (the same work as
    :func:`sppnet.train.train_one_epoch`, timed phase by phase)."""
    model.train()
    times: dict[str, list[float]] = {k: [] for k in ("assembly", "augmentation", "forward", "backward", "optimizer")}
    batches = iter(batches)

    def now():
        sync(device)
        return time.perf_counter()

    while True:
        t0 = now()
        batch = next(batches, None)
        if batch is None:
            break
        images, sizes, labels = to_device_batch(batch, device)
        t1 = now()
        images = augment(images, sizes, generator)
        t2 = now()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images, sizes)
        loss = F.cross_entropy(logits.float(), labels)
        t3 = now()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = now()
        optimizer.step()
        t5 = now()
        for name, a, b in zip(times, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            times[name].append(b - a)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--native", action="store_true", help="native-180 padded batches of flower-like shapes")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA where present, else CPU"
    )
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    keep_freed_memory()
    amp = autocast_dtype(args.precision)
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
    model = build_model("spp").to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    augment, generator = Augment(), torch.Generator().manual_seed(0)

    peak32 = matmul_peak(torch.float32, device)
    peak16 = matmul_peak(torch.bfloat16, device)
    if args.precision == "bf16" and peak16 < peak32:
        print(
            f"note: bf16 matmul runs at {peak16:.1f} GFLOP/s against {peak32:.0f} in fp32 here: this CPU has "
            "no bf16 units, so bf16 autocast is slower than fp32 on it"
        )
    train_one_epoch(
        model, optimizer, policy.batches(store, 32, epoch=0, seed=0), device, augment, generator, amp_dtype=amp
    )  # warm-up
    step_times = []

    def on_step(step, loss, acc):  # reads the loss, so the step's GPU work is done
        step_times.append(time.perf_counter())

    sync(device)
    t0 = time.perf_counter()
    train_one_epoch(
        model, optimizer, policy.batches(store, 32, epoch=1, seed=0), device, augment, generator, on_step, amp_dtype=amp
    )
    steps = np.diff([t0, *step_times])
    train_ips = 32 / statistics.median(steps)

    phases = step_phases(model, optimizer, policy.batches(store, 32, epoch=2, seed=0), augment, generator, device, amp)

    model.eval()
    x = torch.rand(32, 3, 180, 180, device=device).mul(255).contiguous(memory_format=torch.channels_last)
    one = torch.rand(1, 3, 240, 320, device=device).mul(255).contiguous(memory_format=torch.channels_last)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=amp, enabled=amp is not None),
    ):
        model(x), model(one)
        batch_t, single_t = [], []
        for _ in range(args.steps):
            sync(device)
            t = time.perf_counter()
            model(x)
            sync(device)
            batch_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            model(one)
            sync(device)
            single_t.append(time.perf_counter() - t)
    infer_ips = 32 / statistics.median(batch_t)
    achieved = train_ips * 3 * FORWARD_GFLOP
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(
        f"torch {torch.__version__}, {where}, precision {args.precision}, "
        f"{policy.describe()} batches, medians of {args.steps}"
    )
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s")
    print(
        f"training : {train_ips:6.1f} images/s ({1000 * statistics.median(steps):.1f} ms/step; "
        f"{2936 / train_ips:.1f} s per flowers epoch); {achieved:.0f} GFLOP/s dense-equivalent = "
        f"{achieved / peak32:.0%} of fp32 peak, {achieved / peak16:.0%} of bf16 peak"
    )
    total = sum(phases.values())
    print(
        "training step phases (medians): "
        + ", ".join(f"{name} {1000 * t:.1f} ms ({t / total:.0%})" for name, t in phases.items())
    )
    print(
        f"inference: {infer_ips:6.1f} images/s at batch 32; single 240x320 image "
        f"{1000 * statistics.median(single_t):.1f} ms"
    )
    print(f"peak RSS of this benchmark: {peak_rss_mb():.0f} MB (a full training run records its own in metrics.json)")
    if device.type == "cuda":
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
