"""Training throughput with 1 and 2 processes under torchrun (gloo on CPU, nccl on CUDA).

Trains the study setup for 2 epochs on the first N training images of the flowers with
``--nproc_per_node`` 1 and 2, and prints the images/s of the second epoch (from metrics.json)
and the scaling ratio, measured in the same run. On a 2-core machine expect little gain: both
processes share the same two cores (each gets OMP_NUM_THREADS = cores / processes).

    python benchmarks/distributed.py [DATA] [--limit 1024] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "flower_photos.tgz"


def run(nproc: int, data: str, limit: int, device: str, folder: Path) -> float:
    out = folder / f"p{nproc}"
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sppnet", "train", data, "--out", str(out), "--epochs", "2", "--limit", str(limit), "--device", device]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())["train_images_per_second_last_epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--limit", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    one = run(1, args.data, args.limit, args.device, folder)
    two = run(2, args.data, args.limit, args.device, folder)
    print(f"{args.device}, {os.cpu_count()} cores, {args.limit} training images, epoch 2 of 2")
    print(f"1 process : {one:7.1f} images/s")
    print(f"2 processes: {two:7.1f} images/s  (scaling {two / one:.2f}x)")


if __name__ == "__main__":
    main()
