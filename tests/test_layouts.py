"""Your own data: train/val/test folders, --val, evaluating any folder."""

import json
import tarfile

import pytest

from sppnet.cli import main
from sppnet.data import run_sets, scan, split_layout
from sppnet.errors import DataError

from conftest import make_dataset

CLASSES = ("amber", "jade", "sky")
FAST = ["--epochs", "1", "--size", "32", "--batch-size", "8"]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "ds"
    make_dataset(root / "train", {c: 6 for c in CLASSES}, size=(40, 30), vary=True)
    make_dataset(root / "val", {c: 3 for c in CLASSES}, size=(40, 30), vary=True)
    make_dataset(root / "test", {c: 4 for c in CLASSES}, size=(40, 30), vary=True)
    return root


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_a_split_layout_is_recognised_and_a_class_folder_named_train_is_not(layout, tmp_path):
    assert sorted(split_layout(layout)) == ["test", "train", "val"]
    assert split_layout(layout / "train") is None
    plain = make_dataset(tmp_path / "plain", {"train": 2, "val": 2})  # classes that happen to be named so
    assert split_layout(plain) is None


def test_train_with_val_validates_on_exactly_those_images(layout, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(layout / "train"), "--val", str(layout / "val"), "--out", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    assert f"and 9 validation files in {layout / 'val'}; using 18 for training" in out
    assert _metrics(run)["validation"]["count"] == 9
    assert json.loads((run / "config.json").read_text())["train"]["val"] == str(layout / "val")


@pytest.mark.parametrize("archive", [False, True])
def test_a_train_val_test_folder_or_archive_is_used_as_laid_out(layout, tmp_path, capsys, archive):
    data = layout
    if archive:
        data = tmp_path / "ds.tgz"
        with tarfile.open(data, "w:gz") as tar:
            tar.add(layout, arcname="ds")
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *FAST]) == 0
    assert "(a train/val layout)" in capsys.readouterr().out
    assert _metrics(run)["validation"]["count"] == 9
    # evaluate: the run's own validation set by default and for its own data; test/ for another
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 9
    assert main(["evaluate", str(run), str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == "the run's validation set"
    other = tmp_path / "copy"
    make_dataset(other / "train", {c: 2 for c in CLASSES})
    make_dataset(other / "test", {c: 1 for c in CLASSES})
    assert main(["evaluate", str(run), str(other), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["count"] == 3 and scored["data"] == f"every image of {other / 'test'}"


def test_evaluate_scores_every_image_of_any_folder(layout, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(layout / "train"), "--out", str(run), *FAST]) == 0
    capsys.readouterr()
    small = make_dataset(tmp_path / "few", {"sky": 2, "amber": 1})  # a subset of the classes, in another order
    assert main(["evaluate", str(run), str(small)]) == 0
    out = capsys.readouterr().out
    assert f"scored 3 images: every image of {small}" in out
    assert main(["evaluate", str(run), str(layout / "test"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 12 and {c: result["per_class"][c]["support"] for c in CLASSES} == dict.fromkeys(CLASSES, 4)


def test_class_names_must_agree_between_the_folders(layout, tmp_path, capsys):
    odd = make_dataset(tmp_path / "odd", {"amber": 2, "violet": 2})
    code = main(["train", str(layout / "train"), "--val", str(odd), "--out", str(tmp_path / "r"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "class folder 'violet' is not one of the classes (amber, jade, sky)" in err
    partial = make_dataset(tmp_path / "partial", {"amber": 2, "sky": 2})
    assert main(["train", str(layout / "train"), "--val", str(partial), "--out", str(tmp_path / "p"), *FAST]) == 0
    assert "no validation image of class(es) jade" in capsys.readouterr().out


def test_resume_checks_the_validation_folder(layout, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(layout / "train"), "--val", str(layout / "val"), "--out", str(run), *FAST]) == 0
    code = main(["train", str(layout / "train"), "--val", str(layout / "test"), "--out", str(run), "--resume",
                 "--epochs", "2"])
    assert code == 2 and "--val" in capsys.readouterr().err


def test_run_sets_holdout_never_touches_the_validation_folder(layout):
    sets = run_sets(layout, holdout=0.25)
    assert {sets.val.root} == {layout / "train"} and len(sets.train) + len(sets.val) == 18
    with pytest.raises(DataError, match="a train/ folder without val/"):
        only = layout.parent / "only"
        make_dataset(only / "train", {"a": 2, "b": 2})
        make_dataset(only / "test", {"a": 2, "b": 2})
        run_sets(only)
    assert scan(layout / "val", ["sky", "jade", "amber"]).class_names == ["sky", "jade", "amber"]
