"""Training and inference speed of torchvision/timm backbones with an SPP head, against `best`.

Measures, in one run, with synthetic uint8 images at the flowers' typical shape (shorter side S,
aspect 4:3; speed does not depend on pixel values), batch 32, in the precision ``auto`` picks:
  * ``best``'s network (the baseline: 32-64-128-256, batch norm after the pooling, SPP 1,2,4);
  * ``torchvision:resnet18`` and ``timm:mobilenetv3_small_100`` from scratch;
  * ``torchvision:resnet18`` fine-tuned from a local weights file (written here, seeded), with
    ``--backbone-lr 0.1`` and with ``--freeze-backbone``;
training images/s (forward, backward and the optimiser step, AdamW as the presets use) and
inference images/s, medians over ``--steps`` steps, each as a ratio to the baseline, beside the
CPU model and the fp32 and bf16 matmul peaks measured in the same run.

    python benchmarks/backbones.py [--size 128] [--steps 12] [--threads 2]

Needs the sppnet[backbones] extra (torchvision, timm).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sppnet.config import TrainConfig
from sppnet.models import load_pretrained
from sppnet.runtime import autocast_dtype
from sppnet.train import make_optimizer
from throughput import matmul_peak
from time_to_accuracy import cpu_name


def timed(fn, steps: int) -> float:
    fn()  # warm-up (oneDNN primitives, allocator)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(config: TrainConfig, images: torch.Tensor, labels: torch.Tensor, steps: int, amp, weights: Path | None):
    model = config.model_spec(5).build().to(memory_format=torch.channels_last)
    if weights is not None:
        load_pretrained(model.features, weights)
    optimizer = make_optimizer(model, config)
    x = images.float().contiguous(memory_format=torch.channels_last)

    def train_step():
        model.train()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def infer():
        model.eval()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            model(x)

    n = len(images)
    return n / timed(train_step, steps), n / timed(infer, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="shorter side of the images (default 128)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timm", default="mobilenetv3_small_100", help="the timm network (default mobilenetv3_small_100)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    amp = autocast_dtype("auto", torch.device("cpu"))
    fp32_peak = matmul_peak(torch.float32, torch.device("cpu"))
    bf16_peak = matmul_peak(torch.bfloat16, torch.device("cpu"))
    height, width = args.size, args.size * 4 // 3
    images = torch.randint(0, 256, (args.batch_size, 3, height, width), dtype=torch.uint8)
    labels = torch.randint(0, 5, (args.batch_size,))
    best = TrainConfig.from_preset("best")
    common = dict(weight_decay=0.05, label_smoothing=0.1, precision="auto", lr=2e-3)
    with tempfile.TemporaryDirectory() as tmp:
        import torchvision

        weights = Path(tmp) / "resnet18.safetensors"
        save_file({k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}, weights)
        rows = [
            ("best (baseline)", best, None),
            ("torchvision:resnet18, scratch", TrainConfig(model="torchvision:resnet18", **common), None),
            (f"timm:{args.timm}, scratch", TrainConfig(model=f"timm:{args.timm}", **common), None),
            ("resnet18 from file, --backbone-lr 0.1", TrainConfig(model="torchvision:resnet18", backbone_lr=0.1,
                                                                   **common), weights),
            ("resnet18 from file, --freeze-backbone", TrainConfig(model="torchvision:resnet18", freeze_backbone=True,
                                                                   **common), weights),
        ]
        results = [(name, *measure(config, images, labels, args.steps, amp, w)) for name, config, w in rows]
    print(f"CPU: {cpu_name()}, {args.threads} threads; matmul peak fp32 {fp32_peak:.0f} GFLOP/s, "
          f"bf16 {bf16_peak:.0f} GFLOP/s; autocast: {amp}; torch {torch.__version__}")
    print(f"images {height}x{width}, batch {args.batch_size}, medians of {args.steps} steps")
    base_train, base_infer = results[0][1], results[0][2]
    print(f"{'network':<42} {'train img/s':>11} {'ratio':>6} {'infer img/s':>11} {'ratio':>6}")
    for name, train_rate, infer_rate in results:
        print(f"{name:<42} {train_rate:>11.1f} {train_rate / base_train:>6.2f} {infer_rate:>11.1f} "
              f"{infer_rate / base_infer:>6.2f}")


if __name__ == "__main__":
    main()
