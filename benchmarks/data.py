"""Data-side costs on the flower photos, against a training step measured in the same run.

Prints:
  * seconds to decode all flowers into the in-memory store (fixed 180 and native 180),
  * the padding overhead of native-180 batches (padded pixels / all pixels), train and val,
  * per batch of 32 at 180: assembly, assembly + augmentation, and one training step of the
    spp model (forward, backward, Adam), medians, with the ratio (assembly + augmentation) / step.
    Target: ratio <= 0.1.

    python benchmarks/data.py [DATA] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from sppnet.runtime import keep_freed_memory
from sppnet.augment import Augment
from sppnet.data import ImageStore, locate, scan, split
from sppnet.models import build_model
from sppnet.sizing import Fixed, Native, epoch_generator, padding_overhead

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "flower_photos.tgz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    keep_freed_memory()  # as sppnet train does, so the step is the one training really runs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    dataset = scan(locate(args.data))
    train, val = split(dataset, 0.2, 123)
    for policy in (Fixed(180), Native(180)):
        start = time.perf_counter()
        store, _, failures = ImageStore.from_dataset(dataset, policy.store_size)
        seconds = time.perf_counter() - start
        print(f"decode all {len(dataset)} images, {policy.describe():<10}: {seconds:6.2f} s "
              f"({store.nbytes / 1e6:.0f} MB, {len(failures)} unreadable)")
    native = Native(180)
    for name, subset, shuffle in [("train", train, True), ("val", val, False)]:
        store, _, _ = ImageStore.from_dataset(subset, native.store_size)
        overhead = padding_overhead(native.batches(store, 32, epoch=0, seed=123, shuffle=shuffle))
        print(f"native 180 padding overhead, {name}: {overhead:.1%}")

    policy = Fixed(180)
    store, _, _ = ImageStore.from_dataset(train, policy.store_size)
    augment = Augment()
    model = build_model("spp").to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = epoch_generator(123, 0)

    def assemble():
        return next(iter(policy.batches(store, 32, epoch=int(torch.randint(1000, (1,))), seed=123)))

    def assemble_augment():
        batch = assemble()
        return augment(batch.images, generator=generator), batch.labels

    def step(x, labels):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), labels).backward()
        optimizer.step()

    x, labels = assemble_augment()
    for _ in range(3):
        step(x, labels)
    times = {"assemble": [], "assemble+augment": [], "train step": []}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
        t0 = time.perf_counter()
        assemble()
        t1 = time.perf_counter()
        x, labels = assemble_augment()
        t2 = time.perf_counter()
        step(x, labels)
        t3 = time.perf_counter()
        times["assemble"].append(t1 - t0)
        times["assemble+augment"].append(t2 - t1)
        times["train step"].append(t3 - t2)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    for k, v in med.items():
        print(f"batch of 32 at 180, {k:<17}: {v:7.1f} ms (median of {args.repeats})")
    print(f"ratio (assemble + augment) / train step: {med['assemble+augment'] / med['train step']:.3f}")


if __name__ == "__main__":
    main()
