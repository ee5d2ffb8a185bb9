"""Every name that moved, in one table, with the release that removes the old one.

A module whose names moved answers its ``__getattr__`` with :func:`moved`, handing it the modules
it already imports: an old name always points *down* the floors of the design (to a module the
old one sits on), so answering it never imports anything above the asking module.

==========================================  ==========================================  ========
old name                                    new name                                    removed
==========================================  ==========================================  ========
``sppnet.train.PRESETS``                    ``sppnet.config.PRESETS``                   0.3.0
``sppnet.train.SCHEDULES``                  ``sppnet.config.SCHEDULES``                 0.3.0
``sppnet.train.PRECISIONS``                 ``sppnet.config.PRECISIONS``                0.3.0
``sppnet.train.resolve_device``             ``sppnet.runtime.resolve_device``           0.3.0
``sppnet.train.autocast_dtype``             ``sppnet.runtime.autocast_dtype``           0.3.0
``sppnet.train.peak_rss_mb``                ``sppnet.runtime.peak_rss_mb``              0.3.0
``sppnet.train.check_store_dir``            ``sppnet.data.check_store_dir``             0.3.0
``sppnet._perf.keep_freed_memory`` (etc.)   ``sppnet.runtime.keep_freed_memory``        0.3.0
``sppnet.models.ConvBlock``                 ``sppnet.kernels.FastConvBlock``            0.3.0
``sppnet.models.max_pool_2x2`` (etc.)       ``sppnet.kernels.max_pool_2x2``             0.3.0
``sppnet.evaluate.predict_batches`` (etc.)  ``sppnet.inference.predict_batches``        0.3.0
``sppnet.report.compare`` (etc.)            ``sppnet.compare.compare``                  0.2.0
``Predictor.explain(image)``                ``sppnet.explain.explain(predictor, image)`` 0.2.0
==========================================  ==========================================  ========

The last two are removed already: ``report`` (floor 4) and ``predict`` (floor 7) sit below the
modules their names moved to, so keeping them meant importing up the floors. Asking for them
raises an ``AttributeError`` that names the new place.
"""

from __future__ import annotations

import warnings
from types import ModuleType

#: (old module, old name) -> (new module, new name, the release that removes the old name).
#: A new module of None: removed already.
MOVED: dict[tuple[str, str], tuple[str, str, str | None]] = {
    **{("sppnet.train", name): ("sppnet.config", name, "0.3.0")
       for name in ("PRESETS", "SCHEDULES", "PRECISIONS")},
    **{("sppnet.train", name): ("sppnet.runtime", name, "0.3.0")
       for name in ("resolve_device", "autocast_dtype", "peak_rss_mb")},
    ("sppnet.train", "check_store_dir"): ("sppnet.data", "check_store_dir", "0.3.0"),
    **{("sppnet._perf", name): ("sppnet.runtime", name, "0.3.0")
       for name in ("keep_freed_memory", "bound_primitive_cache", "PRIMITIVE_CACHE_CAPACITY")},
    ("sppnet.models", "ConvBlock"): ("sppnet.kernels", "FastConvBlock", "0.3.0"),
    ("sppnet.models", "max_pool_2x2"): ("sppnet.kernels", "max_pool_2x2", "0.3.0"),
    ("sppnet.models", "conv3x3_sparse_grad"): ("sppnet.kernels", "conv3x3_sparse_grad", "0.3.0"),
    **{("sppnet.evaluate", name): ("sppnet.inference", name, "0.3.0")
       for name in ("to_device_batch", "mirror", "class_probabilities")},
    **{("sppnet.report", name): ("sppnet.compare", name, None)
       for name in ("compare", "write_comparison", "STUDY_VARIANTS")},
}


def moved(module: str, name: str, targets: dict[str, ModuleType]):
    """The value of a moved name, with a DeprecationWarning that says where it lives now.

    Args:
        module: the asking module's ``__name__``.
        name: the attribute asked for.
        targets: the modules the asking module imports already, by full name.

    Raises:
        AttributeError: ``name`` never lived in ``module``, or was removed (the message names its
            new place).
    """
    entry = MOVED.get((module, name))
    if entry is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new_module, new_name, removal = entry
    if removal is None or new_module not in targets:
        raise AttributeError(f"{module}.{name} was removed: use {new_module}.{new_name}")
    warnings.warn(f"{module}.{name} moved to {new_module}.{new_name} (the old name goes in sppnet {removal})",
                  DeprecationWarning, stacklevel=3)
    return getattr(targets[new_module], new_name)
