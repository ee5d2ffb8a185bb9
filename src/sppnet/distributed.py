"""Distributed training support: ``torchrun`` + ``torch.distributed`` (DistributedDataParallel).

``sppnet train`` runs unchanged under ``torchrun``: when the launcher's environment
(``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ...) is present, :func:`init` joins the process
group (gloo on CPU, nccl on CUDA, or ``SPPNET_DIST_BACKEND``), with a timeout
(``SPPNET_DIST_TIMEOUT`` seconds, default 900) so that a lost rank ends the job instead of
hanging it. torchrun itself stops every worker when one fails.

Memory: the decoded images are needed by every rank (each epoch reshuffles the whole training
set and splits every global batch across the ranks, which is what makes a distributed run take
the same steps as a single-process one). Rather than decode them once per process, the first
process of each machine decodes them into a file in shared memory (``/dev/shm``) that the other
processes of that machine map: one copy per machine, one decode per machine.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["DistContext", "init", "shutdown", "shared_store", "gather_predictions", "all_reduce_sum"]


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def init(device: torch.device, backend: str | None = None) -> tuple[DistContext, torch.device]:
    """Joins the process group if launched by torchrun; returns the context and this rank's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext(), device
    ctx = DistContext(
        rank=_env_int("RANK", 0),
        world_size=world_size,
        local_rank=_env_int("LOCAL_RANK", 0),
        local_world_size=_env_int("LOCAL_WORLD_SIZE", 1),
    )
    backend = backend or os.environ.get("SPPNET_DIST_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"distributed backend must be gloo or nccl, got {backend!r}")
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=_env_int("SPPNET_DIST_TIMEOUT", 900))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    log.info("rank %d of %d (local %d) on %s, backend %s", ctx.rank, ctx.world_size, ctx.local_rank, device, backend)
    return ctx, device


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _broadcast_token(ctx: DistContext) -> str:
    box = [secrets.token_hex(8) if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shared_store(ctx: DistContext, build: Callable[[], tuple], tag: str) -> tuple:
    """Builds ``(store, count, failures)`` once per machine and shares the store's pages.

    ``build`` runs on the first process of each machine only; the others map its result: the
    file a store decoded into a folder was mapped from, or a copy of an in-memory store in
    shared memory. Once every process has mapped it, the file's name is removed (its pages stay
    mapped), so nothing is left on disk.
    """
    if not ctx.enabled:
        store, count, failures = build()
        store.unlink()
        return store, count, failures
    token = _broadcast_token(ctx)
    folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    path = folder / f"sppnet-{token}-{tag}"
    meta_path = Path(f"{path}.extra.json")
    import json

    from .data import ImageStore

    try:
        if ctx.local_rank == 0:
            store, count, failures = build()
            if store.path is None:
                store.share(path)
            else:  # already in a file of its own: map that
                path = store.path
            meta_path.write_text(json.dumps({"count": count, "failures": failures, "path": str(path)}))
        dist.barrier()
        if ctx.local_rank != 0:
            extra = json.loads(meta_path.read_text())
            store = ImageStore.attach(Path(extra["path"]))
            count, failures = extra["count"], [tuple(f) for f in extra["failures"]]
        dist.barrier()  # everyone has mapped the file: its name can go, the pages stay
    finally:
        if ctx.local_rank == 0:
            for p in (path, Path(f"{path}.json"), meta_path):
                p.unlink(missing_ok=True)
    return store, count, failures


def all_reduce_sum(ctx: DistContext, *values: float) -> list[float]:
    """Sums numbers over all ranks (exact counts, not averages of averages)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def gather_predictions(ctx: DistContext, probs: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
    """Collects every rank's predictions, in dataset-index order, on every rank."""
    if not ctx.enabled:
        return probs, labels, indices
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, (probs, labels, indices))
    probs = torch.cat([p[0] for p in parts if len(p[1])])
    labels = torch.cat([p[1] for p in parts if len(p[1])])
    indices = torch.cat([p[2] for p in parts if len(p[1])])
    order = torch.argsort(indices)
    return probs[order], labels[order], indices[order]
