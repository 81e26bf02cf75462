"""Instance and group norm between conv and activation: statistics per (image, channel) or (image, group) from one
reduction kernel, the normalised tensor never stored, applied by each consumer with a scale and shift per (image,
channel) while reading; against float64 eager PyTorch, and against eager fp32's own error where a statistic sees
few elements; running statistics like nn.InstanceNorm2d; swap of nnU-Net / MONAI-style chains; activation memory."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import (DEVICE, MODEL_TOLERANCE_FACTOR, assert_close, assert_within_eager_error,
                            check_against_float64, compare_step, make_tensor, model_triplet, record_launches)
import fused_unet
from fused_unet import eager, functional as FF, nn as fnn
from fused_unet.kernels import common
from fused_unet.kernels.codes import NormTable
from fused_unet.utils import saved_activation_bytes


def _group_act(y, groups, gamma, beta, activation, slope):
    return eager.activate(F.group_norm(y, groups, gamma, beta), activation, slope)


def _affine(channels, dtype=torch.float32):
    gamma = (torch.rand(channels, device=DEVICE) + 0.5).to(dtype).requires_grad_()
    return gamma, make_tensor((channels,), dtype, requires_grad=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("groups,activation,slope,layout", [(6, "leaky_relu", 0.01, "channels_last"),
                                                            (2, "relu", 0.01, "contiguous"),
                                                            (3, None, 0.01, "strided"),
                                                            (6, "silu", 0.01, "channels_last"),
                                                            (3, "gelu", 0.01, "contiguous"),
                                                            (2, "gelu_tanh", 0.01, "channels_last")])
def test_pending_group_norm_read_by_every_consumer_matches_float64(groups, activation, slope, layout, dtype):
    # groups 6 of 6 channels: instance norm. Odd sizes; every consumer and the materialised tensor.
    x = make_tensor((2, 3, 7, 9), dtype, layout, requires_grad=True)
    w1 = make_tensor((6, 3, 3, 3), dtype, requires_grad=True, scale=0.5)
    w2 = make_tensor((4, 6, 3, 3), dtype, requires_grad=True, scale=0.5)
    wt = make_tensor((6, 3, 2, 2), dtype, requires_grad=True, scale=0.5)
    gamma, beta = _affine(6, dtype)

    def fused(x, w1, gamma, beta, w2, wt):
        z = FF.group_norm(FF.conv2d(x, w1), groups, gamma, beta, activation=activation, negative_slope=slope)
        return (FF.conv2d(z, w2, None, "relu"), FF.max_pool2x2(z), FF.max_pool(z, 3), FF.conv_transpose2x2(z, wt),
                z.materialize())

    def reference(x, w1, gamma, beta, w2, wt):
        z = _group_act(F.conv2d(x, w1, padding=1), groups, gamma, beta, activation, slope)
        return (eager.conv2d(z, w2, None, "relu"), F.max_pool2d(z, 2), F.max_pool2d(z, 3, 2, 1),
                eager.conv_transpose2x2(z, wt), z)

    check_against_float64(fused, reference, [x, w1, gamma, beta, w2, wt], dtype, baseline=dtype != torch.float32)


# 11x13 = 143 pixels at batch 3: groups of 64 rows straddle images (their parts split, the straddling one of each
# image in its own row); 8x8 at batch 2: groups fill images exactly; 7x7: too small, the reduction kernel reads y.
@pytest.mark.parametrize("batch,size,groups,dtype", [(3, (11, 13), 6, torch.float32), (2, (8, 8), 2, torch.float16),
                                                     (1, (13, 5), 3, torch.float32), (2, (7, 7), 6, torch.float32)])
def test_per_image_statistics_from_the_conv_epilogue_match_float64(batch, size, groups, dtype, monkeypatch):
    x = make_tensor((batch, 3, *size), dtype, requires_grad=True)
    skip0 = make_tensor((batch, 2, *size), dtype, requires_grad=True)
    w1, w2 = (make_tensor(s, dtype, requires_grad=True, scale=0.5) for s in ((6, 3, 3, 3), (4, 8, 3, 3)))
    gamma, beta = _affine(6, dtype)
    launches = record_launches(monkeypatch)

    def fused(x, skip0, w1, w2, gamma, beta):
        y, stats = FF.conv2d_stats(x, w1, per_image=True)
        z = FF.group_norm(y, groups, gamma, beta, activation="leaky_relu", stats=stats)
        y2, stats2 = FF.concat_conv2d_stats(z, skip0, w2, per_image=True)
        return z.materialize(), FF.instance_norm(y2, activation="relu", stats=stats2).materialize()

    def reference(x, skip0, w1, w2, gamma, beta):
        z = F.leaky_relu(F.group_norm(F.conv2d(x, w1, padding=1), groups, gamma, beta), 0.01)
        return z, F.relu(F.instance_norm(F.conv2d(torch.cat([z, skip0], 1), w2, padding=1)))

    check_against_float64(fused, reference, [x, skip0, w1, w2, gamma, beta], dtype, baseline=dtype != torch.float32)
    written = {kwargs["STATS"] for name, kwargs in launches if name == "conv2d_implicit_gemm"} - {0}
    assert written == ({2} if size[0] * size[1] >= 64 else set())
    assert any(name == "channel_statistics" for name, _ in launches) == (size[0] * size[1] < 64)


def test_per_image_statistics_of_images_too_small_for_the_epilogue_are_refused():
    # functional falls back to the reduction kernel there; the launcher itself never writes a wrong workspace.
    from fused_unet.kernels import conv

    with pytest.raises(ValueError, match="per-image statistics need images of at least 64 pixels"):
        conv.conv2d_stats_forward(make_tensor((2, 3, 7, 7)), make_tensor((4, 3, 3, 3)), per_image=True)


@pytest.mark.parametrize("up_mode", [None, "bilinear"])
@pytest.mark.parametrize("up_first", [True, False])
def test_concatenation_of_a_per_sample_and_a_batch_norm_matches_float64(up_mode, up_first):
    # up: instance norm ([N, C] scale), skip: batch norm ([C]): the kernel reads both per image.
    up0 = make_tensor((2, 4, 3, 4) if up_mode else (2, 4, 6, 8), requires_grad=True)
    skip0 = make_tensor((2, 3, 7, 9), requires_grad=True)
    w_up, w_skip = make_tensor((4, 4, 1, 1), requires_grad=True), make_tensor((3, 3, 1, 1), requires_grad=True)
    w_cat = make_tensor((5, 7, 3, 3), requires_grad=True, scale=0.3)

    def fused(up0, skip0, w_up, w_skip, w_cat):
        up = FF.instance_norm(FF.conv2d(up0, w_up), activation="leaky_relu", negative_slope=0.1)
        skip = FF.batch_norm(*FF.conv2d_stats(skip0, w_skip), activation="leaky_relu", negative_slope=0.1)
        y = FF.concat_conv2d(up, skip, w_cat, None, None, up_mode=up_mode, up_first=up_first)
        return FF.group_norm(y, 5, activation="relu").materialize()

    def reference(up0, skip0, w_up, w_skip, w_cat):
        up = eager.activate(F.instance_norm(F.conv2d(up0, w_up)), "leaky_relu", 0.1)
        skip = eager.activate(F.batch_norm(F.conv2d(skip0, w_skip), None, None, training=True), "leaky_relu", 0.1)
        y = eager.concat_conv2d(up, skip, w_cat, None, None, 0.0, up_mode, False, up_first)
        return F.relu(F.instance_norm(y))

    check_against_float64(fused, reference, [up0, skip0, w_up, w_skip, w_cat], torch.float32)


def test_per_sample_norms_of_images_larger_than_a_tile_read_two_table_rows_per_step(monkeypatch):
    # 17x19 (and, up-sampled, 34x38) pixels an image, batch 3: the interpreter's tiles of 256 rows and weight-grad
    # steps of 256 pixels straddle two images. Every GEMM reading the pending instance / group norms takes
    # NormTable.IMAGE_PAIR, matches float64 (forward and every gradient), and gives the bits of the gathered
    # tables (the path of images smaller than a tile).
    inputs = [make_tensor((3, 4, 17, 19), requires_grad=True),
              make_tensor((3, 3, 34, 38), layout="channels_last", requires_grad=True),
              make_tensor((6, 4, 3, 3), requires_grad=True, scale=0.5), make_tensor((6, 3, 1, 1), requires_grad=True),
              make_tensor((4, 12, 3, 3), requires_grad=True, scale=0.3),
              make_tensor((6, 3, 2, 2), requires_grad=True, scale=0.5), *_affine(6)]

    def fused(x, skip0, w1, w_skip, w_cat, wt, gamma, beta):
        z = FF.instance_norm(FF.conv2d(x, w1), gamma, beta, activation="leaky_relu", negative_slope=0.01)
        skip = FF.group_norm(FF.conv2d(skip0, w_skip), 3, activation="leaky_relu", negative_slope=0.01)
        return FF.concat_conv2d(z, skip, w_cat, None, None, up_mode="nearest"), FF.conv_transpose2x2(z, wt)

    def reference(x, skip0, w1, w_skip, w_cat, wt, gamma, beta):
        z = F.leaky_relu(F.instance_norm(F.conv2d(x, w1, padding=1), weight=gamma, bias=beta), 0.01)
        skip = F.leaky_relu(F.group_norm(F.conv2d(skip0, w_skip), 3), 0.01)
        return (eager.concat_conv2d(z, skip, w_cat, None, None, 0.0, "nearest"), eager.conv_transpose2x2(z, wt))

    grad_outs = [make_tensor((3, 4, 34, 38)), make_tensor((3, 3, 34, 38))]

    def run(function, dtype=None):
        copies = [t.detach().to(dtype or t.dtype).requires_grad_() for t in inputs]
        outs = function(*copies)
        return [*outs, *torch.autograd.grad(outs, copies, [g.to(o.dtype) for g, o in zip(grad_outs, outs)])]

    def tables(launches):
        """(kernel, NORM_TABLE) of the GEMM launches that read a pending norm."""
        return {(name, kwargs["NORM_TABLE"]) for name, kwargs in launches
                if kwargs.get("NORM_INPUT") or kwargs.get("NORM_INPUT2")}

    launches = record_launches(monkeypatch)
    paired = run(fused)
    assert tables(launches) == {("conv2d_implicit_gemm", NormTable.IMAGE_PAIR),
                                ("conv2d_weight_grad", NormTable.IMAGE_PAIR)}
    for i, (a, e) in enumerate(zip(paired, run(reference, torch.float64))):
        assert_close(a, e, torch.float32, f"output / gradient {i}")
    launches.clear()
    monkeypatch.setattr(common, "largest_pixel_block", lambda kernel: 1 << 30)
    gathered = run(fused)
    assert {table for _, table in tables(launches)} == {NormTable.GATHER}
    assert all(torch.equal(a, b) for a, b in zip(paired, gathered))


def test_instance_norm_of_a_small_map_at_batch_one_is_as_accurate_as_eager():
    # A 4x4 map far from zero: 16 elements per statistic, a mean 100x the spread (cancellation if done naively).
    x = (make_tensor((1, 8, 4, 4)) + 100.0).requires_grad_()
    gamma, beta = _affine(8)
    grad = torch.randn(1, 8, 4, 4, device=DEVICE)

    def run(norm, dtype):
        xs, g, b = (t.detach().to(dtype).requires_grad_() for t in (x, gamma, beta))
        out = norm(xs, g, b)
        return [out, *torch.autograd.grad(out, [xs, g, b], grad.to(dtype))]

    fused = run(lambda x, g, b: FF.instance_norm(x, g, b, activation="leaky_relu").materialize(), torch.float32)
    expected = run(lambda x, g, b: F.leaky_relu(F.instance_norm(x, weight=g, bias=b)), torch.float64)
    baseline = run(lambda x, g, b: F.leaky_relu(F.instance_norm(x, weight=g, bias=b)), torch.float32)
    for name, a, e, b in zip(["output", "grad x", "grad weight", "grad bias"], fused, expected, baseline):
        assert_within_eager_error(a, e, b, name)


@pytest.mark.parametrize("per_image", [False, True])
def test_a_pending_norm_with_strided_scale_and_shift_is_read_right(per_image):
    # The kernels index scale and shift as contiguous tables: views (every other element) are made contiguous.
    y = make_tensor((2, 4, 5, 6))
    shape = (2, 4) if per_image else (4,)
    scale, shift = (torch.randn(*shape[:-1], 2 * shape[-1], device=DEVICE)[..., ::2] for _ in range(2))
    z = FF.Normalized(y, scale, shift, "relu")
    w, wt = make_tensor((3, 4, 3, 3)), make_tensor((4, 3, 2, 2))
    reference = eager.pending_norm(y, scale, shift, "relu")
    for fused, plain in ((FF.conv2d(z, w), eager.conv2d(reference, w)), (FF.max_pool2x2(z), F.max_pool2d(reference, 2)),
                         (FF.conv_transpose2x2(z, wt), eager.conv_transpose2x2(reference, wt))):
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_group_norm_statistics_are_deterministic():
    y = make_tensor((3, 8, 19, 21), layout="channels_last")
    first, second = FF.group_norm(y, 4), FF.group_norm(y, 4)
    assert torch.equal(first.scale, second.scale) and torch.equal(first.shift, second.shift)


# conv and pool at 8x10 (statistics from the conv's epilogue), concat at 6x8 (the reduction kernel's): the running
# statistics updated by the finalising kernel's last launch (STAGE 3), averaging the images in order.
@pytest.mark.parametrize("module", ["conv", "pool", "concat"])
def test_module_instance_norm_running_statistics_follow_instancenorm2d(module, monkeypatch):
    torch.manual_seed(0)
    launches = record_launches(monkeypatch)
    kwargs = dict(norm="instance", activation="leaky_relu", bias=False, device=DEVICE)
    fused = {"conv": fnn.Conv2d(3, 4, 3, padding=1, **kwargs), "pool": fnn.Conv2dReLUPool(3, 4, 3, padding=1, **kwargs),
             "concat": fnn.UpConcatConv2d(3, 4, up_mode="nearest", **kwargs)}[module]
    fused.bn.track_running_stats = True
    fused.bn.register_buffer("running_mean", torch.zeros(4, device=DEVICE))
    fused.bn.register_buffer("running_var", torch.ones(4, device=DEVICE))
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False, device=DEVICE)
    norm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True, device=DEVICE)
    conv.weight.data.copy_(fused.weight)
    for step in range(3):
        up, skip = make_tensor((2, 2, 3, 4)), make_tensor((2, 1, 6, 8))
        x = torch.cat([F.interpolate(up, scale_factor=2), skip], 1) if module == "concat" else \
            make_tensor((2, 3, 8, 10))
        out = fused(up, skip) if module == "concat" else fused(x)
        torch.testing.assert_close(out[0] if module == "pool" else out, F.leaky_relu(norm(conv(x))), atol=1e-5,
                                   rtol=1e-5)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(fused.bn, name), getattr(norm, name), atol=1e-6, rtol=1e-5)
    running = [kw for name, kw in launches if name == "norm_statistics" and kw["RUNNING"]]
    assert [kw["STAGE"] for kw in running] == [3] * 3
    fused.eval()
    norm.eval()
    if module != "concat":  # eval with running statistics: folded into the conv
        x = make_tensor((2, 3, 6, 8))
        out = fused(x)
        torch.testing.assert_close(out[0] if module == "pool" else out, F.leaky_relu(norm(conv(x))), atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize("norm,groups", [("instance", 32), ("group", 2)])
@pytest.mark.parametrize("training", [True, False])
def test_module_keeps_the_torch_state_dict_and_matches_it(norm, groups, training):
    fused = fnn.Conv2d(3, 4, 3, padding=1, norm=norm, norm_groups=groups, activation="relu", device=DEVICE)
    torch_norm = nn.InstanceNorm2d(4, affine=True) if norm == "instance" else nn.GroupNorm(2, 4)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), torch_norm, nn.ReLU()).to(DEVICE).double()
    assert list(fused.state_dict()) == ["weight", "bias"] + [f"bn.{k}" for k in torch_norm.state_dict()]
    with torch.no_grad():
        fused.bn.weight.uniform_(0.5, 1.5)
        fused.bn.bias.uniform_(-1, 1)
    reference[0].load_state_dict({k: v for k, v in fused.state_dict().items() if not k.startswith("bn.")})
    reference[1].load_state_dict({k[3:]: v for k, v in fused.state_dict().items() if k.startswith("bn.")})
    fused.train(training)
    reference.train(training)
    x = make_tensor((2, 3, 5, 6))
    out = fused(x)
    out.square().sum().backward()
    ref = reference(x.double())
    ref.square().sum().backward()
    assert_close(out, ref, torch.float32, "output")
    assert_close(fused.weight.grad, reference[0].weight.grad, torch.float32, "grad weight")
    assert_close(fused.bn.weight.grad, reference[1].weight.grad, torch.float32, "grad bn.weight")


@pytest.mark.whole_model
@pytest.mark.parametrize("norm,batch,activation,up_mode", [("instance", 1, "leaky_relu", "transpose"),
                                                           ("instance", 2, "leaky_relu", "transpose"),
                                                           ("group", 2, "silu", "nearest"),
                                                           ("instance", 2, "prelu", "bilinear")])
def test_unet_with_a_per_sample_norm_matches_reference_over_training_steps(norm, batch, activation, up_mode):
    # group + SiLU: a diffusion U-Net's norm and activation, every conv's activation applied by its reader;
    # instance + PReLU: MONAI's defaults, each conv's slope a child nn.PReLU whose gradient is compared too.
    torch.manual_seed(0)
    kwargs = dict(in_channels=3, num_classes=2, base_channels=8, depth=2, norm=norm, norm_groups=4,
                  activation=activation, up_mode=up_mode)
    models = model_triplet(fused_unet.UNet(**kwargs).to(DEVICE), fused_unet.ReferenceUNet(**kwargs).to(DEVICE))
    assert list(models[0].state_dict()) == list(models[1].state_dict())
    for step in range(2):
        x, grad = torch.randn(batch, 3, 12, 10, device=DEVICE), torch.randn(batch, 2, 12, 10, device=DEVICE)
        compare_step(models, x, grad, f"step {step} ")
    model, reference, _ = models
    model.eval()
    reference.eval()
    x = torch.randn(1, 3, 12, 10, device=DEVICE)
    assert_close(model(x), reference(x.double()), torch.float32, "eval logits", MODEL_TOLERANCE_FACTOR)


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_per_sample_norm_unet_saves_at_most_half_of_eager(norm):
    kwargs = dict(in_channels=3, num_classes=2, base_channels=64, depth=4, norm=norm)
    x = torch.empty(2, 3, 256, 256, device="meta", dtype=torch.float16, requires_grad=True)
    fused = saved_activation_bytes(fused_unet.UNet(**kwargs).to("meta", torch.float16), x)
    reference = saved_activation_bytes(fused_unet.ReferenceUNet(**kwargs).to("meta", torch.float16), x)
    assert fused <= 0.5 * reference, f"fused U-Net saves {fused / reference:.3f}x the eager model's activations"


class _NnUNetStage(nn.Module):
    """nnU-Net's / MONAI's conv -> InstanceNorm2d(affine) -> LeakyReLU blocks (MONAI's ADN order with a Dropout(0)
    between norm and activation), a GroupNorm block, and a 2x2 max-pool."""

    def __init__(self):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, eps=1e-5, affine=True)
        self.drop1, self.act1 = nn.Dropout(0.0), nn.LeakyReLU(0.01, inplace=True)
        self.conv2, self.norm2, self.act2 = nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = self.act1(self.drop1(self.norm1(self.conv1(x))))
        return self.conv3(self.pool(self.act2(self.norm2(self.conv2(x)))))


def _assert_matches_in_float64(model, reference, x):
    """A swapped model's output and parameter gradients against its float64 original's."""
    out = model(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref = reference(x.double())
    ref.backward(grad.double())
    assert_close(out, ref, torch.float32, "output")
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, torch.float32, f"grad {name}")


@pytest.mark.parametrize("training", [True, False])
def test_swap_fuses_instance_and_group_norm_chains(training):
    model = _NnUNetStage().to(DEVICE).train(training)
    reference = copy.deepcopy(model).double()
    x = make_tensor((2, 3, 12, 10))
    model, report = fused_unet.swap(model, x)
    assert [f.pattern for f in report.fused] == ["conv+bn+act", "conv+bn+act+maxpool"]
    assert not report.left_alone
    _assert_matches_in_float64(model, reference, x)


class _DiffusionStyleBlock(nn.Module):
    """conv -> GroupNorm -> SiLU, conv -> GroupNorm -> GELU(tanh), and a conv -> SiLU with no norm between."""

    def __init__(self):
        super().__init__()
        self.conv1, self.norm1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU()
        self.conv2, self.norm2 = nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = self.act1(self.norm1(self.conv1(x)))
        x = F.gelu(self.norm2(self.conv2(x)), approximate="tanh")
        return F.silu(self.conv3(x))


def test_swap_fuses_silu_and_gelu_after_a_norm_only():
    model = _DiffusionStyleBlock().to(DEVICE)
    reference = copy.deepcopy(model).double()
    x = make_tensor((2, 3, 12, 10))
    model, report = fused_unet.swap(model, x)
    # The last conv's SiLU has no norm before it: a conv's epilogue keeps only its output, so the SiLU stays torch's
    # (the conv alone runs fused, as a swapped module).
    assert [f.pattern for f in report.fused] == ["conv+bn+act", "conv+bn+act"]
    assert report.swapped["Conv2d"] == 3
    _assert_matches_in_float64(model, reference, x)


def test_silu_and_gelu_need_a_norm():
    with pytest.raises(ValueError, match="silu, gelu and prelu fuse after a norm"):
        FF.conv2d(make_tensor((1, 3, 5, 5)), make_tensor((4, 3, 3, 3)), activation="silu")
    with pytest.raises(ValueError, match="fuses after a norm only"):
        fused_unet.UNet(3, 2, base_channels=8, depth=1, activation="gelu", norm="group", up_mode="transpose")
    conv = fnn.Conv2d(3, 4, 3, padding=1, activation="silu").to(DEVICE)
    x = make_tensor((1, 3, 5, 5))
    with pytest.warns(UserWarning, match="without a norm"):
        out = conv(x)
    torch.testing.assert_close(out, F.silu(F.conv2d(x, conv.weight, conv.bias, padding=1)), atol=1e-5, rtol=1e-5)


def test_swap_leaves_an_instance_norm_it_cannot_run_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                          nn.InstanceNorm2d(4, track_running_stats=True, momentum=None), nn.ReLU()).to(DEVICE)
    reference = copy.deepcopy(model)
    x = make_tensor((2, 3, 6, 6))
    model, report = fused_unet.swap(model, x)
    assert any("InstanceNorm2d" in what for what, _ in report.left_alone)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_bad_group_norm_is_rejected():
    y = make_tensor((2, 6, 4, 4))
    with pytest.raises(ValueError, match="num_groups must be a positive integer dividing y's 6 channels"):
        FF.group_norm(y, 4)
    with pytest.raises(ValueError, match=r"weight must be a tensor of shape \[6\]"):
        FF.group_norm(y, 3, torch.ones(3, device=DEVICE))
    bad = FF.Normalized(y, torch.ones(3, 6, device=DEVICE), torch.zeros(3, 6, device=DEVICE), "relu")
    with pytest.raises(ValueError, match=r"x.scale must be a float32 tensor of shape \[6\] .* or \[2, 6\]"):
        FF.conv2d(bad, make_tensor((2, 6, 3, 3)))
    with pytest.raises(ValueError, match="norm must be one of"):
        fnn.Conv2d(3, 4, 3, norm="layer")
