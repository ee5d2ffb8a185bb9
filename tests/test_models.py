"""models: the flower CNN family, its registry and its padded-batch contract."""

import pytest
import torch

from sppnet.models import ModelSpec, build_model, count_parameters, list_models


def pad_batch(images):
    height = max(im.shape[-2] for im in images)
    width = max(im.shape[-1] for im in images)
    batch = torch.zeros(len(images), 3, height, width)
    for k, im in enumerate(images):
        batch[k, :, : im.shape[-2], : im.shape[-1]] = im
    return batch, torch.tensor([list(im.shape[-2:]) for im in images])


def test_registry_lists_the_family():
    assert list_models() == ["flatten", "gap", "spp"]


def test_unknown_model_lists_valid_names_and_suggests():
    with pytest.raises(ValueError, match=r"unknown model 'sppp': choose one of flatten, gap, spp, torchvision:NAME, "
                                         r"timm:NAME \(sppnet models lists them\); did you mean 'spp'\?"):
        build_model("sppp")


@pytest.mark.parametrize("name,suggestion", [("resnet18", "(torchvision|timm):resnet18"), ("torchvison:resnet18",
                                                                                   "torchvision:resnet18"),
                                             ("mobilenetv3_small_100", "timm:mobilenetv3_small_100")])
def test_the_did_you_mean_covers_the_families(name, suggestion):
    with pytest.raises(ValueError, match=f"did you mean '{suggestion}'"):
        build_model(name)


def test_a_family_without_a_network_says_what_to_write():
    with pytest.raises(ValueError, match="names no network: e.g. torchvision:resnet18"):
        build_model("torchvision:")


def test_a_train_config_takes_only_what_its_model_builder_takes():
    from sppnet import TrainConfig

    spec = TrainConfig(model="gap", levels=(1, 3)).model_spec(4)
    assert "levels" not in dict(spec.arguments) and spec.get("widths") == (16, 32, 64)
    assert TrainConfig(model="spp", pool="avg").model_spec(4).get("pool") == "avg"
    for bad in (dict(freeze_backbone=True), dict(backbone_lr=0.1)):
        with pytest.raises(ValueError, match="does not apply to --model spp"):
            TrainConfig(**bad).validate()


def test_unknown_argument_names_the_model():
    with pytest.raises(ValueError, match="model 'gap'.*levels"):
        build_model("gap", levels=(1, 2))


@pytest.mark.parametrize(
    "name,expected",
    [("spp", 196_389), ("flatten", 3_989_285), ("gap", 32_549)],  # Keras reports the same counts
)
def test_parameter_counts_match_the_study(name, expected):
    assert count_parameters(build_model(name)) == expected


@pytest.mark.parametrize("name", ["spp", "gap"])
@pytest.mark.parametrize("size", [(8, 8), (37, 53), (180, 180), (240, 320)])
def test_any_size_models_give_logits_for_any_size(name, size):
    model = build_model(name, num_classes=7).eval()
    out = model(torch.rand(2, 3, *size) * 255)
    assert out.shape == (2, 7)
    assert model.forward_features(torch.rand(1, 3, *size))[0].shape[1] == 64


@pytest.mark.parametrize("name,kwargs", [("spp", {}), ("spp", dict(levels=(4, 2, 1), pool="avg")), ("gap", {})])
def test_padded_mixed_batch_gives_each_image_its_own_logits(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    images = [torch.rand(3, h, w) * 255 for h, w in [(17, 300), (180, 180), (224, 224), (333, 500)]]
    batch, sizes = pad_batch(images)
    with torch.no_grad():
        got = model(batch, sizes)
        alone = torch.cat([model(im[None]) for im in images])
    torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)


def test_input_is_rescaled_inside_the_model():
    model = build_model("spp", dropout=0.0).eval()
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        features, _ = model.forward_features(x)
        by_hand = x / 255
        for block in model.features:
            by_hand = block(by_hand)
    torch.testing.assert_close(features, by_hand)


def test_flatten_rejects_other_sizes_naming_the_one_it_needs():
    model = build_model("flatten", input_size=64)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match="built for 64x64 input, got 65x64"):
        model(torch.rand(1, 3, 65, 64))


