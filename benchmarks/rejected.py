"""Alternatives to the default CPU kernels that were measured and rejected (README, Performance).

Each is timed against the default in the same process, one thread (the last also with all
threads), medians; the printed figure is the time ratio alternative / default (above 1: slower):

  * conv weight gradients from contiguous (NCHW) copies, data gradients channels-last;
  * conv weight gradients as 9 shifted matrix products over a padded map (no im2col);
  * conv backward with oneDNN off (PyTorch's own im2col convolution);
  * max pooling + ReLU as a custom autograd function in tensor ops (first-match mask, no
    zero-fill in backward), and the default pooling + ReLU through torch.compile;
  * max pooling + bias + ReLU as two torch.compile (inductor) kernels over channels-last maps,
    one pass each way (forward: output and a float code of the first maximum, or of a ReLU
    that cut the value; backward: the input gradient and the bias gradient from that code),
    over whole training steps;
  * the conv bias inside the convolution kernel, before the pooling (the default until
    2026-11-26; now it is added after the pooling), over whole training steps of the study
    network, the two models' steps alternating;
  * at inference, 2x2 max pooling through max_pool2d, which writes argmax indices nobody reads
    (the default until 2026-11-26; now two element-wise maxima, kernels.max_pool_2x2), per layer
    and over whole forward passes (batch 32 at 180x180, one 240x320 image);
  * a contiguous (NCHW) batch, as augmentation returns it, rescaled in its own layout and left
    to the first convolution to reorder (the default until 2026-11-26; now the rescaling writes
    it channels-last), over whole training steps;
  * the last conv's backward pass through oneDNN's dense kernels (the default until
    2026-11-26; now kernels.conv3x3_sparse_grad visits only the pixels that get a gradient from
    the max-pooling SPP head), over whole training steps.

    python benchmarks/rejected.py [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from sppnet.runtime import keep_freed_memory
from sppnet import kernels
from sppnet.kernels import max_pool_2x2
from sppnet.models import build_model

CL = torch.channels_last
LAYERS = [(3, 16, 180), (16, 32, 90), (32, 64, 45)]  # the study's conv blocks at 180x180


def median_ms(fn, repeats: int = 9) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def conv_backward(g, x, w, mask):
    return torch.ops.aten.convolution_backward(g, x, w, [w.shape[0]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)


def wgrad_shifted(x: torch.Tensor, g: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Weight gradient of a 3x3 same conv as 9 batched matmuls of shifted views of a padded map."""
    n, cin, h, w = x.shape
    cout = g.shape[1]
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (N, H+2, W+2, Cin)
    gp = F.pad(g.permute(0, 2, 3, 1), (0, 0, 0, 2, 0, 2))  # gradient at [0:H, 0:W], zeros around
    m = n * (h + 2) * (w + 2)
    blocks = -(-m // chunk)
    xf = torch.cat((xp.reshape(m, cin), xp.new_zeros(2 * (w + 2) + 2 + chunk, cin)))
    gf = torch.cat((gp.reshape(m, cout), gp.new_zeros(blocks * chunk - m, cout)))
    gc = gf.view(blocks, chunk, cout).transpose(1, 2)
    out = x.new_empty(3, 3, cout, cin)
    for ky in range(3):
        for kx in range(3):
            xc = xf.as_strided((blocks, chunk, cin), (chunk * cin, cin, 1), (ky * (w + 2) + kx) * cin)
            out[ky, kx] = torch.bmm(gc, xc).sum(0)
    return out.permute(2, 3, 0, 1)


class PoolReLU(torch.autograd.Function):
    """relu(max_pool2d(x, 2)) on channels-last x; backward writes each input gradient once."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        x6 = x[:, :, : h // 2 * 2, : w // 2 * 2].permute(0, 2, 3, 1).unflatten(1, (h // 2, 2)).unflatten(3, (w // 2, 2))
        out = x6.amax(dim=(2, 4))
        mask = x6 == out[:, :, None, :, None, :]
        taken = mask[:, :, 0, :, 0].clone()
        for a, b in ((0, 1), (1, 0), (1, 1)):  # keep the first maximum, as max_pool2d does
            m = mask[:, :, a, :, b]
            m &= ~taken
            taken |= m
        out.clamp_(min=0)
        ctx.save_for_backward(mask, out)
        ctx.shape = (h, w)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g):
        mask, out = ctx.saved_tensors
        h, w = ctx.shape
        gp = g.permute(0, 2, 3, 1) * (out > 0)
        full = torch.where(mask, gp[:, :, None, :, None, :], 0.0).flatten(3, 4).flatten(1, 2)
        full = F.pad(full, (0, 0, 0, w - full.shape[2], 0, h - full.shape[1]))
        return full.permute(0, 3, 1, 2)


def _pool_bias_relu_forward(x: torch.Tensor, bias: torch.Tensor):
    """x (N, H, W, C) contiguous -> relu(max_pool(x, 2) + bias) (N, H/2, W/2, C) and, per output
    value, the position of the first maximum in its window (0..3), or 4 where the ReLU cut it."""
    h, w = x.shape[1] // 2, x.shape[2] // 2
    x6 = x[:, : 2 * h, : 2 * w].unflatten(1, (h, 2)).unflatten(3, (w, 2))
    a, b, c, d = x6[:, :, 0, :, 0], x6[:, :, 0, :, 1], x6[:, :, 1, :, 0], x6[:, :, 1, :, 1]
    top = torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
    code = torch.where(a == top, 0.0, torch.where(b == top, 1.0, torch.where(c == top, 2.0, 3.0)))
    out = torch.relu(top + bias)
    return out, torch.where(out > 0, code, 4.0)  # a float code: inductor vectorises uint8 badly


def _pool_bias_relu_backward(code: torch.Tensor, g: torch.Tensor, height: int, width: int):
    n, h, w, c = g.shape
    gb = torch.where(code < 4, g, 0.0).sum((0, 1, 2))
    slot = (torch.arange(2).view(2, 1) * 2 + torch.arange(2).view(1, 2)).float().view(1, 1, 2, 1, 2, 1)
    gx = torch.where(code[:, :, None, :, None] == slot, g[:, :, None, :, None], 0.0).reshape(n, 2 * h, 2 * w, c)
    return F.pad(gx, (0, 0, 0, width - 2 * w, 0, height - 2 * h)), gb


class CompiledPoolBiasReLU(torch.autograd.Function):
    """relu(max_pool2d(x, 2) + bias) for channels-last x through two compiled kernels."""

    forward_kernel = backward_kernel = None

    @staticmethod
    def forward(ctx, x, bias):
        cls = CompiledPoolBiasReLU
        if cls.forward_kernel is None:
            cls.forward_kernel = torch.compile(_pool_bias_relu_forward, dynamic=True, fullgraph=True)
            cls.backward_kernel = torch.compile(_pool_bias_relu_backward, dynamic=True, fullgraph=True)
        out, code = cls.forward_kernel(x.permute(0, 2, 3, 1), bias)
        ctx.save_for_backward(code)
        ctx.size = tuple(x.shape[-2:])
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g):
        (code,) = ctx.saved_tensors
        gx, gb = CompiledPoolBiasReLU.backward_kernel(code, g.permute(0, 2, 3, 1).contiguous(), *ctx.size)
        return gx.permute(0, 3, 1, 2), gb


def compiled_pool_ratio() -> float:
    """Step time ratio with each block's pooling, bias and ReLU as CompiledPoolBiasReLU
    (compiled before timing; both models keep the sparse last-conv gradient)."""

    def block_forward(block, x):
        if block.sparse_grad:
            x = kernels.conv3x3_sparse_grad(x, block[0].weight)
        else:
            x = F.conv2d(x, block[0].weight, None, 1, 1)
        return CompiledPoolBiasReLU.apply(x, block[0].bias)

    def alter(model):
        for block in model.features:
            block.forward = block_forward.__get__(block)

    x, y = study_batch(), torch.arange(32) % 5
    grads = []
    for changed in (False, True):  # the same gradients (up to the bias sums' order) before timing
        torch.manual_seed(0)
        model = build_model("spp").to(memory_format=CL)
        if changed:
            alter(model)
        F.cross_entropy(model(x), y).backward()  # same seed, same dropout mask
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    return step_ratio(alter, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    args = parser.parse_args()
    keep_freed_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; time ratios alternative / default (batch 32)")
    for cin, cout, size in LAYERS:
        x = torch.randn(32, cin, size, size).contiguous(memory_format=CL)
        w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=CL)
        g = torch.randn(32, cout, size, size).contiguous(memory_format=CL)
        dgrad = cin != 3  # the first block needs no input gradient
        # the conv's bias is added after the pooling, so its gradient is not the conv's to compute
        default = median_ms(lambda: conv_backward(g, x, w, [dgrad, True, False]))

        def nchw_wgrad():
            if dgrad:
                conv_backward(g, x, w, [True, False, False])
            conv_backward(g.contiguous(), x.contiguous(), w.contiguous(), [False, True, False])

        def no_onednn():
            torch.backends.mkldnn.enabled = False
            try:
                conv_backward(g, x, w, [dgrad, True, False])
            finally:
                torch.backends.mkldnn.enabled = True

        plain = median_ms(lambda: conv_backward(g, x, w, [False, True, False]))
        print(f"conv {cin}->{cout} at {size}: NCHW weight gradients {median_ms(nchw_wgrad) / default:.2f}, "
              f"oneDNN off {median_ms(no_onednn) / default:.2f}, "
              f"shifted-matmul weight gradient {median_ms(lambda: wgrad_shifted(x, g)) / plain:.2f}")

    def pool_relu(x):
        return torch.relu(F.max_pool2d(x, 2))

    compiled = None if args.no_compile else torch.compile(pool_relu, dynamic=False)
    for _, channels, size in LAYERS:
        x = torch.randn(32, channels, size, size).contiguous(memory_format=CL).requires_grad_()

        def run(fn):
            def step():
                y = fn(x)
                y.backward(torch.ones_like(y))
                x.grad = None
            return median_ms(step)

        default = run(pool_relu)
        row = f"pool+ReLU {channels}x{size}x{size}: custom function {run(PoolReLU.apply) / default:.2f}"
        if compiled is not None:
            row += f", torch.compile {run(compiled) / default:.2f}"
        print(row)

    with torch.inference_mode():
        for _, channels, size in LAYERS:
            row = []
            for name, fmt in (("channels-last", CL), ("contiguous", torch.contiguous_format)):
                x = torch.randn(32, channels, size, size).contiguous(memory_format=fmt)
                ratio = median_ms(lambda: F.max_pool2d(x, 2)) / median_ms(lambda: max_pool_2x2(x))
                row.append(f"{name} {ratio:.2f}")
            print(f"inference max pooling {channels}x{size}x{size} through max_pool2d (indices): {', '.join(row)}")

    torch.set_num_threads(threads)
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        label = f"({n} thread{'s' if n > 1 else ''})"
        print(f"study training step {label}, conv bias inside the convolution: {bias_in_conv_ratio():.2f}")
        print(f"study training step {label}, contiguous batch reordered by the first conv: "
              f"{contiguous_input_ratio():.2f}")
        print(f"study training step {label}, dense backward for the last conv: {dense_last_conv_ratio():.2f}")
        if not args.no_compile:
            print(f"study training step {label}, pooling + bias + ReLU as two compiled kernels: "
                  f"{compiled_pool_ratio():.2f}")
        batch, single = pooling_with_indices_ratios()
        print(f"inference {label} with max_pool2d (indices): batch 32 at 180x180 {batch:.2f}, "
              f"one 240x320 image {single:.2f}")


def study_batch() -> torch.Tensor:
    """32 random images at 180x180, float 0..255, channels-last."""
    return torch.rand(32, 3, 180, 180).mul(255).contiguous(memory_format=CL)


def declared_order(model) -> None:
    """Runs each block's layers as declared: conv(+bias), max_pool2d (with indices), ReLU."""
    for block in model.features:
        block.forward = nn.Sequential.forward.__get__(block)


def dense_last_conv(model) -> None:
    """The last conv's backward pass through oneDNN's dense kernels."""
    model.features[-1].sparse_grad = False


def step_ratio(alter, x: torch.Tensor, steps: int = 9, common=None) -> float:
    """Median over training steps of the study network of (step time of a model changed by
    ``alter(model)``) / (default step time), the two models' steps alternating, on batch ``x``;
    ``common(model)``, when given, changes both models first."""

    def make(changed: bool):
        torch.manual_seed(0)
        model = build_model("spp").to(memory_format=CL)
        if common is not None:
            common(model)
        if changed:
            alter(model)
        return model, torch.optim.Adam(model.parameters(), 1e-3)

    y = torch.arange(x.shape[0]) % 5

    def step(model, optimizer) -> float:
        t0 = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    default, alternative = make(False), make(True)
    step(*default), step(*alternative)
    return statistics.median(step(*alternative) / step(*default) for _ in range(steps))


def bias_in_conv_ratio() -> float:
    """Step time ratio with the bias in the conv kernel (the plain Sequential order), both
    models with the dense backward for the last conv (the plain order has no sparse one)."""
    return step_ratio(declared_order, study_batch(), common=dense_last_conv)


def contiguous_input_ratio() -> float:
    """Step time ratio when a contiguous batch reaches the first conv as it is (default: the
    model's rescaling writes it channels-last)."""

    def alter(model):
        model.fast_paths = False  # only the rescale reads it after the build

    return step_ratio(alter, study_batch().contiguous())  # contiguous, as grid_sample returns


def dense_last_conv_ratio() -> float:
    """Step time ratio with the last conv's backward through oneDNN's dense kernels (default:
    only over the pixels that the SPP head sends a gradient to). Random pixels and an untrained
    network, as in the other rows: there that gradient reaches about a quarter of the conv
    map's pixels; after 20 epochs on the flowers, about a seventh."""
    return step_ratio(dense_last_conv, study_batch())


def pooling_with_indices_ratios(repeats: int = 15) -> tuple[float, float]:
    """Inference time ratios (max_pool2d with indices) / (default max_pool_2x2), whole forward
    passes alternating, for a batch of 32 at 180x180 and one 240x320 image."""
    torch.manual_seed(0)
    default = build_model("spp").to(memory_format=CL).eval()
    plain = build_model("spp").to(memory_format=CL).eval()
    plain.load_state_dict(default.state_dict())
    declared_order(plain)
    ratios = []
    with torch.inference_mode():
        for shape in ((32, 3, 180, 180), (1, 3, 240, 320)):
            x = torch.rand(shape).mul(255).contiguous(memory_format=CL)
            torch.testing.assert_close(default(x), plain(x))
            ratios.append(statistics.median(median_ms(lambda: plain(x), 1) / median_ms(lambda: default(x), 1)
                                            for _ in range(repeats)))
    return ratios[0], ratios[1]


if __name__ == "__main__":
    main()
