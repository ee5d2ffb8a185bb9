"""sppnet presets and models, the options every subcommand shares, the service's surface."""

import argparse

import pytest

from sppnet.cli import build_parser, main
from sppnet.config import PRESETS, TrainConfig
from sppnet.models import count_parameters


def test_presets_prints_each_recipe_with_its_network_sizes_and_figures(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["preset", "network", "parameters"] and len(lines) == 1 + len(PRESETS)
    for name, line in zip(PRESETS, lines[1:]):
        config = TrainConfig.from_preset(name)
        assert line.startswith(name + " ")
        assert f"{count_parameters(config.model_spec(5).build()):,}" in line
        assert config.size_policy().describe() in line and f" {config.epochs} " in line
    assert "27" in lines[-1] and "0.888" in lines[-1]


def test_models_lists_the_study_models_and_the_families(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "spp " in out and "torchvision:NAME" in out and "timm:NAME" in out and "timm:mobilenetv3_small_100" in out


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_device_defaults_the_same_everywhere_and_every_option_has_help():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if "--device" in action.option_strings:
                assert action.default in ("auto", None), name
            if action.option_strings and action.dest != "help":
                assert action.help, f"sppnet {name} {action.option_strings[0]} has no help"


def test_no_help_says_its_default_twice():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            assert (action.help or "").count("(default") <= 1, f"sppnet {name} {action.option_strings}"


def test_a_preset_on_a_backbone_drops_only_its_network_fields():
    from sppnet.models import registry

    def fake(network, num_classes=5, levels=(1, 2, 4), pool="max", dropout=0.2, hidden=128, freeze_backbone=False):
        raise AssertionError("not built here")

    registry._FAMILIES["fakefam"] = (fake, "a test family", ("net",))
    try:
        config = TrainConfig.from_preset("best", model="fakefam:net")
    finally:
        del registry._FAMILIES["fakefam"]
    assert config.policy == PRESETS["best"]["policy"] and config.epochs == 60 and config.ema == 0.998
    assert config.widths == (16, 32, 64) and config.batch_norm is False  # the study CNN's fields: not applied


def test_the_service_hides_its_schema_and_says_when_images_are_warped():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sppnet.models import build_model
    from sppnet.predict import Predictor
    from sppnet.serve import create_app

    model = build_model("spp", num_classes=2, widths=(4, 8), hidden=4).eval()
    whole = TestClient(create_app(Predictor(model, ["a", "b"], 32)))
    assert whole.get("/openapi.json").status_code == 404 and whole.get("/docs").status_code == 404
    assert whole.get("/model").json()["warped"] is None
    warped = TestClient(create_app(Predictor(model, ["a", "b"], 32, size=40)))
    assert warped.get("/model").json()["warped"] == 40
    page = whole.get("/").text
    assert "m.warped ?" in page and "no crop or warp" in page
