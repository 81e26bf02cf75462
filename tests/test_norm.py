"""BatchNorm between conv and activation: the fused training path (statistics from the conv's epilogue, the
normalised tensor never stored, applied by each consumer while reading) and the eval path (folded), against
float64 eager PyTorch; running statistics like nn.BatchNorm2d; activation memory."""
import collections
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import (DEVICE, MODEL_TOLERANCE_FACTOR, assert_close, check_against_float64, compare_step,
                            make_tensor, model_triplet, record_launches)
import fused_unet
from fused_unet import eager, functional as FF, nn as fnn
from fused_unet.kernels import configs, norm
from fused_unet.static_plan import record_step
from fused_unet.utils import saved_activation_bytes


def _bn_act(y, gamma, beta, activation, slope):
    return eager.activate(F.batch_norm(y, None, None, gamma, beta, training=True), activation, slope)


def _params(*shapes, dtype=torch.float32):
    return [make_tensor(s, dtype, requires_grad=True, scale=0.5) for s in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation,slope", [("relu", 0.01), ("leaky_relu", 0.2), (None, 0.01), ("silu", 0.01),
                                              ("gelu_tanh", 0.01)])
def test_pending_norm_read_by_every_consumer_matches_float64(activation, slope, dtype):
    x = make_tensor((2, 3, 7, 9), dtype, requires_grad=True)
    w1, w2, wt = _params((5, 3, 3, 3), (4, 5, 3, 3), (5, 3, 2, 2), dtype=dtype)
    gamma = (torch.rand(5, device=DEVICE) + 0.5).to(dtype).requires_grad_()
    beta = make_tensor((5,), dtype, requires_grad=True)

    def fused(x, w1, gamma, beta, w2, wt):
        z = FF.batch_norm(*FF.conv2d_stats(x, w1), gamma, beta, activation=activation, negative_slope=slope)
        return (FF.conv2d(z, w2, None, "relu"), FF.max_pool2x2(z), FF.max_pool(z, 3), FF.conv_transpose2x2(z, wt),
                z.materialize())

    def reference(x, w1, gamma, beta, w2, wt):
        z = _bn_act(F.conv2d(x, w1, padding=1), gamma, beta, activation, slope)
        return (eager.conv2d(z, w2, None, "relu"), F.max_pool2d(z, 2), F.max_pool2d(z, 3, 2, 1),
                eager.conv_transpose2x2(z, wt), z)

    # fp16: a batch norm turns near-zero ReLU inputs into sign flips of whole gradient paths, in PyTorch as here.
    check_against_float64(fused, reference, [x, w1, gamma, beta, w2, wt], dtype, baseline=dtype != torch.float32)


