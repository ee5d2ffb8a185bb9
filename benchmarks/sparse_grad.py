"""The last conv's backward pass, dense oneDNN kernels against kernels.conv3x3_sparse_grad.

Runs one training step of the study network (batch 32 at 180x180) with the dense backward,
keeps the last conv's input, weights and output gradient (the gradient that the max-pooling
SPP head sends back), and times both backward passes on it in the same process, alternating,
with the fraction of the conv map's pixels that get a gradient. Random pixels and an untrained
network by default; --data takes the batch from the flower photos (folder or archive), --run a
trained run's last weights.

    python benchmarks/sparse_grad.py [--run RUN] [--data FLOWERS]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
import torch.nn.functional as F
from rejected import CL, dense_last_conv, median_ms  # the sibling script's helpers

from sppnet import data
from sppnet.runtime import keep_freed_memory
from sppnet.augment import Augment
from sppnet.kernels import _Conv3x3SparseGrad
from sppnet.models import build_model
from sppnet.runs import RunFolder
from sppnet.sizing import Fixed


def batch(source: str | None) -> torch.Tensor:
    """32 images (N, 3, 180, 180) uint8: random, or every 100th flower (all classes), warped."""
    if source is None:
        return torch.randint(0, 256, (32, 3, 180, 180), dtype=torch.uint8).contiguous(memory_format=CL)
    paths = data.scan(data.locate(source)).paths()[::100][:32]
    images = data.load_images(paths, Fixed(180).store_size).images
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder whose last weights to use (default: an untrained network)")
    parser.add_argument("--data", help="the flower photos, folder or archive (default: random pixels)")
    args = parser.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    model = RunFolder(args.run).load_model("last") if args.run else build_model("spp")
    model = model.to(memory_format=CL).train()
    dense_last_conv(model)  # the dense path, to capture what its conv sees
    kept = {}

    def keep_grad(pool, inputs):  # the conv output enters the pooling layer: keep its gradient
        inputs[0].register_hook(lambda g: kept.__setitem__("grad", g))

    def keep_input(block, inputs):
        kept["x"] = inputs[0].detach()

    last = model.features[-1]
    hooks = [last[1].register_forward_pre_hook(keep_grad), last.register_forward_pre_hook(keep_input)]
    x = Augment()(batch(args.data), None, torch.Generator().manual_seed(0))
    F.cross_entropy(model(x), torch.arange(32) % 5).backward()
    for hook in hooks:
        hook.remove()
    grad, x3, weight = kept["grad"], kept["x"], last[0].weight.detach()
    pixels = grad.ne(0).any(1).float().mean().item()

    class Ctx:  # what autograd hands the backward pass
        saved_tensors = (x3, weight)
        needs_input_grad = (True, True)

    passes = {
        "dense": lambda: torch.ops.aten.convolution_backward(
            grad, x3, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False]
        ),
        "sparse": lambda: _Conv3x3SparseGrad.backward(Ctx, grad),
    }
    times = {name: [] for name in passes}
    for _ in range(15):  # alternating, so both see the same machine
        for name, fn in passes.items():
            times[name].append(median_ms(fn, 1))
    d, s = (statistics.median(times[name]) for name in passes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; last conv {tuple(grad.shape)}, "
          f"{pixels:.1%} of its pixels get a gradient ({'run ' + args.run if args.run else 'untrained'}, "
          f"{'flowers' if args.data else 'random pixels'})")
    print(f"backward pass: dense {d:.1f} ms, sparse {s:.1f} ms, dense / sparse {d / s:.2f}")


if __name__ == "__main__":
    main()
