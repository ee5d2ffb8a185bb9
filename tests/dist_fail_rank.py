"""Runs `sppnet train` under torchrun with rank 1 failing in its second epoch (for tests)."""

import importlib
import os
import sys

train_module = importlib.import_module("sppnet.train")
if os.environ.get("RANK") == "1":
    real = train_module.train_one_epoch
    calls = []

    def fail_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("rank 1 failed on purpose")
        return real(*args, **kwargs)

    train_module.train_one_epoch = fail_in_second_epoch

from sppnet.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