@pytest.mark.parametrize("up_mode", [None, "bilinear"])
@pytest.mark.parametrize("up_first", [True, False])
def test_concatenation_of_two_pending_norms_matches_float64(up_mode, up_first):
    up0 = make_tensor((2, 4, 3, 4) if up_mode else (2, 4, 6, 8), requires_grad=True)
    skip0 = make_tensor((2, 3, 7, 9), requires_grad=True)
    w_up, w_skip, w_cat, b_cat = _params((4, 4, 1, 1), (3, 3, 1, 1), (5, 7, 3, 3), (5,))

    def fused(up0, skip0, w_up, w_skip, w_cat, b_cat):
        up = FF.batch_norm(*FF.conv2d_stats(up0, w_up), activation="leaky_relu", negative_slope=0.1)
        skip = FF.batch_norm(*FF.conv2d_stats(skip0, w_skip), activation="leaky_relu", negative_slope=0.1)
        y, stats = FF.concat_conv2d_stats(up, skip, w_cat, b_cat, up_mode=up_mode, up_first=up_first)
        return FF.batch_norm(y, stats, activation="relu").materialize()

    def reference(up0, skip0, w_up, w_skip, w_cat, b_cat):
        up = _bn_act(F.conv2d(up0, w_up), None, None, "leaky_relu", 0.1)
        skip = _bn_act(F.conv2d(skip0, w_skip), None, None, "leaky_relu", 0.1)
        y = eager.concat_conv2d(up, skip, w_cat, b_cat, None, 0.0, up_mode, False, up_first)
        return _bn_act(y, None, None, "relu", 0.0)

    check_against_float64(fused, reference, [up0, skip0, w_up, w_skip, w_cat, b_cat], torch.float32)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_pending_norm_padding_comes_from_the_loads(norm):
    # The GEMM kernels zero a pending norm's padding taps without a select after the normalisation (a per-channel
    # shift gated per row by a loaded 1.0, per-sample tables loaded under the tile's mask; kernels.conv._norm_affine):
    # a 5x7 image at batch 2 puts padding taps on every side and rows of two images in one tile; 20 channels run
    # the channel loop with a channel mask, not the few-channel one; the leaky slope is a constexpr.
    x = make_tensor((2, 6, 5, 7), requires_grad=True)
    w1, w2, wt = _params((20, 6, 3, 3), (8, 20, 3, 3), (20, 4, 2, 2))
    gamma = (torch.rand(20, device=DEVICE) + 0.5).requires_grad_()
    beta = make_tensor((20,), requires_grad=True)

    def fused(x, w1, gamma, beta, w2, wt):
        if norm == "batch":
            z = FF.batch_norm(*FF.conv2d_stats(x, w1), gamma, beta, activation="leaky_relu", negative_slope=0.1)
        else:
            z = FF.group_norm(FF.conv2d(x, w1), 4, gamma, beta, activation="leaky_relu", negative_slope=0.1)
        return FF.conv2d(z, w2, None, "relu"), FF.conv_transpose2x2(z, wt)

    def reference(x, w1, gamma, beta, w2, wt):
        y = F.conv2d(x, w1, padding=1)
        y = F.batch_norm(y, None, None, gamma, beta, training=True) if norm == "batch" else \
            F.group_norm(y, 4, gamma, beta)
        z = F.leaky_relu(y, 0.1)
        return eager.conv2d(z, w2, None, "relu"), eager.conv_transpose2x2(z, wt)

    check_against_float64(fused, reference, [x, w1, gamma, beta, w2, wt], torch.float32)


