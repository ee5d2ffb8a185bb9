"""kernels: the CPU fast paths equal the plain layers, and the switch that turns them off."""

import pytest
import torch

from sppnet import kernels
from sppnet.kernels import FastConvBlock, conv3x3_sparse_grad, max_pool_2x2
from sppnet.models import build_model

from test_models import pad_batch

def test_conv_block_adds_the_bias_after_pooling_with_the_same_values_and_gradients():
    # In float64, so that the two orders' different summation (other kernels) cannot hide or fake
    # a difference: only a wrong formula could exceed float64's tolerance.
    torch.manual_seed(0)
    block = FastConvBlock(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.ReLU(inplace=True)).double()
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


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 5, 17, 22), (1, 4, 2, 3), (2, 16, 45, 45)])
def test_max_pool_2x2_equals_max_pool2d_bit_for_bit(fmt, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=fmt)
    x[0, 0, 0, 1] = float("nan")  # max_pool2d propagates NaN; so must the replacement
    x[-1, -1, -2:, -2:] = 7.0  # a tie
    got, expected = max_pool_2x2(x), torch.nn.functional.max_pool2d(x, 2)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("norm", [{}, dict(batch_norm=True), dict(batch_norm=True, norm_after_pool=True)])
def test_inference_path_gives_the_logits_of_the_layers_run_as_declared(norm):
    torch.manual_seed(0)
    model = build_model("spp", **norm).to(memory_format=torch.channels_last).eval()
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
    [("spp", {}, True), ("spp", dict(pool="avg"), False), ("spp", dict(batch_norm=True), False),
     ("spp", dict(batch_norm=True, norm_after_pool=True), False), ("gap", {}, False),
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
        FastConvBlock(torch.nn.Conv2d(3, 4, 5, padding=2), torch.nn.MaxPool2d(2), torch.nn.ReLU(), sparse_grad=True)


def _logits_and_grads(model, x, sizes):
    model.train()
    torch.manual_seed(3)  # the same dropout mask
    out = model(x, sizes)
    torch.nn.functional.cross_entropy(out, torch.arange(len(x)) % 5).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.eval()
    with torch.inference_mode():
        logits = model(x, sizes)
    return out.detach(), grads, logits


@pytest.mark.parametrize("name,kwargs", [("spp", {}), ("spp", dict(batch_norm=True)),
                                         ("spp", dict(batch_norm=True, norm_after_pool=True)), ("gap", {}),
                                         ("flatten", dict(input_size=64))])
def test_fast_paths_off_gives_plain_layers_with_the_same_results(name, kwargs):
    torch.manual_seed(0)
    fast = build_model(name, fast_paths=True, **kwargs).double().to(memory_format=torch.channels_last)
    plain = build_model(name, fast_paths=False, **kwargs).double().to(memory_format=torch.channels_last)
    plain.load_state_dict(fast.state_dict())
    assert all(type(block) is torch.nn.Sequential for block in plain.features)
    assert all(isinstance(block, FastConvBlock) for block in fast.features)
    if name == "flatten":
        x, sizes = torch.rand(3, 3, 64, 64, dtype=torch.float64) * 255, None
    else:
        x, sizes = pad_batch([torch.rand(3, h, w) * 255 for h, w in [(64, 70), (40, 64), (64, 33)]])
        x = x.double()
    for a, b in zip(_logits_and_grads(fast, x, sizes), _logits_and_grads(plain, x, sizes)):
        if isinstance(a, dict):
            for key in a:
                torch.testing.assert_close(a[key], b[key], msg=key)
        else:
            torch.testing.assert_close(a, b)


def test_the_switch_environment_setter_and_context(monkeypatch):
    monkeypatch.delenv("SPPNET_FAST_PATHS", raising=False)
    kernels.set_fast_paths(None)
    assert kernels.fast_paths_enabled() and build_model("spp").fast_paths
    monkeypatch.setenv("SPPNET_FAST_PATHS", "0")
    assert not kernels.fast_paths_enabled() and not build_model("spp").fast_paths
    with kernels.fast_paths(True):
        assert isinstance(build_model("spp").features[0], FastConvBlock)
    assert type(build_model("spp").features[0]) is torch.nn.Sequential
    kernels.set_fast_paths(True)
    try:
        assert build_model("spp").fast_paths and not build_model("spp", fast_paths=False).fast_paths
    finally:
        kernels.set_fast_paths(None)
    with pytest.raises(ValueError, match="fast paths must be True, False or None"):
        kernels.set_fast_paths("yes")


def test_the_old_names_in_models_still_work_with_a_warning():
    from sppnet import models

    with pytest.warns(DeprecationWarning, match="moved to sppnet.kernels"):
        assert models.max_pool_2x2 is max_pool_2x2