@pytest.mark.parametrize("name", ["spp", "gap"])
def test_input_smaller_than_the_stride_is_refused(name):
    model = build_model(name)
    with pytest.raises(ValueError, match="smaller than the network's total stride of 8 px"):
        model(torch.rand(1, 3, 7, 100))
    with pytest.raises(ValueError, match="stride of 8 px"):
        model(torch.rand(2, 3, 20, 20), torch.tensor([[20, 20], [20, 5]]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
        (dict(num_classes=0), "num_classes must be an integer >= 1, got 0"),
        (dict(levels=()), "levels must not be empty"),
        (dict(pool="min"), "mode must be one of max, avg"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("spp", **kwargs)


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got \(1, 1, 32, 32\)"):
        build_model("gap")(torch.rand(1, 1, 32, 32))


def test_config_rebuilds_the_same_architecture():
    model = build_model("spp", num_classes=3, levels=(1, 3), pool="avg", dropout=0.5)
    config = dict(model.config)
    rebuilt = build_model(config.pop("name"), **config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    assert repr(rebuilt) == repr(model)


def test_gradients_reach_the_first_conv_through_a_padded_batch():
    model = build_model("spp")
    batch, sizes = pad_batch([torch.rand(3, 40, 24) * 255, torch.rand(3, 16, 64) * 255])
    model(batch, sizes).sum().backward()
    assert model.features[0][0].weight.grad.abs().sum() > 0


def test_parameter_names_are_those_of_plain_conv_layers():
    keys = set(build_model("spp").state_dict())
    assert {"features.0.0.weight", "features.0.0.bias", "features.2.0.bias"} <= keys
    assert {"features.0.1.weight", "features.0.1.running_mean"} <= set(build_model("spp", batch_norm=True).state_dict())


def test_model_spec_round_trips_and_knows_the_stride():
    model = build_model("spp", num_classes=3, widths=(4, 8, 16, 32), levels=(1, 2))
    spec = ModelSpec.from_dict(model.config)
    assert spec.to_dict() == model.config and spec.stride == 16 == model.stride
    rebuilt = spec.build()
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="needs a 'name'"):
        ModelSpec.from_dict({"widths": [4]})


@pytest.mark.parametrize("after_pool", [False, True])
def test_batch_norm_model_gives_each_image_of_a_padded_batch_its_own_logits(after_pool):
    torch.manual_seed(0)
    model = build_model("spp", widths=(8, 16, 16, 32), batch_norm=True, norm_after_pool=after_pool).eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(-1, 1)
    images = [torch.rand(3, 37, 50) * 255, torch.rand(3, 64, 33) * 255]
    padded = torch.zeros(2, 3, 64, 50)
    for k, im in enumerate(images):
        padded[k, :, : im.shape[1], : im.shape[2]] = im
    sizes = torch.tensor([im.shape[1:] for im in images])
    with torch.no_grad():
        together = model(padded, sizes)
        alone = torch.cat([model(im[None]) for im in images])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_norm_after_pool_normalises_the_pooled_map():
    model = build_model("spp", widths=(8, 16), batch_norm=True, norm_after_pool=True)
    block = model.features[0]
    assert [type(layer).__name__ for layer in block] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert model.config["norm_after_pool"] is True and "norm_after_pool" not in build_model("spp", batch_norm=True).config
    assert ModelSpec.from_dict(model.config).build().features[0][2].num_features == 8  # rebuilt the same way
    seen = {}
    block[2].register_forward_hook(lambda m, args, out: seen.update(shape=args[0].shape))
    model.train()(torch.rand(4, 3, 40, 24) * 255)
    assert seen["shape"] == (4, 8, 20, 12)  # the norm sees the map after the 2x2 pooling
    # Training statistics: each channel of the pooled map normalised to mean 0 (before the ReLU).
    x = block[1](block[0](torch.rand(4, 3, 40, 24)))
    torch.testing.assert_close(block[2](x).mean((0, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="norm_after_pool .* needs batch_norm"):
        build_model("spp", norm_after_pool=True)
