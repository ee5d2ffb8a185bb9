"""Moved to :mod:`sppnet.runtime` (``configure()``); these names work for one release."""

import importlib
import warnings


def __getattr__(name: str):
    if name in ("keep_freed_memory", "bound_primitive_cache", "PRIMITIVE_CACHE_CAPACITY"):
        warnings.warn(f"sppnet._perf.{name} moved to sppnet.runtime.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("sppnet.runtime"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
