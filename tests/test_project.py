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


def _moved_names():
    from sppnet._deprecated import MOVED

    return sorted((old, name, new, removal) for (old, name), (new, _, removal) in MOVED.items())


@pytest.mark.parametrize("module,name,new,removal", _moved_names())
def test_names_that_moved_still_work_with_a_deprecation_warning_until_their_release(module, name, new, removal):
    import importlib

    old = importlib.import_module(module)
    if removal is None:  # removed already: the error says where the name lives now
        with pytest.raises(AttributeError, match=f"was removed: use {new}"):
            getattr(old, name)
        return
    with pytest.warns(DeprecationWarning, match=f"moved to {new}.* goes in sppnet {removal}"):
        value = getattr(old, name)
    new_module, new_name, _ = __import__("sppnet._deprecated", fromlist=["MOVED"]).MOVED[(module, name)]
    assert value is getattr(importlib.import_module(new_module), new_name)


def test_an_unknown_name_of_a_module_with_moved_names_is_a_plain_attribute_error():
    import sppnet.train

    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        sppnet.train.no_such_name  # noqa: B018


#: DESIGN.md's floors, as the project reads them (a module imports only modules on lower floors
#: or its own): kept here so that the check needs nothing outside the repository.
FLOORS = {
    "errors": 1, "files": 1, "runtime": 1, "calibration": 2, "data": 2, "pooling": 2, "sizing": 3, "augment": 3,
    "kernels": 3, "models": 4, "report": 4, "config": 5, "runs": 6, "distributed": 6, "inference": 6, "train": 7,
    "evaluate": 7, "predict": 7, "explain": 8, "export": 8, "compare": 9, "serve": 9, "cli": 10,
}


def _package_imports():
    """(module, imported module, line) for every import in the package: at the top, inside
    functions, and importlib.import_module / __import__ calls with a literal name."""
    import ast

    package = ROOT / "src" / "sppnet"
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__")
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = parts[:-1] if node.level else ()
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                if node.level:
                    prefix = ".".join(base + tuple((node.module or "").split(".")) if node.module else base)
                    targets = [prefix] if node.module else [".".join(base + (a.name,)) for a in node.names]
                elif (node.module or "").startswith("sppnet."):
                    targets = [node.module[len("sppnet."):]]
            elif isinstance(node, ast.Import):
                targets = [a.name[len("sppnet."):] for a in node.names if a.name.startswith("sppnet.")]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                    "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value)
                if name.startswith("sppnet."):
                    targets = [name[len("sppnet."):]]
            for target in targets:
                yield module, target.strip("."), node.lineno


def test_no_import_runs_up_the_floors_not_even_inside_a_function():
    def floor(module):
        return FLOORS.get(module.split(".")[0])

    wrong = [f"{m}:{line} imports {t}" for m, t, line in _package_imports()
             if floor(m) is not None and floor(t) is not None and floor(t) > floor(m)]
    assert wrong == []


def test_the_floor_check_sees_function_level_and_import_module_imports(tmp_path, monkeypatch):
    package = tmp_path / "src" / "sppnet"
    package.mkdir(parents=True)
    (package / "report.py").write_text("def f():\n    from .compare import x\n")
    (package / "pooling.py").write_text("import importlib\nimportlib.import_module('sppnet.serve')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert sorted((m, t) for m, t, _ in _package_imports()) == [("pooling", "serve"), ("report", "compare")]


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
