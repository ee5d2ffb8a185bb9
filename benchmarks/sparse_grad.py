"""The last conv's backward pass, dense oneDNN kernels against models.conv3x3_sparse_grad.

Runs one training step of the study network (batch 32 at 180x180) with the dense backward,
keeps the last conv's input, weights and output gradient (the gradient that the max-pooling
SPP head sends back), and times both backward passes on it in the same process, alternating,
with the fraction of the conv map's pixels that get a gradient. Random pixels and an untrained
network by default; with --run and --data, a trained run's weights on a flower batch.

    python benchmarks/sparse_grad.py [--run RUN --data FLOWER_DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sppnet._perf import keep_freed_memory
from sppnet.augment import Augment
from sppnet.models import _Conv3x3SparseGrad, build_model
from sppnet.runs import RunFolder

CL = torch.channels_last


def batch(data: str | None) -> torch.Tensor:
    if data is None:
        return torch.randint(0, 256, (32, 3, 180, 180), dtype=torch.uint8).contiguous(memory_format=CL)
    files = sorted(Path(data).rglob("*.jpg"))[::100][:32]  # spread over the classes
    images = [np.asarray(Image.open(f).convert("RGB").resize((180, 180))) for f in files]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder whose last weights to use (default: an untrained network)")
    parser.add_argument("--data", help="a folder of flower JPEGs to take the batch from (default: random pixels)")
    args = parser.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    model = RunFolder(args.run).load_model("last") if args.run else build_model("spp")
    model = model.to(memory_format=CL).train()
    model.features[-1].sparse_grad = False  # the dense path, to capture what its conv sees
    kept = {}

    def keep(pool, inputs):  # the conv output enters the pooling layer: keep its gradient
        inputs[0].register_hook(lambda g: kept.__setitem__("grad", g))

    def keep_input(block, inputs):
        kept["x"] = inputs[0].detach()

    hooks = [model.features[-1][1].register_forward_pre_hook(keep),
             model.features[-1].register_forward_pre_hook(keep_input)]
    x = Augment()(batch(args.data), None, torch.Generator().manual_seed(0))
    F.cross_entropy(model(x), torch.arange(32) % 5).backward()
    for hook in hooks:
        hook.remove()
    grad, x3, weight = kept["grad"], kept["x"], model.features[-1][0].weight.detach()
    pixels = grad.ne(0).any(1).float().mean().item()

    class Ctx:  # what autograd hands the backward pass
        saved_tensors = (x3, weight)
        needs_input_grad = (True, True)

    def dense():
        torch.ops.aten.convolution_backward(grad, x3, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                            [True, True, False])

    def sparse():
        _Conv3x3SparseGrad.backward(Ctx, grad)

    times = {"dense": [], "sparse": []}
    dense(), sparse()
    for _ in range(15):
        for name, fn in (("dense", dense), ("sparse", sparse)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    d, s = (1000 * statistics.median(times[k]) for k in ("dense", "sparse"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; last conv {tuple(grad.shape)}, "
          f"{pixels:.1%} of its pixels get a gradient ({'run ' + args.run if args.run else 'untrained'}, "
          f"{'flowers' if args.data else 'random pixels'})")
    print(f"backward pass: dense {d:.1f} ms, sparse {s:.1f} ms, dense / sparse {d / s:.2f}")


if __name__ == "__main__":
    main()
