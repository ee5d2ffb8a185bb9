import subprocess
import sys

import pytest

import sppnet
from sppnet.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sppnet {sppnet.__version__}"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "usage: sppnet" in out and "models" in out


def test_models_prints_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "spp" in out and "196,389" in out and "3,989,285" in out


def test_unknown_command_fails_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_console_script_and_module_run():
    done = subprocess.run([sys.executable, "-m", "sppnet", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"sppnet {sppnet.__version__}"
