"""Distributed training under torchrun (gloo on the CPU)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sppnet.data import ImageStore
from sppnet.runs import RunFolder
from sppnet.sizing import Fixed, Native

from conftest import make_dataset

HERE = Path(__file__).resolve().parent
COMMON = ["--epochs", "2", "--size", "32", "--batch-size", "8", "--no-augment", "--dropout", "0"]


def torchrun(args, timeout=300, script=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPPNET_DIST_TIMEOUT": "60"}
    target = [str(script)] if script else ["-m", "sppnet"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_processes_match_one(tmp_path):
    data = make_dataset(tmp_path / "ds", {"a": 9, "b": 8, "c": 7}, size=(40, 30), vary=True)
    # The ranks map images decoded into files (--store-dir); the single process keeps them in memory.
    done = torchrun(["train", str(data), "--out", str(tmp_path / "ddp"), *COMMON, "--store-dir", str(tmp_path / "store")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((tmp_path / "store").iterdir()) == []
    assert done.stdout.count("Epoch 2/2") == 1  # only rank 0 prints
    single = subprocess.run([sys.executable, "-m", "sppnet", "train", str(data), "--out", str(tmp_path / "one"), *COMMON],
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    ddp, one = RunFolder(tmp_path / "ddp"), RunFolder(tmp_path / "one")
    a, b = ddp.load_weights("last"), one.load_weights("last")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4
    for x, y in zip(ddp.read_history(), one.read_history()):
        assert abs(x["loss"] - y["loss"]) < 1e-4 and x["val_accuracy"] == y["val_accuracy"]
    assert not list(Path("/dev/shm").glob("sppnet-*")) if Path("/dev/shm").is_dir() else True


def test_one_failing_rank_ends_the_job(tmp_path):
    data = make_dataset(tmp_path / "ds", {"a": 6, "b": 6}, size=(32, 32))
    start = time.time()
    done = torchrun(["train", str(data), "--out", str(tmp_path / "run"), *COMMON, "--epochs", "3"],
                    script=HERE / "dist_fail_rank.py", timeout=240)
    assert done.returncode != 0
    assert "rank 1 failed on purpose" in done.stderr + done.stdout
    assert time.time() - start < 200
    # The first epoch was finished and saved; the run resumes under torchrun.
    assert len(RunFolder(tmp_path / "run").read_history()) == 1
    resumed = torchrun(["train", str(data), "--out", str(tmp_path / "run"), "--resume", "--backend", "gloo"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["epoch"] for r in RunFolder(tmp_path / "run").read_history()] == [1, 2, 3]


def store_of(shapes):
    rng = np.random.default_rng(0)
    return ImageStore([rng.integers(1, 255, (h, w, 3), dtype=np.uint8) for h, w in shapes], list(range(len(shapes))))


def test_batches_are_split_across_ranks():
    store = store_of([(16, 16)] * 21)
    policy = Fixed(16)
    single = list(policy.batches(store, 8, epoch=3, seed=5))
    shares = [list(policy.batches(store, 8, epoch=3, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == policy.num_batches(store, 8, world_size=2) == 3
    for k, whole in enumerate(single):
        together = torch.cat([shares[0][k].indices, shares[1][k].indices])
        assert sorted(together.tolist()) == sorted(whole.indices.tolist())
        assert shares[0][k].global_size == len(whole)
    # 21 images in batches of 8: the last global batch (5) is split 3 / 2.
    assert [len(b) for b in shares[0]] == [4, 4, 3] and [len(b) for b in shares[1]] == [4, 4, 2]
    three = [list(policy.batches(store, 8, epoch=0, seed=5, rank=r, world_size=3)) for r in range(3)]
    seen = torch.cat([b.indices for share in three for b in share])
    assert sorted(seen.tolist()) == list(range(21))


def test_native_ranks_keep_shape_groups():
    shapes = [(16, 24), (24, 16), (16, 16)] * 8
    store = store_of(shapes)
    for rank in range(2):
        for batch in Native(16).batches(store, 6, epoch=1, seed=0, rank=rank, world_size=2):
            assert batch.images.shape[-2:] == tuple(batch.sizes.max(0).values.tolist())


def test_shared_store_round_trip(tmp_path):
    for shapes in ([(5, 7)] * 3, [(5, 7), (4, 9), (6, 6)]):
        store = store_of(shapes)
        store.share(tmp_path / "s")
        mapped = ImageStore.attach(tmp_path / "s")
        assert torch.equal(mapped.labels, store.labels) and torch.equal(mapped.sizes, store.sizes)
        idx = torch.tensor([2, 0])
        for a, b in zip(mapped.gather(idx), store.gather(idx)):
            assert torch.equal(a, b)
