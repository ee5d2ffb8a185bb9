"""The GPU figures of the README in one go, sized for a short lease of a GPU machine.

    python benchmarks/gpu.py DATA --out DIR [--runs DIR] [--budget 480]

Runs, each under a time limit and in this order, until the budget (seconds) is spent:
  1. tests/test_cuda.py: the CUDA paths give the CPU's results, and the main job runs on CUDA;
  2. benchmarks/throughput.py --device cuda, in fp32, in bf16 and with native-180 batches;
  3. the study setup for 20 epochs on DATA in fp32 and with --precision bf16 (AMP), training
     seeds 123, 1 and 2 on the seed-123 split, so that the two precisions can be compared;
  4. the best preset (50 epochs) in fp32 and in bf16.
Writes DIR/gpu.log (all that the steps printed) and DIR/summary.json (each training run's
command, exit status, wall time, metrics.json and history). Run folders go under --runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the flower photos: folder or archive")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.log and summary.json")
    parser.add_argument("--runs", type=Path, default=Path("runs/gpu"), help="folder for the run folders")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all steps together")
    args = parser.parse_args()
    import torch  # after argument parsing, so that --help is quick

    sys.path.insert(0, str(ROOT / "src"))  # as the steps below get it through PYTHONPATH
    from sppnet.runs import RunFolder

    if not torch.cuda.is_available():
        parser.exit(2, "error: PyTorch sees no CUDA device here; this benchmark measures the GPU path\n")
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    log = (args.out / "gpu.log").open("a")
    summary: dict = {"runs": {}}

    def step(name: str, cmd: list[str], limit: float) -> int | str | None:
        left = deadline - time.monotonic()
        if left < 10:
            log.write(f"\n== {name}: skipped, budget spent\n")
            return None
        log.write(f"\n== {name}: {' '.join(cmd)}\n")
        log.flush()
        t0 = time.monotonic()
        try:
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=min(limit, left)).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        log.write(f"== {name}: exit {code} after {time.monotonic() - t0:.1f}s\n")
        log.flush()
        return code

    py = sys.executable
    step("environment", [py, "-c", "import torch; print(torch.__version__, torch.version.cuda, "
                                   "torch.cuda.get_device_name(), torch.backends.cudnn.version())"], 60)
    step("cuda tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"], 150)
    for extra in ([], ["--precision", "bf16"], ["--native"]):
        step(f"throughput {' '.join(extra)}", [py, "benchmarks/throughput.py", "--device", "cuda", *extra], 90)

    def train(name: str, extra: list[str], limit: float) -> None:
        run = RunFolder(args.runs / name)
        cmd = [py, "-m", "sppnet", "train", args.data, "--device", "cuda", "--out", str(run.path), *extra]
        t0 = time.monotonic()
        code = step(f"train {name}", cmd, limit)
        entry = {"command": " ".join(cmd[2:]), "exit": code, "wall_seconds": round(time.monotonic() - t0, 1)}
        if run.file("metrics.json").is_file():
            entry["metrics"] = run.read_json("metrics.json")
        entry["history"] = run.read_history()  # [] when no epoch finished
        summary["runs"][name] = entry
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))

    for seed in (123, 1, 2):
        for precision in ("fp32", "bf16"):
            train(f"study-{precision}-seed{seed}", ["--precision", precision, "--seed", str(seed),
                                                    "--split-seed", "123"], 150)
    for precision in ("fp32", "bf16"):
        train(f"best-{precision}", ["--preset", "best", "--precision", precision], 240)
    log.close()


if __name__ == "__main__":
    main()
