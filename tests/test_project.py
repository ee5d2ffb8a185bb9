"""The project's own promises: the README's test command is what CI runs."""

import re
from pathlib import Path

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
