"""Forward+backward time of sppnet's SPP layer against naive adaptive_max_pool2d concatenation.

Prints, for each feature-map shape, the median time of the naive reference, of sppnet's layer on
a uniform batch (what training at one size runs) and of sppnet's explicit-bin path (what padded
mixed-size batches and ONNX export run), with ratios to the naive reference measured in the same
run. Target for the uniform path: ratio <= 1.5.

    python benchmarks/spp_layer.py [--repeats 50] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sppnet import spatial_pyramid_pool

LEVELS = (1, 2, 4)


def naive(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in LEVELS], 1)


def ours(x: torch.Tensor) -> torch.Tensor:
    return spatial_pyramid_pool(x, LEVELS, "max")


def ours_explicit_bins(x: torch.Tensor) -> torch.Tensor:
    sizes = torch.tensor([list(x.shape[-2:])] * x.shape[0])
    return spatial_pyramid_pool(x, LEVELS, "max", sizes)


def time_fwd_bwd(fn, x: torch.Tensor, repeats: int) -> list[float]:
    for _ in range(5):  # warm-up
        fn(x).sum().backward()
    times = []
    for _ in range(repeats):
        x.grad = None
        start = time.perf_counter()
        fn(x).sum().backward()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'shape':<18} {'naive ms':>9} {'ours ms':>9} {'ours/naive':>11} {'bins ms':>9} {'bins/naive':>11}")
    for shape in [(32, 64, 22, 22), (32, 256, 13, 13)]:
        x = torch.randn(*shape, requires_grad=True)
        # Interleave the three so that machine noise hits all of them alike.
        results = {"naive": [], "ours": [], "bins": []}
        for _ in range(5):
            for name, fn in [("naive", naive), ("ours", ours), ("bins", ours_explicit_bins)]:
                results[name] += time_fwd_bwd(fn, x, max(1, args.repeats // 5))
        med = {k: statistics.median(v) * 1e3 for k, v in results.items()}
        print(
            f"{'x'.join(map(str, shape)):<18} {med['naive']:>9.3f} {med['ours']:>9.3f} "
            f"{med['ours'] / med['naive']:>11.2f} {med['bins']:>9.3f} {med['bins'] / med['naive']:>11.2f}"
        )


if __name__ == "__main__":
    main()
