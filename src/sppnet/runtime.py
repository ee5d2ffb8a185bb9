"""Where and how sppnet runs: device, precision, and the process settings behind CPU speed.

Importing sppnet changes nothing in the process. Entry points (``train``, ``evaluate_run``,
``Predictor.predict_many``, ``sppnet serve`` and the command line) call :func:`configure`, which
applies the process settings once:

    * glibc's malloc keeps freed memory for reuse (:func:`keep_freed_memory`);
    * oneDNN's cache of compiled primitives is bounded (:func:`bound_primitive_cache`).

``SPPNET_PROCESS_SETTINGS=0`` in the environment leaves the process alone (the CPU kernels of
:mod:`sppnet.kernels` have their own switch, ``SPPNET_FAST_PATHS``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "DEVICES", "PRECISIONS", "resolve_device", "autocast_dtype", "has_fast_bf16", "is_tracing", "configure", "keep_freed_memory",
    "bound_primitive_cache", "PRIMITIVE_CACHE_CAPACITY", "peak_rss_mb",
]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "auto")

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_malloc_tuned = False

#: Compiled oneDNN primitives kept for reuse (oneDNN's default: 1,024).
PRIMITIVE_CACHE_CAPACITY = 16


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` is CUDA when available, else the CPU.

    Raises:
        ConfigError: an unknown device name, or ``cuda`` without a CUDA device.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def has_fast_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA device that supports it, or a CPU
    with AMX or AVX-512 BF16 units (elsewhere bfloat16 is emulated, slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(precision: str, device: torch.device | str = "cpu") -> torch.dtype | None:
    """The autocast dtype of a precision name: None for ``fp32``, bfloat16 for ``bf16``, and for
    ``auto`` bfloat16 where ``device`` has bf16 units (:func:`has_fast_bf16`), else None."""
    if precision == "auto":
        return torch.bfloat16 if has_fast_bf16(device) else None
    return torch.bfloat16 if precision == "bf16" else None


def is_tracing() -> bool:
    """True while a graph is scripted, traced, exported or compiled (values are symbolic)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.5
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or exporting()
    )


def configure() -> None:
    """Applies sppnet's process settings once (see the module docstring); later calls do nothing
    new. ``SPPNET_PROCESS_SETTINGS=0`` turns them off."""
    if os.environ.get("SPPNET_PROCESS_SETTINGS", "1").strip().lower() in ("0", "false", "off", "no"):
        return
    keep_freed_memory()
    bound_primitive_cache()


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse instead of returning it to the system.

    By default glibc serves every large block (activations of tens of MB) with a fresh ``mmap``
    and unmaps it when freed, so each training step pays page faults for every large tensor it
    allocates. With mmap off and trimming off, freed blocks are reused, as PyTorch's CUDA caching
    allocator does on GPUs. Peak memory is unchanged; the process simply keeps its peak. Other C
    libraries are left alone. (Measured effect: docs/performance.md.)

    Returns:
        True if the setting is in place (Linux with glibc), else False.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    _malloc_tuned = ok
    log.debug("glibc malloc tuned to keep freed memory: %s", ok)
    return ok


def bound_primitive_cache(capacity: int = PRIMITIVE_CACHE_CAPACITY) -> bool:
    """Caps oneDNN's cache of compiled primitives (one per layer, pass and input shape).

    Padded batches of many shapes (native sizing, uploads of every size) otherwise grow the
    process by hundreds of MB at no speed gain (docs/performance.md). oneDNN reads the setting
    (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) when it first builds a primitive, so this must run
    before the first convolution; a value already in the environment wins.

    Returns:
        True if this call set it.
    """
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ or "DNNL_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return False
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(int(capacity))
    return True


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if platform.system() == "Darwin" else 1024), 1)