def _combined_in_float64(parts, groups):
    """(mean, biased var) [N, groups] of per-tile parts [N, tiles, 3, C], combined at once in float64."""
    batch, tiles, _, c = parts.shape
    p = parts.double().view(batch, tiles, 3, groups, c // groups).permute(0, 3, 2, 1, 4).reshape(batch, groups, 3, -1)
    count, mean_t, m2_t = p.unbind(2)
    n = count.sum(-1, keepdim=True)
    mean = (count * mean_t).sum(-1, keepdim=True) / n
    return mean.squeeze(-1), ((m2_t + count * (mean_t - mean) ** 2).sum(-1) / n.squeeze(-1))


@pytest.mark.parametrize("batch,tiles,channels,groups", [
    (1, 7, 5, 5),  # a batch norm's parts (N = 1)
    (1, 2 * configs.TILES_PER_SPLIT + 52, 8, 8),  # more tiles than one split: two launches
    (3, 4, 12, 4),  # group norm, 3 channels per group
    (2, 3, 96, 32), (1, 1, 70, 70)])  # diffusion-style groups; instance norm of one tile
def test_norm_statistics_match_float64(batch, tiles, channels, groups):
    torch.manual_seed(0)
    count = torch.randint(0, 65, (batch, tiles, 1, channels), device=DEVICE).float()
    count[:, 0] += 1  # an empty tile (a padded row of the conv's epilogue) contributes nothing
    mean = (torch.randn(batch, tiles, 1, channels, device=DEVICE) + 3) * count.gt(0)
    parts = torch.cat([count, mean, torch.rand(batch, tiles, 1, channels, device=DEVICE) * count], 2)
    gamma, beta = torch.rand(channels, device=DEVICE) + 0.5, torch.randn(channels, device=DEVICE)
    scale, shift, stats = norm.norm_statistics(parts, groups, gamma, beta, 1e-5)
    ref_mean, ref_var = _combined_in_float64(parts, groups)
    torch.testing.assert_close(stats[:, 0], ref_mean, atol=0, rtol=1e-13)
    torch.testing.assert_close(stats[:, 1], ref_var, atol=0, rtol=1e-13)
    invstd = torch.rsqrt(ref_var + 1e-5).repeat_interleave(channels // groups, 1)
    torch.testing.assert_close(stats[:, 2], torch.rsqrt(ref_var + 1e-5), atol=0, rtol=1e-13)
    torch.testing.assert_close(scale, (gamma.double() * invstd).float(), atol=0, rtol=1e-6)
    ref_shift = beta.double() - ref_mean.repeat_interleave(channels // groups, 1) * gamma.double() * invstd
    torch.testing.assert_close(shift, ref_shift.float(), atol=1e-6, rtol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip((scale, shift, stats),
                                                 norm.norm_statistics(parts, groups, gamma, beta, 1e-5)))


@pytest.mark.parametrize("tiles", [7, 2 * configs.TILES_PER_SPLIT + 52])
def test_norm_statistics_update_a_batch_norms_running_statistics(tiles):
    # In the launch that finalises (the second of a split): torch.nn's update, the variance unbiased.
    torch.manual_seed(0)
    count = torch.randint(1, 65, (1, tiles, 1, 6), device=DEVICE).float()
    parts = torch.cat([count, torch.randn(1, tiles, 1, 6, device=DEVICE), torch.rand(1, tiles, 1, 6, device=DEVICE)
                       * count], 2)
    running_mean, running_var = make_tensor((6,)), torch.rand(6, device=DEVICE) + 0.5
    expected_mean, expected_var = running_mean.double().clone(), running_var.double().clone()
    _, _, stats = norm.norm_statistics(parts, 6, torch.ones(6, device=DEVICE), torch.zeros(6, device=DEVICE), 1e-5,
                                       running_mean, running_var, 0.3)
    n = count.sum((0, 1, 2)).double()
    torch.testing.assert_close(running_mean.double(), 0.7 * expected_mean + 0.3 * stats[0, 0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(running_var.double(), 0.7 * expected_var + 0.3 * stats[0, 1] * n / (n - 1),
                               atol=1e-6, rtol=1e-6)


def test_norm_statistics_refuse_running_statistics_they_cannot_update():
    parts = torch.ones(2, 1, 3, 4, device=DEVICE)
    ones = torch.ones(4, device=DEVICE)
    with pytest.raises(ValueError, match="a batch norm's running statistics need one row of statistics, got 2"):
        norm.norm_statistics(parts, 4, ones, ones, 1e-5, ones.clone(), ones.clone(), 0.1)
    with pytest.raises(ValueError, match="running statistics of a per-image norm are an instance norm's: groups must "
                                         "be the 4 channels, got 2"):
        norm.norm_statistics(parts, 2, ones, ones, 1e-5, ones[:2].clone(), ones[:2].clone(), 0.1, images=[2, 30])
    with pytest.raises(ValueError, match=r"per-image workspace \[rows, 3, C\] needs images=\(N, pixels per image\)"):
        norm.norm_statistics(parts[0], 4, ones, ones, 1e-5)
    with pytest.raises(ValueError, match=r"running_var must be a contiguous tensor of shape \[4\].*got \(8,\)"):
        norm.norm_statistics(parts[:1], 4, ones, ones, 1e-5, ones.clone(), torch.ones(8, device=DEVICE), 0.1)
    with pytest.raises(TypeError, match="running_var must be a floating-point tensor, got NoneType"):
        norm.norm_statistics(parts[:1], 4, ones, ones, 1e-5, ones.clone(), None, 0.1)


@pytest.mark.parametrize("batch,channels,groups", [(1, 6, 6), (3, 6, 6), (2, 12, 4), (2, 96, 32)])
def test_norm_statistics_backward_matches_float64_autograd(batch, channels, groups):
    # dL/dy through a norm's statistics (as a * y + b), dL/dgamma, dL/dbeta for L = <gs, scale> + <gb, shift>.
    torch.manual_seed(0)
    y = make_tensor((batch, channels, 5, 7))
    gamma, beta = torch.rand(channels, device=DEVICE) + 0.5, make_tensor((channels,))
    grad_scale, grad_shift = make_tensor((batch, channels)), make_tensor((batch, channels))
    _, _, stats = norm.norm_statistics(norm.channel_statistics(y), groups, gamma, beta, 1e-5)
    a, b, gamma_grad, beta_grad = norm.norm_statistics_backward(grad_scale, grad_shift, stats, gamma,
                                                                5 * 7 * channels // groups)
    yd, gd, bd = (t.double().requires_grad_() for t in (y, gamma, beta))
    grouped = yd.view(batch, groups, -1)
    invstd = torch.rsqrt(grouped.var(2, unbiased=False) + 1e-5).repeat_interleave(channels // groups, 1)
    scale = gd * invstd
    shift = bd - grouped.mean(2).repeat_interleave(channels // groups, 1) * scale
    ref = torch.autograd.grad((scale * grad_scale.double() + shift * grad_shift.double()).sum(), (yd, gd, bd))
    torch.testing.assert_close(a[:, :, None, None].double() * yd.detach() + b[:, :, None, None].double(), ref[0],
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gamma_grad.double(), ref[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(beta_grad.double(), ref[2], atol=1e-6, rtol=1e-6)


class _ActivationOps(TorchDispatchMode):
    """Counts the element-wise aten ops whose output is a whole activation of a batch of ``batch`` images."""

    def __init__(self, batch):
        super().__init__()
        self.batch, self.count = batch, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.add, torch.ops.aten.add_, torch.ops.aten.mul, torch.ops.aten.sub,
                                   torch.ops.aten._to_copy) and out.dim() == 4 and out.shape[0] == self.batch:
            self.count += 1
        return out


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_a_norms_backward_leaves_no_element_wise_op_on_activations_to_pytorch(norm):
    # The statistics' term a * y + b is added to the consumers' dL/dy in one kernel (it was 4 aten ops and one
    # autograd sum per norm). Left: autograd's sum of the two gradients of each encoder level's pending output (its
    # pool and the decoder's concatenating conv read it; without a norm one conv+pool kernel writes both).
    counts = {}
    for option in (None, norm):
        model = fused_unet.UNet(3, 2, base_channels=4, depth=2, norm=option, norm_groups=2).to("meta", torch.bfloat16)
        x = torch.empty(3, 3, 12, 12, device="meta", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        with _ActivationOps(3) as ops:
            record_step(model, x, "train")
        counts[option] = ops.count
    assert counts[norm] == counts[None] + 2


class _ZeroFills(TorchDispatchMode):
    """Counts the shapes of the tensors aten fills with zeros (2-D and up)."""

    def __init__(self):
        super().__init__()
        self.shapes = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.zeros, torch.ops.aten.zero_, torch.ops.aten.fill_) and out.dim() >= 2:
            self.shapes[tuple(out.shape)] += 1
        return out


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_a_norms_workspaces_are_not_zero_filled(norm):
    # The conv epilogue's statistics rows ([tiles, 3, C]; autograd used to fill their unused gradient) and the
    # consumers' dL/dscale, dL/dshift rows ([N, tiles, 2, C]) are written whole by their kernels: no zero fill beyond
    # the plain UNet's (the weight-grad's split workspaces) but [N, C]-sized ones.
    fills = {}
    for option in (None, norm):
        model = fused_unet.UNet(3, 2, base_channels=4, depth=2, norm=option).to("meta", torch.bfloat16)
        x = torch.empty(3, 3, 12, 12, device="meta", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        with _ZeroFills() as zeros:
            record_step(model, x, "train")
        fills[option] = zeros.shapes
    assert all(math.prod(shape) <= 3 * 16 for shape in fills[norm] - fills[None]), fills[norm] - fills[None]


def test_batch_statistics_are_deterministic():
    x, w = make_tensor((3, 8, 19, 21)), make_tensor((12, 8, 3, 3))
    first, second = FF.conv2d_stats(x, w)[1], FF.conv2d_stats(x, w)[1]
    assert torch.equal(first, second)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("module", ["conv", "pool", "concat"])
def test_module_running_statistics_follow_batchnorm2d(module, momentum):
    torch.manual_seed(0)
    kwargs = dict(norm="batch", momentum=momentum, activation="relu", bias=False, device=DEVICE)
    fused = {"conv": fnn.Conv2d(3, 4, 3, padding=1, **kwargs), "pool": fnn.Conv2dReLUPool(3, 4, 3, padding=1, **kwargs),
             "concat": fnn.UpConcatConv2d(3, 4, up_mode="nearest", **kwargs)}[module]
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False, device=DEVICE)
    bn = nn.BatchNorm2d(4, momentum=momentum, device=DEVICE)
    conv.weight.data.copy_(fused.weight)
    assert list(fused.state_dict()) == ["weight"] + [f"bn.{k}" for k in bn.state_dict()]
    for step in range(3):
        up, skip = make_tensor((2, 2, 3, 4)), make_tensor((2, 1, 6, 8))
        x = torch.cat([F.interpolate(up, scale_factor=2), skip], 1) if module == "concat" else make_tensor((2, 3, 6, 8))
        out = fused(up, skip) if module == "concat" else fused(x)
        ref = F.relu(bn(conv(x)))
        out = out[0] if module == "pool" else out
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fused.bn, name), getattr(bn, name), atol=1e-6, rtol=1e-5)
    fused.eval()
    bn.eval()
    x = make_tensor((2, 3, 6, 8))
    if module != "concat":
        out = fused(x)
        torch.testing.assert_close(out[0] if module == "pool" else out, F.relu(bn(conv(x))), atol=1e-5, rtol=1e-5)


def test_eval_mode_folds_the_norm_exactly_with_gradients():
    torch.manual_seed(0)
    fused = fnn.Conv2d(3, 4, 3, padding=1, norm="batch", activation="relu", device=DEVICE)
    with torch.no_grad():
        fused.bn.running_mean.uniform_(-1, 1)
        fused.bn.running_var.uniform_(0.5, 2)
        fused.bn.weight.uniform_(0.5, 1.5)
    fused.eval()
    reference = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).to(DEVICE).double().eval()
    reference[0].load_state_dict({k: v for k, v in fused.state_dict().items() if not k.startswith("bn.")})
    reference[1].load_state_dict({k[3:]: v for k, v in fused.state_dict().items() if k.startswith("bn.")})
    x = make_tensor((2, 3, 5, 6))
    out = fused(x)
    out.sum().backward()
    ref = reference(x.double())
    ref.sum().backward()
    assert_close(out, ref, torch.float32, "folded output")
    assert_close(fused.weight.grad, reference[0].weight.grad, torch.float32, "grad weight")
    assert_close(fused.bn.weight.grad, reference[1].weight.grad, torch.float32, "grad bn.weight")


def test_track_running_stats_false_always_uses_batch_statistics():
    fused = fnn.Conv2d(3, 4, 3, padding=1, norm="batch", device=DEVICE)
    fused.bn.track_running_stats = False
    fused.bn.running_mean = fused.bn.running_var = None
    fused.eval()
    x = make_tensor((2, 3, 5, 5))
    ref = F.batch_norm(F.conv2d(x, fused.weight, fused.bias, padding=1), None, None, fused.bn.weight, fused.bn.bias,
                       training=True)
    torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.whole_model
@pytest.mark.parametrize("up_mode,dtype", [("transpose", torch.float32), ("bilinear", torch.float32),
                                           ("bilinear", torch.float16)])
def test_unet_with_batch_norm_matches_reference_over_training_steps(up_mode, dtype):
    torch.manual_seed(0)
    kwargs = dict(in_channels=3, num_classes=2, base_channels=4, depth=2, up_mode=up_mode, norm="batch")
    models = model_triplet(fused_unet.UNet(**kwargs).to(DEVICE, dtype), fused_unet.ReferenceUNet(**kwargs).to(DEVICE))
    assert list(models[0].state_dict()) == list(models[1].state_dict())
    for step in range(2):
        x, grad = torch.randn(2, 3, 12, 10, device=DEVICE), torch.randn(2, 2, 12, 10, device=DEVICE)
        # A tiny fp16 batch-norm U-Net's gradients are noise, PyTorch's own included (measured: 10-35% L2 error
        # against float64 for eager fp16): fp16 gradients are checked op by op (test_pending_norm_...), not here.
        compare_step(models, x, grad, f"step {step} ", check_grads=dtype == torch.float32)
    model, reference, _ = models
    fused_state, ref_state = model.state_dict(), reference.state_dict()
    for key in fused_state:
        if "running" in key or "num_batches" in key:
            assert_close(fused_state[key], ref_state[key], dtype, key, MODEL_TOLERANCE_FACTOR)
    model.eval()
    reference.eval()
    x = torch.randn(1, 3, 12, 10, device=DEVICE)
    assert_close(model(x.to(dtype)), reference(x.double()), dtype, "eval logits", MODEL_TOLERANCE_FACTOR)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_batch_norm_unet_saves_at_most_half_of_eager(dtype):
    kwargs = dict(in_channels=3, num_classes=2, base_channels=64, depth=4, norm="batch")
    x = torch.empty(2, 3, 256, 256, device="meta", dtype=dtype, requires_grad=True)
    fused = saved_activation_bytes(fused_unet.UNet(**kwargs).to("meta", dtype), x)
    reference = saved_activation_bytes(fused_unet.ReferenceUNet(**kwargs).to("meta", dtype), x)
    assert fused <= 0.5 * reference, f"fused U-Net saves {fused / reference:.3f}x the eager model's activations"


# A pending residual: (its norm, its activation); the others are a tensor's layout, or no residual.
_PENDING_RESIDUALS = [("batch", None), ("group", None), ("batch", "prelu"), ("group", "silu")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("norm,activation,out_activation,residual", [
    ("batch", None, "relu", "channels_last"), ("batch", None, "leaky_relu", "strided"),
    ("group", "silu", None, "contiguous"), ("batch", "relu", "relu", ("batch", None)),
    ("group", None, "leaky_relu", ("group", None)), ("group", "silu", "relu", ("batch", "prelu")),
    ("batch", "prelu", None, ("group", "silu")), ("group", None, None, None)])
def test_normalized_add_matches_float64(monkeypatch, norm, activation, out_activation, residual, dtype):
    # A ResNet block's end in training, relu(bn2(conv2(h)) + identity), in one kernel after the fused conv: the
    # residual any strides or itself a pending norm (the downsample branch's bn(conv1x1(x)), of either kind of
    # table, with or without an activation), normalised as the kernel reads it; batch 1, odd sizes.
    x = make_tensor((1, 3, 7, 5), dtype, requires_grad=True)
    w, w_res = _params((6, 3, 3, 3), (6, 3, 1, 1), dtype=dtype)
    pending_residual = isinstance(residual, tuple)
    w_res.requires_grad_(pending_residual)
    gamma = (torch.rand(6, device=DEVICE) + 0.5).to(dtype).requires_grad_()
    beta = make_tensor((6,), dtype, requires_grad=True)
    slopes = (torch.rand(6, device=DEVICE) * 0.5).to(dtype)  # the PReLUs'
    slopes.requires_grad_("prelu" in (activation, pending_residual and residual[1]))
    tensor_residual = residual is not None and not pending_residual
    skip = make_tensor((1, 6, 7, 5), dtype, residual if tensor_residual else "contiguous",
                       requires_grad=tensor_residual)

    def pending(y, kind, gamma, beta, act, slopes):
        slope = slopes if act == "prelu" else 0.1
        if kind == "batch":
            return FF.batch_norm(*y, gamma, beta, activation=act, negative_slope=slope)
        return FF.group_norm(y[0], 2, gamma, beta, activation=act, negative_slope=slope)

    def fused(x, w, w_res, gamma, beta, slopes, skip):
        z = pending(FF.conv2d_stats(x, w), norm, gamma, beta, activation, slopes)
        res = pending(FF.conv2d_stats(x, w_res, padding=0), *residual[:1], None, beta, residual[1], slopes) \
            if pending_residual else skip if residual else None
        return FF.normalized_add(z, res, out_activation, 0.2)

    def normed(y, kind, gamma, beta, act, slopes):
        y = F.batch_norm(y, None, None, gamma, beta, training=True) if kind == "batch" else \
            F.group_norm(y, 2, gamma, beta)
        return F.prelu(y, slopes) if act == "prelu" else eager.activate(y, act, 0.1)

    def reference(x, w, w_res, gamma, beta, slopes, skip):
        z = normed(F.conv2d(x, w, padding=1), norm, gamma, beta, activation, slopes)
        res = normed(F.conv2d(x, w_res), *residual[:1], None, beta, residual[1], slopes) if pending_residual else \
            skip if residual else None
        return z if res is None else eager.activate(z + res, out_activation, 0.2)

    seen = record_launches(monkeypatch)
    out = check_against_float64(fused, reference, [x, w, w_res, gamma, beta, slopes, skip], dtype,
                                baseline=dtype != torch.float32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    if pending_residual:  # the residual's norm read by the add's kernel, forward and backward: never made a tensor
        assert sorted(name for name, flags in seen if flags.get("RES_NORM")) == ["batch_norm_act_backward",
                                                                                   "pending_norm"]
        assert not any(name == "pending_norm" and not flags["RESIDUAL"] for name, flags in seen)


@pytest.mark.parametrize("norm,layout", [("batch", "strided"), ("group", "channels_last"), ("instance", "contiguous")])
def test_norm_of_any_tensor_matches_float64(norm, layout):
    # A norm whose input no fused conv produced (a diffusion block's GroupNorm of its input, a pre-activation
    # block's BatchNorm): statistics by the reduction kernel, pending into a conv, made a tensor for the rest.
    x = make_tensor((1, 4, 7, 5), layout=layout, requires_grad=True)
    (w,) = _params((3, 4, 3, 3))
    gamma = (torch.rand(4, device=DEVICE) + 0.5).requires_grad_()
    beta = make_tensor((4,), requires_grad=True)

    def fused(x, w, gamma, beta):
        if norm == "batch":
            z = FF.batch_norm(x, None, gamma, beta, activation="silu")
        elif norm == "group":
            z = FF.group_norm(x, 2, gamma, beta, activation="silu")
        else:
            z = FF.instance_norm(x, gamma, beta, activation="silu")
        return FF.conv2d(z, w), z.materialize()

    def reference(x, w, gamma, beta):
        if norm == "batch":
            z = F.batch_norm(x, None, None, gamma, beta, training=True)
        elif norm == "group":
            z = F.group_norm(x, 2, gamma, beta)
        else:
            z = F.instance_norm(x, weight=gamma, bias=beta)
        z = F.silu(z)
        return F.conv2d(z, w, padding=1), z

    *_, z = check_against_float64(fused, reference, [x, w, gamma, beta], torch.float32)
    assert z.stride() == torch.empty_like(x, memory_format=torch.preserve_format).stride()  # eager keeps it


@pytest.mark.parametrize("module", [nn.BatchNorm2d, nn.InstanceNorm2d])
def test_norm_act_of_any_tensor_keeps_running_statistics(module):
    torch.manual_seed(0)
    bn = module(4, affine=True, track_running_stats=True).to(DEVICE)
    ref = module(4, affine=True, track_running_stats=True).to(DEVICE)
    x = make_tensor((2, 4, 5, 6))
    for mode in (True, False):
        bn.train(mode), ref.train(mode)
        assert_close(fnn.norm_act(x, bn, "leaky_relu", 0.1), F.leaky_relu(ref(x), 0.1), torch.float32)
    assert_close(bn.running_mean, ref.running_mean, torch.float32)
    assert_close(bn.running_var, ref.running_var, torch.float32)


def test_bad_normalized_add_is_rejected():
    y, stats = FF.conv2d_stats(make_tensor((1, 3, 4, 4)), make_tensor((2, 3, 3, 3)))
    z = FF.batch_norm(y, stats)
    with pytest.raises(TypeError, match="x must be a Normalized"):
        FF.normalized_add(y, y)
    with pytest.raises(ValueError, match="needs a residual"):
        FF.normalized_add(z, None, "relu")
    with pytest.raises(ValueError, match="out_activation 'relu' needs a residual"):
        norm.pending_norm(y, z.scale, z.shift, out_activation="relu")  # the launcher refuses it too
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(1, 2, 4, 4\)"):
        FF.normalized_add(z, make_tensor((1, 2, 4, 3)), "relu")
    with pytest.raises(TypeError, match="residual has dtype torch.float16 but x.y has torch.float32"):
        FF.normalized_add(z, make_tensor((1, 2, 4, 4), torch.float16), "relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        FF.normalized_add(z, y, "tanh")


def test_bad_pending_norm_is_rejected():
    y = make_tensor((1, 3, 4, 4))
    bad = FF.Normalized(y, torch.ones(2, device=DEVICE), torch.zeros(3, device=DEVICE), "relu")
    with pytest.raises(ValueError, match=r"x.scale must be a float32 tensor of shape \[3\]"):
        FF.conv2d(bad, make_tensor((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="norm must be one of"):
        fnn.Conv2d(3, 4, 3, norm="layer")


@pytest.mark.parametrize("momentum", [0.1, None])
def test_eager_backend_batch_norm_matches_batchnorm2d(momentum):
    torch.manual_seed(0)
    fused = fnn.Conv2dReLUPool(3, 4, 3, padding=1, norm="batch", momentum=momentum, bias=False, device=DEVICE)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False, device=DEVICE)
    bn = nn.BatchNorm2d(4, momentum=momentum, device=DEVICE)
    conv.weight.data.copy_(fused.weight)
    with fused_unet.force_eager():
        for _ in range(2):
            x = make_tensor((2, 3, 6, 8))
            y, pooled = fused(x)
            ref = F.relu(bn(conv(x)))
            (y.sum() + pooled.sum()).backward()
            (ref.sum() + F.max_pool2d(ref, 2).sum()).backward()
            torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.weight.grad, conv.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused.bn.weight.grad, bn.weight.grad, atol=1e-4, rtol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fused.bn, name), getattr(bn, name), atol=1e-6, rtol=1e-5)
