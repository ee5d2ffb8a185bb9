"""config: the training configuration, its recipes, its validation and the flags made from it."""

import dataclasses
import importlib

import pytest

from sppnet.cli import build_parser
from sppnet.config import PRESETS, STUDY_VARIANTS, TrainConfig, cli_fields
from sppnet.errors import ConfigError


def test_study_preset_is_the_plain_config():
    assert TrainConfig.from_preset("study") == TrainConfig()


def test_preset_values_and_explicit_overrides():
    config = TrainConfig.from_preset("study-plus", lr=5e-4, out="x")
    assert config.schedule == "cosine" and config.policy == {"kind": "native", "size": 180}
    assert config.lr == 5e-4 and config.preset == "study-plus" and config.out == "x"
    assert config.widths == (16, 32, 64) and config.epochs == 20  # the study's network and budget
    best = TrainConfig.from_preset("best")
    assert best.batch_norm and best.widths == tuple(PRESETS["best"]["widths"])
    assert best.epochs == 60 and TrainConfig.from_preset("best", epochs=3).epochs == 3
    best.validate()
    for name in ("fast", "best"):  # both calibrate on the training split and average the weights
        config = TrainConfig.from_preset(name)
        assert config.calibrate > 0 and config.ema > 0 and config.precision == "auto"
        config.validate()
    assert TrainConfig.from_preset("fast").epochs < TrainConfig.from_preset("study").epochs


def test_unknown_preset_and_bad_recipe_values_are_refused():
    with pytest.raises(ConfigError, match="unknown --preset 'fastest'.*study-plus, fast, best"):
        TrainConfig.from_preset("fastest")
    with pytest.raises(ConfigError, match="unknown training option.*: lr_max"):
        TrainConfig.from_preset("study", lr_max=1.0)
    for field, value, match in [
        ("schedule", "linear", "--schedule must be one of constant, cosine"),
        ("label_smoothing", 1.5, "--label-smoothing must be a number in"),
        ("weight_decay", -1.0, "--weight-decay must be a number in"),
        ("holdout", 1.0, "--holdout must be a number in"),
        ("rotation", 0.7, "--rotation must be a number in"),
        ("warmup_epochs", -1, "--warmup-epochs must be an integer >= 0"),
        ("split_seed", -3, "--split-seed must be an integer >= 0"),
        ("norm_after_pool", True, "--norm-after-pool moves the batch norm after the pooling; give --batch-norm too"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**{field: value}).validate()


def test_every_field_documents_itself_and_every_flag_comes_from_a_field():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"] and f.metadata["section"], f.name
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {opt for action in train._actions for opt in action.option_strings}
    for f in cli_fields():
        flag = "--" + f.name.replace("_", "-")
        assert flag in flags, flag
        action = next(a for a in train._actions if flag in a.option_strings)
        assert action.default is None  # only what is given overrides the preset
        assert f.metadata["help"] in action.help
    help_of = {a.dest: a.help for a in train._actions}
    assert "(default 0.001)" in help_of["lr"] and "(default 16,32,64)" in help_of["widths"]


def test_flags_parse_into_the_configuration(tmp_path, monkeypatch):
    from sppnet.cli import train as cli_train

    seen = {}
    train_module = importlib.import_module("sppnet.train")  # (sppnet.train is also the function)
    monkeypatch.setattr(train_module, "train", lambda config, **kw: seen.update(config=config) or {})
    args = build_parser().parse_args(["train", "photos", "--preset", "study-plus", "--widths", "8,16", "--no-augment",
                                      "--lr", "0.01", "--native", "96", "--split-seed", "4"])
    assert cli_train.run(args) == 0
    config = seen["config"]
    assert config.widths == (8, 16) and config.augment is False and config.lr == 0.01
    assert config.policy == {"kind": "native", "size": 96, "max_aspect": 2.0} and config.split_seed == 4
    assert config.schedule == "cosine" and config.out == "runs/study-plus" and config.preset == "study-plus"


def test_model_spec_and_size_policy_come_from_the_configuration():
    best = TrainConfig.from_preset("best")
    spec = best.model_spec(num_classes=5)
    assert spec.name == "spp" and spec.get("widths") == (32, 64, 128, 256) and spec.get("batch_norm") is True
    assert spec.stride == 16 and best.size_policy().describe() == "native range 96:192"
    flatten = TrainConfig(model="flatten", policy={"kind": "fixed", "size": 96}).model_spec(3)
    assert flatten.get("input_size") == 96 and flatten.get("levels") is None


def test_a_size_below_the_network_stride_is_refused_naming_both():
    with pytest.raises(ConfigError, match="fixed 8: images of 8 px are smaller than the network's stride of 16 px"):
        TrainConfig(widths=(8, 8, 8, 8), policy={"kind": "fixed", "size": 8}).validate()
    TrainConfig(policy={"kind": "fixed", "size": 8}).validate()  # three blocks: stride 8


def test_the_comparison_variants_are_valid_configurations():
    for name, (fields, _) in STUDY_VARIANTS.items():
        TrainConfig(**fields).validate()


def test_from_dict_ignores_unknown_keys_and_round_trips():
    config = TrainConfig.from_preset("best", seed=7)
    assert TrainConfig.from_dict({**config.to_dict(), "future_option": 1}) == config
    with pytest.raises(ConfigError, match="must be a mapping"):
        TrainConfig.from_dict([])
