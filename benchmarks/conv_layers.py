"""Each conv layer of the study network timed alone: forward, input gradient, weight gradient,
and the weight gradient with the bias gradient computed inside the same oneDNN call.

Channels-last, batch 32 at 180x180, this process's thread count; medians, with GFLOP/s. Shows
where a CPU training step's backward time goes (the weight gradients) and what the bias
gradient costs inside the convolution kernel (why the model adds the bias after pooling).

Last column: the weight gradient of tensors that are already contiguous (NCHW), for which
oneDNN reorders them itself into its blocked layout and runs its blocked kernel (reorders
included; getting the training step's channels-last tensors there would cost PyTorch's own
layout copies on top, see rejected.py).

    python benchmarks/conv_layers.py [--threads N]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from rejected import CL, LAYERS, conv_backward, median_ms  # the sibling script's timing helpers

from sppnet.runtime import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms (GFLOP/s), batch 32, channels-last")
    for cin, cout, side in LAYERS:
        x = torch.randn(32, cin, side, side).contiguous(memory_format=CL)
        w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=CL)
        g = torch.randn(32, cout, side, side).contiguous(memory_format=CL)
        gflop = 2 * 32 * cin * cout * 9 * side * side / 1e9
        times = {
            "forward": median_ms(lambda: F.conv2d(x, w, None, 1, 1), 11),
            "input gradient": median_ms(lambda: conv_backward(g, x, w, [True, False, False]), 11),
            "weight gradient": median_ms(lambda: conv_backward(g, x, w, [False, True, False]), 11),
        }
        with_bias = median_ms(lambda: conv_backward(g, x, w, [False, True, True]), 11)
        xc, wc, gc = x.contiguous(), w.contiguous(), g.contiguous()
        blocked = median_ms(lambda: conv_backward(gc, xc, wc, [False, True, False]), 11)
        row = ", ".join(f"{name} {t:.1f} ({gflop / t * 1000:.0f})" for name, t in times.items())
        print(f"conv {cin}->{cout} at {side}: {row}; weight gradient with the bias gradient in the same call "
              f"{with_bias:.1f} ({with_bias - times['weight gradient']:+.1f}); weight gradient from NCHW "
              f"tensors {blocked:.1f} ({gflop / blocked * 1000:.0f})")


if __name__ == "__main__":
    main()
