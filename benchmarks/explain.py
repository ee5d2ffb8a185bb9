"""Time to explain one image against the time to predict it, in the same run.

An untrained study-size ``spp`` model (or ``--run RUN``) classifies and explains the same
240x320 photo-like image, alternating, ``--repeats`` times; prints the medians and the ratio
explain / predict (target: about 3). Explaining decodes the image twice (once for the model,
once at its original size for drawing) and runs one backward pass through the head.

    python benchmarks/explain.py [--run runs/spp] [--repeats 30]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image

from sppnet.models import build_model
from sppnet.predict import Predictor


def photo_bytes(width: int = 320, height: int = 240) -> bytes:
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(smooth).resize((width, height), Image.Resampling.BILINEAR).save(buffer, format="JPEG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run folder (default: an untrained study-size spp model)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if args.run:
        predictor = Predictor.from_run(args.run, flip=False)
    else:
        torch.manual_seed(0)
        predictor = Predictor(build_model("spp").eval(), ["daisy", "dandelion", "roses", "sunflowers", "tulips"], 180)
    image = photo_bytes()
    for _ in range(3):
        predictor.predict(image)
        predictor.explain(image)
    predict, explain = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predictor.predict(image)
        predict.append(time.perf_counter() - start)
        start = time.perf_counter()
        predictor.explain(image)
        explain.append(time.perf_counter() - start)
    p, e = statistics.median(predict), statistics.median(explain)
    print(f"240x320 JPEG, {torch.get_num_threads()} threads: predict {1000 * p:.1f} ms, explain {1000 * e:.1f} ms "
          f"(medians of {args.repeats}); explain / predict = {e / p:.2f}")


if __name__ == "__main__":
    main()
