"""Classifying a folder of photos: one image at a time against Predictor.predict_many.

Both classify the same files with an untrained study-size ``spp`` model (speed does not depend
on the weights) in each image's native shape (shorter side 180), decoding included, alternating
in one process; prints images/s (medians over the repeats) and the ratio. predict_many decodes
in parallel threads and runs images of similar shape in zero-padded batches.

    python benchmarks/predict_folder.py [--data FLOWERS] [--images 256] [--repeats 3]

--data takes the flower photos (folder or archive; every k-th file); without it, JPEGs of the
flowers' most common shapes (320x240, 240x320, 500x333, 333x500) with random pixels.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sppnet import data
from sppnet.runtime import keep_freed_memory
from sppnet.models import build_model
from sppnet.predict import Predictor


def synthetic(count: int) -> list[Path]:
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    shapes = [(240, 320), (320, 240), (333, 500), (500, 333)]
    paths = []
    for k in range(count):
        h, w = shapes[k % len(shapes)]
        paths.append(folder / f"{k}.jpg")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1], quality=90)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the flower photos, folder or archive (default: synthetic JPEGs)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()  # as the sppnet command does
    if args.data:
        files = data.scan(data.locate(args.data)).paths()
        paths = files[:: max(1, len(files) // args.images)][: args.images]
    else:
        paths = synthetic(args.images)
    torch.manual_seed(0)
    predictor = Predictor(build_model("spp").to(memory_format=torch.channels_last), list("abcde"))
    list(predictor.predict_many(paths[:32])), [predictor.predict(p) for p in paths[:4]]  # warm-up
    alone, many = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for path in paths:
            predictor.predict(path)
        t1 = time.perf_counter()
        list(predictor.predict_many(paths))
        t2 = time.perf_counter()
        alone.append(t1 - t0)
        many.append(t2 - t1)
    a, m = len(paths) / statistics.median(alone), len(paths) / statistics.median(many)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(paths)} images "
          f"({'flowers' if args.data else 'synthetic JPEGs'}), medians of {args.repeats}")
    print(f"one at a time: {a:.0f} images/s; predict_many (batches of 32): {m:.0f} images/s; {m / a:.2f}x")


if __name__ == "__main__":
    main()
