"""compare: the study's matrix trained and reported."""


import json

import pytest

from sppnet.cli import main

from conftest import make_dataset

RECIPE_FAST = ["--batch-size", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def recipe_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", {"amber": 14, "jade": 12, "sky": 10}, size=(48, 36), vary=True)


def test_compare_writes_a_report_with_calibration_and_skips_finished_runs(recipe_dataset, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", str(recipe_dataset), "--epochs", "1", "--variants", "spp,spp-noaug", "--limit", "16", "--out", str(out)]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "| ECE (15 bins) |" in report and "when wrong" in report
    rows = [line for line in report.splitlines() if line.startswith("| spp")]
    assert [r.split(" | ")[0] for r in rows] == ["| spp", "| spp-noaug"]
    metrics = json.loads((out / "spp" / "metrics.json").read_text())
    assert f"{metrics['validation']['ece']:.4f}" in rows[0]
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    before = (out / "spp" / "state.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # finished runs are not trained again
    assert (out / "spp" / "state.pt").stat().st_mtime_ns == before
    assert "== spp: 1/1 epochs done" in capsys.readouterr().out
