"""The project's own promises: the README's test command is what CI runs, the README stays a user's
README, the package keeps its shape, and names that moved keep working for a release."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run the tests", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [command]


def test_readme_parameter_counts_match_the_models():
    from sppnet.models import build_model, count_parameters

    readme = (ROOT / "README.md").read_text()
    for name in ("spp", "flatten", "gap"):
        assert f"{count_parameters(build_model(name)):,} |" in readme


@pytest.mark.parametrize("module,name,new", [
    ("sppnet.train", "PRESETS", "sppnet.config"),
    ("sppnet.train", "resolve_device", "sppnet.runtime"), ("sppnet.train", "autocast_dtype", "sppnet.runtime"),
    ("sppnet.train", "peak_rss_mb", "sppnet.runtime"), ("sppnet.train", "check_store_dir", "sppnet.data"),
    ("sppnet.report", "compare", "sppnet.compare"), ("sppnet.report", "STUDY_VARIANTS", "sppnet.compare"),
    ("sppnet._perf", "keep_freed_memory", "sppnet.runtime"), ("sppnet.models", "ConvBlock", "sppnet.kernels"),
])
def test_names_that_moved_still_work_with_a_deprecation_warning(module, name, new):
    import importlib

    old = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"moved to {new}"):
        value = getattr(old, name)
    assert value is not None


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 350


def test_the_package_keeps_the_shape_of_the_design():
    house = ROOT.parent / "shared" / "tools" / "house.py"
    if not house.is_file():
        pytest.skip(f"needs the design checker at {house} (the project's shared tools folder)")
    result = subprocess.run([sys.executable, str(house), "--design", str(ROOT.parent / "shared" / "DESIGN.md")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_no_source_file_is_hidden_by_gitignore():
    # A pattern such as "runs/" once hid the sppnet.runs package from every commit.
    sources = [p.relative_to(ROOT).as_posix() for p in (ROOT / "src").rglob("*.py")] + \
              [p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*.py")]
    result = subprocess.run(["git", "check-ignore", "--no-index", *sources], cwd=ROOT, capture_output=True, text=True)
    if result.returncode == 128:
        pytest.skip("not a git checkout")
    assert result.stdout.split() == []
