"""Each conv layer of the study network timed alone: forward, input gradient, weight gradient,
and the weight gradient with the bias gradient computed inside the same oneDNN call.

Channels-last, batch 32 at 180x180, this process's thread count; medians, with GFLOP/s. Shows
where a CPU training step's backward time goes (the weight gradients) and what the bias
gradient costs inside the convolution kernel (why the model adds the bias after pooling).

    python benchmarks/conv_layers.py [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sppnet._perf import keep_freed_memory

LAYERS = [(3, 16, 180), (16, 32, 90), (32, 64, 45)]  # (in, out, side) of the three conv blocks


def median_ms(fn, repeats: int = 11) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms (GFLOP/s), batch 32, channels-last")
    for cin, cout, side in LAYERS:
        x = torch.randn(32, cin, side, side).contiguous(memory_format=torch.channels_last)
        w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=torch.channels_last)
        g = torch.randn(32, cout, side, side).contiguous(memory_format=torch.channels_last)
        gflop = 2 * 32 * cin * cout * 9 * side * side / 1e9

        def backward(mask):
            return lambda: torch.ops.aten.convolution_backward(
                g, x, w, [cout], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
            )

        times = {
            "forward": median_ms(lambda: F.conv2d(x, w, None, 1, 1)),
            "input gradient": median_ms(backward([True, False, False])),
            "weight gradient": median_ms(backward([False, True, False])),
        }
        with_bias = median_ms(backward([False, True, True]))
        row = ", ".join(f"{name} {t:.1f} ({gflop / t * 1000:.0f})" for name, t in times.items())
        print(f"conv {cin}->{cout} at {side}: {row}; weight gradient with the bias gradient in the same call "
              f"{with_bias:.1f} (+{with_bias - times['weight gradient']:.1f})")


if __name__ == "__main__":
    main()
