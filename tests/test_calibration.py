"""Temperature scaling, the reliability diagram and the moving average of the weights."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sppnet.cli import main
from sppnet.config import TrainConfig
from sppnet.errors import ConfigError, DataError
from sppnet.evaluate import (evaluate_run, expected_calibration_error, fit_temperature, reliability_bins,
                             tempered_probabilities)
from sppnet.predict import Predictor
from sppnet.runs import RunFolder
from sppnet.train import ema_update, train

from conftest import make_dataset, small_calibration


def sampled_task(temperature: float, n: int = 20000, views: int = 1, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature): the right temperature is known."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, 5, generator=g)
    labels = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=g).squeeze(1)
    return logits.expand(views, n, 5).clone(), labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with(true_t):
    logits, labels = sampled_task(true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.06)


def test_fitted_temperature_lowers_the_loss_and_ece_and_keeps_every_answer():
    logits, labels = sampled_task(2.5, views=2)
    t = fit_temperature(logits, labels)
    before, after = tempered_probabilities(logits, 1.0), tempered_probabilities(logits, t)
    assert torch.equal(before.argmax(1), after.argmax(1))
    nll = lambda p: float(torch.nn.functional.nll_loss(p.log(), labels))  # noqa: E731
    assert nll(after) < nll(before)
    ece = lambda p: expected_calibration_error(p.max(1).values.numpy(), (p.argmax(1) == labels).numpy().astype(float))  # noqa: E731
    assert ece(after) < 0.02 < ece(before)


def test_fit_temperature_refuses_shapes_it_cannot_use():
    with pytest.raises(ValueError):
        fit_temperature(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        fit_temperature(torch.zeros(1, 0, 5), torch.zeros(0, dtype=torch.long))


def test_reliability_bins_add_up_to_the_ece():
    confidence = np.array([0.1, 0.55, 0.58, 0.95, 0.99, 1.0])
    correct = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    bins = reliability_bins(confidence, correct, bins=10)
    assert [b["count"] for b in bins] == [1, 0, 0, 0, 0, 2, 0, 0, 0, 3]
    assert bins[5]["accuracy"] == 0.5 and bins[5]["confidence"] == pytest.approx(0.565)
    assert bins[1]["accuracy"] is None
    by_hand = (1 * 0.1 + 2 * abs(0.5 - 0.565) + 3 * abs(1 - (0.95 + 0.99 + 1.0) / 3)) / 6
    assert expected_calibration_error(confidence, correct, bins=10) == pytest.approx(by_hand)


def test_moving_average_starts_by_following_the_weights_then_settles_to_its_decay():
    update = ema_update(0.99)
    avg, cur = [torch.zeros(3)], [torch.ones(3)]
    update(avg, cur, torch.tensor(1))  # early: moves by 1 - 2/11
    assert avg[0][0].item() == pytest.approx(1 - 2 / 11)
    avg = [torch.zeros(3)]
    update(avg, cur, torch.tensor(10_000))  # late: by 1 - decay
    assert avg[0][0].item() == pytest.approx(0.01)
    counter = [torch.tensor(3)]
    update(counter, [torch.tensor(7)], torch.tensor(5))
    assert counter[0].item() == 7


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("data") / "ds", {"amber": 14, "jade": 12, "sky": 10},
                        size=(48, 36), vary=True)
    out = tmp_path_factory.mktemp("runs") / "run"
    with small_calibration():  # the mechanics, on a few images
        assert main(["train", str(data), "--out", str(out), "--epochs", "3", "--native", "32", "--batch-size", "8",
                     "--calibrate", "0.25", "--ema", "0.9", "--flip-test"]) == 0
    return data, out


def test_training_with_calibrate_holds_out_training_images_and_stores_temperatures(calibrated_run):
    data, out = calibrated_run
    run = RunFolder(out)
    entry = json.loads((out / "calibration.json").read_text())
    assert entry["images"] == int(0.25 * 29)  # a quarter of the 29 training files (36 - 7 validation)
    for weights in ("best", "last"):
        assert run.temperature(weights) == entry[weights]["temperature"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibrated"]["last"]["val_accuracy"] == metrics["final"]["val_accuracy"]
    assert metrics["calibrated"]["last"]["temperature"] == run.temperature("last")


def test_every_user_of_a_calibrated_run_gets_the_tempered_probabilities(calibrated_run, tmp_path):
    data, out = calibrated_run
    run = RunFolder(out)
    t = run.temperature("best")
    raw, calibrated = run.load_model("best", calibrated=False), run.load_model("best")
    x = torch.rand(2, 3, 40, 56) * 255
    with torch.no_grad():
        torch.testing.assert_close(calibrated(x), raw(x) / t, rtol=1e-4, atol=1e-5)
    image = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((36, 48, 3)) * 255).astype(np.uint8)).save(image)
    predictor = Predictor.from_run(out)
    tensor = predictor.prepare(str(image))
    with torch.no_grad():
        expected = 0.5 * (torch.softmax(raw(tensor) / t, 1) + torch.softmax(raw(tensor.flip(-1)) / t, 1))
    got = predictor.predict(str(image)).probabilities
    assert list(got.values()) == pytest.approx(expected[0].tolist(), abs=1e-5)


def test_evaluate_draws_the_reliability_diagram_and_says_which_temperature(calibrated_run, tmp_path, capsys):
    data, out = calibrated_run
    png = tmp_path / "rel.png"
    assert main(["evaluate", str(out), "--reliability-png", str(png), "--confusion-png", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    assert f"temperature {RunFolder(out).temperature('best'):.3f}" in text and str(png) in text
    assert Image.open(png).size[0] > 300
    on, off = evaluate_run(out), evaluate_run(out, calibrated=False)
    assert on.accuracy == off.accuracy and on.confusion == off.confusion
    assert on.extra["temperature"] == RunFolder(out).temperature("best") and off.extra["temperature"] is None
    assert on.loss != off.loss
    assert sum(b["count"] for b in on.reliability) == on.count


def test_a_run_with_a_moving_average_saves_the_average_and_resumes_it(calibrated_run, tmp_path):
    data, out = calibrated_run
    state = torch.load(out / "state.pt", weights_only=True)
    last = RunFolder(out).load_weights("last")
    assert any(not torch.equal(state["model"][k], last[k]) for k in last)  # the files hold the average
    for k in last:
        torch.testing.assert_close(state["averaged"][f"module.{k}"], last[k])
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert main(["train", str(data), "--out", str(copy), "--resume", "--epochs", "4"]) == 0
    assert len(RunFolder(copy).read_history()) == 4
    # A state without the average cannot continue a run that keeps one: one line, nothing lost.
    del state["averaged"]
    torch.save(state, copy / "state.pt")
    before = (copy / "state.pt").read_bytes()
    with pytest.raises(DataError, match="moving average"):
        train(TrainConfig(data=str(data), out=str(copy), epochs=5), resume=True)
    assert (copy / "state.pt").read_bytes() == before


@pytest.mark.parametrize("content", ['{"best": {"temperature": -1}}', '{"best": 3}', '[1, 2]', "{not json"])
def test_a_damaged_calibration_file_gets_one_line(calibrated_run, tmp_path, content, capsys):
    data, out = calibrated_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "calibration.json").write_text(content)
    assert main(["evaluate", str(copy)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibration.json" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("option, value", [("calibrate", 0.6), ("calibrate", -0.1), ("ema", 1.0), ("ema", float("nan"))])
def test_bad_calibrate_and_ema_options_name_the_flag(option, value):
    with pytest.raises(ConfigError, match=f"--{option}"):
        TrainConfig(**{option: value}).validate()


def test_too_few_to_calibrate_names_what_is_short():
    from sppnet.calibration import too_few_to_calibrate

    assert too_few_to_calibrate({"a": 150, "b": 9}) == "9 of class b, fewer than 10"
    assert too_few_to_calibrate({"a": 60, "b": 30}) == "90 images, fewer than 100"
    assert too_few_to_calibrate({"a": 90, "b": 10}) is None


def test_calibrate_on_too_few_images_is_skipped_with_a_warning_and_they_train(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", {"a": 10, "b": 10}, size=(16, 16))
    out = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(out), epochs=1, calibrate=0.25, batch_size=2,
                      policy={"kind": "fixed", "size": 16}))
    printed = capsys.readouterr().out
    assert "--calibrate 0.25 would hold out 4 images, fewer than 100" in printed and "calibration skipped" in printed
    assert "using 16 for training" in printed and not (out / "calibration.json").exists()


def test_a_temperature_that_does_not_lower_the_held_out_loss_is_not_kept(calibrated_run, monkeypatch):
    from sppnet import evaluate
    from sppnet.runs import RunFolder

    _, out = calibrated_run
    run = RunFolder(out)
    before = (run.file("calibration.json").read_bytes(), run.file("metrics.json").read_bytes())
    config = run.run_config()
    from sppnet.data import build_store, calibration_split, locate, run_sets

    sets = run_sets(locate(config.data.source), None, config.data.val_split, config.data.seed)
    _, cal = calibration_split(sets.train, 0.25, config.data.seed)
    view = config.test_view
    cal_store = build_store(cal, view.store_size, view.fixed_store_size, None)[0]
    val_store = build_store(sets.val, view.store_size, view.fixed_store_size, None)[0]
    monkeypatch.setattr(evaluate, "fit_temperature", lambda logits, labels: 50.0)  # a bad fit
    try:
        result = evaluate.calibrate_run(run, cal_store, val_store, view, False)
        entry = run.read_json("calibration.json")
        assert entry["best"]["fitted_temperature"] == 50.0 and entry["best"]["kept"] is False
        assert entry["best"]["temperature"] == 1.0 == result["best"]["temperature"]
    finally:
        run.file("calibration.json").write_bytes(before[0])
        run.file("metrics.json").write_bytes(before[1])


def test_the_ece_noise_floor_is_what_a_calibrated_sample_shows_and_shrinks_with_the_sample():
    from sppnet.evaluate import ece_noise_floor

    rng = np.random.default_rng(1)
    small, large = rng.uniform(0.4, 1.0, 300), rng.uniform(0.4, 1.0, 30000)
    assert ece_noise_floor(small) > 3 * ece_noise_floor(large)
    assert ece_noise_floor(large) < 0.01
    # Calibrated samples of the small size show about the floor, not 0.
    shown = [expected_calibration_error(small, (rng.random(300) < small).astype(float)) for _ in range(100)]
    assert np.mean(shown) == pytest.approx(ece_noise_floor(small), rel=0.15)
    assert ece_noise_floor(small) == ece_noise_floor(small)  # seeded: the same every time


def test_ece_noise_tells_a_calibrated_sample_from_a_miscalibrated_one():
    from sppnet.calibration import ece_noise

    rng = np.random.default_rng(2)
    # Calibrated samples: one in 20 falls above `high`, and the p-values spread evenly over [0, 1].
    p_values, above = [], []
    for _ in range(200):
        confidence = rng.uniform(0.3, 1.0, 300)
        observed = expected_calibration_error(confidence, (rng.random(300) < confidence).astype(float))
        noise = ece_noise(confidence, observed, draws=400)
        assert noise.high > noise.floor > 0
        p_values.append(noise.p_value)
        above.append(observed > noise.high)
    assert 0.01 < np.mean(above) < 0.11
    assert 0.01 < np.mean(np.array(p_values) < 0.05) < 0.11
    assert 0.4 < np.median(p_values) < 0.6
    # An over-confident model (says 0.95, right 70 % of the time) is told apart on 300 answers.
    confidence = np.full(300, 0.95)
    observed = expected_calibration_error(confidence, (rng.random(300) < 0.7).astype(float))
    noise = ece_noise(confidence, observed)
    assert observed > noise.high and noise.p_value == 0.0
    # No answers: nothing to say, and no error.
    assert np.isnan(ece_noise(np.empty(0), float("nan")).p_value)


def test_evaluate_says_whether_the_ece_is_more_than_the_sample_explains(calibrated_run, capsys):
    data, out = calibrated_run
    assert main(["evaluate", str(out)]) == 0
    evaluation = evaluate_run(out)
    assert evaluation.ece_floor <= evaluation.ece_high and 0 <= evaluation.ece_p <= 1
    assert f"over {evaluation.ece_high:.4f} one time in 20; p = {evaluation.ece_p:.2f}" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ece_high"] == pytest.approx(evaluation.ece_high) and shown["ece_p"] == pytest.approx(evaluation.ece_p)
    calibrated = RunFolder(out).read_json("metrics.json")["calibrated"]["last"]
    assert calibrated["val_ece_floor"] <= calibrated["val_ece_high"] and 0 <= calibrated["val_ece_p"] <= 1


def test_calibration_fits_weights_shared_by_best_and_last_once(calibrated_run, tmp_path, monkeypatch):
    from sppnet.data import ImageStore
    from sppnet.evaluate import calibrate_run
    from sppnet.sizing import Native

    out = tmp_path / "run"
    shutil.copytree(calibrated_run[1], out)
    shutil.copy(out / "last.safetensors", out / "best.safetensors")  # the last epoch was the best
    rng = np.random.default_rng(0)
    store = ImageStore([rng.integers(0, 256, (32, 40, 3), dtype=np.uint8) for _ in range(12)], [i % 3 for i in range(12)])
    run = RunFolder(out)
    loads = []
    original = RunFolder.load_model
    monkeypatch.setattr(RunFolder, "load_model", lambda self, *a, **k: loads.append(a[0]) or original(self, *a, **k))

    def calibrate(best_epoch):
        metrics = run.read_json("metrics.json")
        metrics["best"]["epoch"] = best_epoch
        run.write_json("metrics.json", metrics)
        loads.clear()
        return calibrate_run(run, store, store, Native(32), flip=True), json.loads((out / "calibration.json").read_text())

    apart, apart_file = calibrate(best_epoch=1)
    assert loads == ["best", "last"]
    shared, shared_file = calibrate(best_epoch=run.read_json("metrics.json")["epochs"])
    assert loads == ["best"]  # one fit serves both
    assert shared == apart and shared_file == apart_file  # the same numbers as fitting each
