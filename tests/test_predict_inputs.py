"""Predictor takes paths, bytes, PIL images, arrays and tensors; predict writes CSV; the file's own size."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sppnet.cli import main
from sppnet.errors import ConfigError, DataError
from sppnet.models import build_model
from sppnet.predict import Predictor

from conftest import write_image


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(build_model("spp", num_classes=3, widths=(4, 8), hidden=8).eval(), ["a", "b", "c"], 32)


def test_every_kind_of_image_gives_the_same_prediction(predictor, tmp_path):
    path = write_image(tmp_path / "x.png", size=(60, 40), seed=3, fmt="PNG")
    pil = Image.open(path).convert("RGB")
    array = np.array(pil)
    kinds = [str(path), path.read_bytes(), pil, array, torch.from_numpy(array).permute(2, 0, 1),
             torch.from_numpy(array).float(), array.astype(np.float64)]
    results = [predictor.predict(k) for k in kinds]
    for r in results:
        assert r.probabilities == pytest.approx(results[0].probabilities, abs=1e-6)
        assert (r.width, r.height) == (48, 32) and (r.file_width, r.file_height) == (60, 40)
    many = list(predictor.predict_many(kinds, batch_size=3))
    assert [m.probabilities == pytest.approx(results[0].probabilities, abs=1e-6) for m in many] == [True] * len(kinds)
    assert many[0].source == str(path) and many[3].source == "ndarray 3" and results[3].source == "ndarray"
    assert all((m.file_width, m.file_height) == (60, 40) for m in many)


def test_grey_arrays_are_classified_and_wrong_objects_get_one_clear_error(predictor, tmp_path):
    assert predictor.predict(np.full((40, 50), 128, dtype=np.uint8)).file_width == 50
    with pytest.raises(ConfigError, match="cannot classify a dict"):
        predictor.predict({"not": "an image"})
    with pytest.raises(ConfigError, match=r"must be \(H, W, 3\) or \(H, W\), got shape \(4, 5, 2\)"):
        predictor.predict(np.zeros((4, 5, 2), dtype=np.uint8))
    with pytest.raises(ConfigError, match="finite numbers"):
        predictor.predict(np.full((40, 40, 3), np.nan))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    results = list(predictor.predict_many([str(bad), np.zeros((40, 40, 3), dtype=np.uint8), {"x": 1}]))
    assert isinstance(results[0], DataError) and "bad.jpg" in str(results[0])
    assert results[1].class_name in ("a", "b", "c") and isinstance(results[2], DataError)


def test_predict_writes_csv_and_json_with_the_file_size(tmp_path, capsys):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "ds", {"amber": 4, "jade": 4}, size=(40, 30))
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "1", "--native", "16"]) == 0
    capsys.readouterr()
    images = sorted(str(p) for p in (data / "amber").iterdir())[:2]
    assert main(["predict", str(run), *images, "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["path", "class", "confidence", "amber", "jade"] and [r[0] for r in rows[1:]] == images
    for row in rows[1:]:
        assert abs(float(row[3]) + float(row[4]) - 1) < 1e-5 and float(row[2]) == max(float(row[3]), float(row[4]))
    assert main(["predict", str(run), images[0], "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["file_width"], answer["file_height"]) == (40, 30) and (answer["width"], answer["height"]) == (21, 16)
