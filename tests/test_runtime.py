"""runtime: device choice and the process settings applied only when an entry point asks."""

import os
import subprocess
import sys

import pytest
import torch

from sppnet import runtime
from sppnet.errors import ConfigError


def test_resolve_device():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="--device must be auto, cpu or cuda, got 'tpu'"):
        runtime.resolve_device("tpu")


def test_importing_sppnet_changes_no_process_setting_and_configure_does():
    code = (
        "import os, sppnet, sppnet.cli, sppnet.train, sppnet.report\n"
        "assert 'ONEDNN_PRIMITIVE_CACHE_CAPACITY' not in os.environ\n"
        "from sppnet import runtime\n"
        "assert not runtime._malloc_tuned\n"
        "import matplotlib\n"
        "before = matplotlib.get_backend()\n"
        "from sppnet.report import plot_curves\n"
        "plot_curves([{'epoch': 1, 'loss': 1, 'accuracy': .5, 'val_loss': 1, 'val_accuracy': .5}], 'c.png')\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
        "runtime.configure()\n"
        "assert os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'] == str(runtime.PRIMITIVE_CACHE_CAPACITY)\n"
    )
    env = {k: v for k, v in os.environ.items() if "PRIMITIVE_CACHE" not in k and k != "SPPNET_PROCESS_SETTINGS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.environ.get("TMPDIR", "/tmp"))


def test_configure_can_be_turned_off(monkeypatch):
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPPNET_PROCESS_SETTINGS", "0")
    runtime.configure()
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ


def test_auto_precision_is_bf16_only_where_the_device_has_bf16_units(monkeypatch):
    import torch

    from sppnet import runtime

    assert runtime.autocast_dtype("fp32") is None and runtime.autocast_dtype("bf16") is torch.bfloat16
    monkeypatch.setattr(runtime, "has_fast_bf16", lambda device="cpu": True)
    assert runtime.autocast_dtype("auto") is torch.bfloat16
    monkeypatch.setattr(runtime, "has_fast_bf16", lambda device="cpu": False)
    assert runtime.autocast_dtype("auto") is None


def test_fast_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    from sppnet import runtime

    real_open = builtins.open
    for flags, expected in (("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda path, *a, _c=cpuinfo, **k: real_open(_c if path == "/proc/cpuinfo" else path, *a, **k))
        assert runtime.has_fast_bf16("cpu") is expected
    monkeypatch.setattr(builtins, "open", real_open)
