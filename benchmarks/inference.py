"""Inference speed of PyTorch eager, TorchScript and onnxruntime, as ratios to eager.

Prints, for an untrained study-size ``spp`` model (speed does not depend on the weights):
single-image latency at 240x320 and throughput at batch 32 at 180x180, medians, measured in one
run with the three backends interleaved.

    python benchmarks/inference.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sppnet.runtime import keep_freed_memory
from sppnet.export import export_onnx, export_torchscript
from sppnet.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    keep_freed_memory()
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model("spp").eval().to(memory_format=torch.channels_last)
    folder = Path(tempfile.mkdtemp())
    export_onnx(model, folder / "spp.onnx", input_size=180)
    export_torchscript(model, folder / "spp.pt", input_size=180)
    options = ort.SessionOptions()
    # Without this, onnxruntime's idle threads spin after each run and slow whatever runs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(folder / "spp.onnx"), options, providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(folder / "spp.pt"))

    def eager(x):
        with torch.inference_mode():
            return model(x)

    def torchscript(x):
        with torch.inference_mode():
            return scripted(x)

    def onnxruntime(x):
        return session.run(["logits"], {"image": x.contiguous().numpy()})

    backends = {"eager": eager, "torchscript": torchscript, "onnxruntime": onnxruntime}
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for label, shape, per in [("single image 240x320", (1, 3, 240, 320), "ms"), ("batch 32 at 180x180", (32, 3, 180, 180), "img/s")]:
        x = (torch.rand(*shape) * 255).contiguous(memory_format=torch.channels_last)
        times = {name: [] for name in backends}
        for fn in backends.values():
            fn(x), fn(x)  # warm-up
        for _ in range(args.repeats):
            for name, fn in backends.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) for name, v in times.items()}
        print(label)
        for name, t in med.items():
            value = t * 1e3 if per == "ms" else shape[0] / t
            print(f"  {name:<12} {value:9.1f} {per:<6} time ratio to eager {t / med['eager']:.2f}")


if __name__ == "__main__":
    main()
