import pytest
import torch

from sppnet.models import ConvBlock, build_model, conv3x3_sparse_grad, count_parameters, list_models, max_pool_2x2


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
    with pytest.raises(ValueError, match=r"unknown model 'sppp': choose one of flatten, gap, spp; did you mean 'spp'\?"):
        build_model("sppp")


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


def test_conv_block_adds_the_bias_after_pooling_with_the_same_values_and_gradients():
    # In float64, so that the two orders' different summation (other kernels) cannot hide or fake
    # a difference: only a wrong formula could exceed float64's tolerance.
    torch.manual_seed(0)
    block = ConvBlock(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.ReLU(inplace=True)).double()
    with torch.no_grad():
        block[0].bias.uniform_(-1, 1)
    x = torch.randn(4, 3, 17, 22, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    results = []
    for forward in (block.forward, lambda t: torch.nn.Sequential.forward(block, t)):  # ours, conv-with-bias first
        block.zero_grad()
        out = forward(x)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        results.append((out.detach(), block[0].weight.grad.clone(), block[0].bias.grad.clone()))
    (out, w_grad, b_grad), (ref_out, ref_w_grad, ref_b_grad) = results
    assert out.shape == (4, 8, 8, 11)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w_grad, ref_w_grad)
    torch.testing.assert_close(b_grad, ref_b_grad)
    assert block[0].bias.grad.abs().sum() > 0


def test_parameter_names_are_those_of_plain_conv_layers():
    keys = set(build_model("spp").state_dict())
    assert {"features.0.0.weight", "features.0.0.bias", "features.2.0.bias"} <= keys
    assert {"features.0.1.weight", "features.0.1.running_mean"} <= set(build_model("spp", batch_norm=True).state_dict())


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 5, 17, 22), (1, 4, 2, 3), (2, 16, 45, 45)])
def test_max_pool_2x2_equals_max_pool2d_bit_for_bit(fmt, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=fmt)
    x[0, 0, 0, 1] = float("nan")  # max_pool2d propagates NaN; so must the replacement
    x[-1, -1, -2:, -2:] = 7.0  # a tie
    got, expected = max_pool_2x2(x), torch.nn.functional.max_pool2d(x, 2)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_inference_path_gives_the_logits_of_the_layers_run_as_declared(batch_norm):
    torch.manual_seed(0)
    model = build_model("spp", batch_norm=batch_norm).to(memory_format=torch.channels_last).eval()
    x = (torch.rand(3, 3, 61, 83) * 255).contiguous(memory_format=torch.channels_last)
    sizes = torch.tensor([[61, 83], [40, 83], [61, 17]])
    for s in (None, sizes):
        with torch.inference_mode():
            fast = model(x, s)
        declared = model(x.clone().requires_grad_(), s)  # a gradient to compute: layers as declared
        assert declared.requires_grad
        torch.testing.assert_close(fast, declared.detach(), rtol=0, atol=0)


def test_a_contiguous_batch_reaches_a_channels_last_first_conv_channels_last():
    torch.manual_seed(0)
    model = build_model("spp").to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 20, 24) * 255  # contiguous, as grid_sample returns augmented batches
    seen = []
    handle = model.features[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    torch.manual_seed(1)  # the same dropout mask for both calls
    logits = model(x)
    handle.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(seen[0], x / 255)
    torch.manual_seed(1)
    torch.testing.assert_close(logits, model(x.contiguous(memory_format=torch.channels_last)))
    # An input that needs its own gradient keeps autograd's plain path (no out= argument).
    y = x.clone().requires_grad_()
    model(y).sum().backward()
    assert y.grad is not None and y.grad.shape == y.shape


def dense_conv_grads(x, weight, grad):
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    torch.nn.functional.conv2d(x, weight, None, 1, 1).backward(grad)
    return x.grad, weight.grad


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.2, 0.9])  # 0.9: more than a third of the pixels, dense path
def test_sparse_grad_conv_matches_the_dense_gradients(fmt, density):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 7, 9, dtype=torch.float64, generator=gen).contiguous(memory_format=fmt)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64, generator=gen).contiguous(memory_format=fmt)
    grad = torch.randn(3, 5, 7, 9, dtype=torch.float64, generator=gen)
    grad *= torch.rand(grad.shape, generator=gen) < density
    grad[0, 1, 0, 0], grad[2, 4, 6, 8], grad[1, 0, 0, 8], grad[1, 3, 6, 0] = 1.5, -2.0, 0.5, 3.0  # corners
    grad = grad.contiguous(memory_format=fmt)
    xs, ws = x.clone().requires_grad_(), weight.clone().requires_grad_()
    out = conv3x3_sparse_grad(xs, ws)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, None, 1, 1))
    out.backward(grad)
    expected_x, expected_w = dense_conv_grads(x, weight, grad)
    torch.testing.assert_close(xs.grad, expected_x)
    torch.testing.assert_close(ws.grad, expected_w)


def test_sparse_grad_conv_computes_only_the_gradients_asked_for():
    x = torch.randn(2, 3, 6, 6)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    grad = torch.zeros(2, 4, 6, 6)
    grad[1, 2, 3, 4] = 1.0
    conv3x3_sparse_grad(x, weight).backward(grad)
    assert x.grad is None
    torch.testing.assert_close(weight.grad, dense_conv_grads(x, weight, grad)[1])


@pytest.mark.parametrize("x_shape,w_shape", [((2, 3, 6, 6), (4, 3, 5, 5)), ((2, 3, 6, 6), (4, 2, 3, 3)), ((3, 6, 6), (4, 3, 3, 3))])
def test_sparse_grad_conv_refuses_other_shapes(x_shape, w_shape):
    with pytest.raises(ValueError, match="needs x"):
        conv3x3_sparse_grad(torch.randn(x_shape), torch.randn(w_shape))


def test_sparse_grad_conv_with_no_gradient_at_all_returns_zeros():
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    conv3x3_sparse_grad(x, weight).backward(torch.zeros(2, 4, 6, 5))
    assert x.grad.shape == x.shape and weight.grad.shape == weight.shape
    assert not x.grad.any() and not weight.grad.any()


@pytest.mark.parametrize(
    "name,kwargs,expected",
    [("spp", {}, True), ("spp", dict(pool="avg"), False), ("spp", dict(batch_norm=True), False), ("gap", {}, False),
     ("flatten", {}, False)],
)
def test_only_the_block_feeding_a_max_spp_head_uses_sparse_gradients(name, kwargs, expected):
    model = build_model(name, **kwargs)
    assert [block.sparse_grad for block in model.features] == [False, False, expected]


@pytest.mark.parametrize("padded", [False, True])
def test_training_gradients_with_sparse_gradients_equal_the_dense_ones(padded):
    torch.manual_seed(0)
    model = build_model("spp").double().to(memory_format=torch.channels_last)
    dense = build_model("spp").double().to(memory_format=torch.channels_last)
    dense.load_state_dict(model.state_dict())
    dense.features[-1].sparse_grad = False
    x = (torch.rand(3, 3, 180, 200, dtype=torch.float64) * 255).contiguous(memory_format=torch.channels_last)
    sizes = torch.tensor([[180, 200], [150, 200], [180, 111]]) if padded else None
    # The conv map's gradient (seen entering the dense model's last pooling layer) reaches
    # fewer than a third of its pixels, so the sparse model takes the sparse path.
    grads, fractions = [], []

    def pixels_with_gradient(pool, args):
        args[0].register_hook(lambda g: fractions.append(float(g.ne(0).any(1).float().mean())))

    hook = dense.features[-1][1].register_forward_pre_hook(pixels_with_gradient)
    for net in (model, dense):
        torch.manual_seed(1)  # the same dropout mask
        torch.nn.functional.cross_entropy(net(x, sizes), torch.tensor([0, 1, 2])).backward()
        grads.append({k: p.grad for k, p in net.named_parameters()})
    hook.remove()
    assert 0 < fractions[0] < 1 / 3
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], msg=key)
    assert grads[0]["features.2.0.weight"].abs().sum() > 0


def test_sparse_gradients_are_refused_for_another_conv_geometry():
    with pytest.raises(ValueError, match="sparse_grad needs a 3x3 conv with stride 1 and padding 1"):
        ConvBlock(torch.nn.Conv2d(3, 4, 5, padding=2), torch.nn.MaxPool2d(2), torch.nn.ReLU(), sparse_grad=True)
