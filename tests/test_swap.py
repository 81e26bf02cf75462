"""swap / swap_modules: the fused layers in a model written with plain torch.nn — our classic double-conv U-Net
here, MONAI and segmentation_models_pytorch in test_compat.py. Every swapped model is checked against its own
unswapped copy in float64 (outputs, every gradient, BatchNorm running statistics, train and eval mode), and the
eager convs / pools / concatenations / up-samplings that still run are counted against the report."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fused_unet
from fused_unet import nn as fnn
from fused_unet.swap import SHAPE_ONLY
from tests.conftest import DEVICE, MODEL_TOLERANCE_FACTOR, assert_close, compare_step, record_launches

pytestmark = pytest.mark.whole_model  # Whole models: the interpreter without its overflow check (conftest)

_EAGER_OPS = {"convolution": "conv", "cat": "cat", "max_pool2d_with_indices": "maxpool", "max_pool2d": "maxpool",
              "upsample_nearest2d": "interpolate", "upsample_bilinear2d": "interpolate",
              "_upsample_nearest_exact2d": "interpolate", "batch_norm": "norm", "instance_norm": "norm",
              "group_norm": "norm"}


def eager_ops(model, *inputs):
    """The aten convolutions, norms, concatenations, max-pools and up-samplings that compute data in one forward (the
    fused kernels are Triton programs, not aten ops; shape-only stand-ins on meta tensors are not counted). swap
    captured torch.compile's graphs for its example input: a call at that shape compiles nothing here."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model(*inputs)
    counts = {}
    for event in profile.events():
        kind = _EAGER_OPS.get(event.name.removeprefix("aten::"))
        parent = event.cpu_parent
        while parent is not None and parent.name != SHAPE_ONLY:
            parent = parent.cpu_parent
        if kind and parent is None and not _inside_counted(event):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


_ELEMENTWISE = ("add", "add_", "mul", "mul_", "relu", "relu_", "leaky_relu", "leaky_relu_", "silu", "gelu", "prelu",
                "_prelu_kernel")


def eager_elementwise(model, x):
    """The aten element-wise ops on whole activations ([N, C, H, W]) in one forward: what a pending norm, a residual
    add or an activation left to PyTorch costs (running-statistics updates are per channel, not counted)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        model(x)
    names = [event.name.removeprefix("aten::") for event in profile.events()
             if event.name.removeprefix("aten::") in _ELEMENTWISE and event.input_shapes
             and len(event.input_shapes[0]) == 4 and event.input_shapes[0][0] == x.shape[0]]
    return {name: names.count(name) for name in set(names)}


def _inside_counted(event):
    """An aten op called by another counted one (max_pool2d calls max_pool2d_with_indices)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.removeprefix("aten::") in _EAGER_OPS:
            return True
        parent = parent.cpu_parent
    return False


def left_alone(report, kind):
    """How many modules / functions of one kind the report left to PyTorch."""
    return sum(what.startswith(kind) or f"({kind})" in what for what, _ in report.left_alone)


def check_swap(model, x, modes=("train", "eval"), example_input=None, more=()):
    """Swap model; outputs, gradients and running statistics must match its float64 twin, in each mode; then the
    eval outputs for the inputs in ``more`` (other sizes)."""
    reference, baseline = copy.deepcopy(model).double(), copy.deepcopy(model)
    swapped, report = fused_unet.swap(model, example_input)
    assert swapped is model
    assert list(model.state_dict()) == list(reference.state_dict())
    with torch.no_grad():
        grad = torch.randn_like(copy.deepcopy(reference).eval()(x.double())).float()
    for mode in modes:
        for m in (model, reference, baseline):
            m.train(mode == "train")
        compare_step((model, reference, baseline), x, grad, f"{mode}: ")
        for (name, b), r in zip(model.named_buffers(), reference.buffers()):
            assert_close(b.double(), r, torch.float32, f"{mode}: buffer {name}", MODEL_TOLERANCE_FACTOR)
    for extra in more:
        model.eval(), reference.eval()
        assert_close(model(extra), reference(extra.double()), torch.float32, f"eval at {tuple(extra.shape)}",
                     MODEL_TOLERANCE_FACTOR)
    return report


class DoubleConv(nn.Sequential):
    def __init__(self, c_in, c_out):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class Up(nn.Module):
    """The decoder step of the popular PyTorch U-Net tutorials: up-sample, pad to the skip, cat([skip, up])."""

    def __init__(self, c_in, c_out, bilinear):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(c_in + c_in // 2, c_out)
        else:
            self.up = nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2)
            self.conv = DoubleConv(c_in, c_out)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dy, dx = x2.size()[2] - x1.size()[2], x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class ClassicUNet(nn.Module):
    """The tutorials' U-Net: inc, down1..down{depth}, up1..up{depth}, outc."""

    def __init__(self, in_channels=3, classes=2, width=4, bilinear=True, depth=2):
        super().__init__()
        self.depth = depth
        self.inc = DoubleConv(in_channels, width)
        for i in range(1, depth + 1):
            setattr(self, f"down{i}", nn.Sequential(nn.MaxPool2d(2), DoubleConv(width * 2 ** (i - 1), width * 2 ** i)))
        for i in range(1, depth + 1):
            channels = width * 2 ** (depth - i + 1)
            setattr(self, f"up{i}", Up(channels, channels // 2, bilinear))
        self.outc = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for i in range(1, self.depth + 1):
            skips.append(getattr(self, f"down{i}")(skips[-1]))
        y = skips.pop()
        for i in range(1, self.depth + 1):
            y = getattr(self, f"up{i}")(y, skips.pop())
        return self.outc(y)


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("size", [(16, 12), (17, 13)])
def test_classic_unet_is_fused_and_matches(bilinear, size):
    # Seed 0 put one BatchNorm + ReLU output within 3e-7 of zero inside a max-pool window at 17x13: a summation
    # order as valid as eager's flipped that pooling decision (measured: -2.5e-7 vs +2.0e-7), and the BatchNorm
    # spread the moved gradient over the whole input. Discontinuities are not what this test is about.
    torch.manual_seed(1)
    model = ClassicUNet(bilinear=bilinear).to(DEVICE)
    x = torch.randn(2, 3, *size, device=DEVICE)
    report = check_swap(model, x)
    patterns = report.counts()
    assert report.traced == [""] and not report.untraced
    assert patterns["conv+bn+act+maxpool"] == 2 and patterns["conv+bn+act"] == 6
    up = "upsample+pad+cat+conv+bn+act" if bilinear else "pad+cat+conv+bn+act"
    assert patterns[up] == 2, report
    assert report.swapped["ConvTranspose2d"] == (0 if bilinear else 2)
    # Nothing eager is left but the 1x1 head, which has no BatchNorm or activation to fuse.
    assert report.swapped["Conv2d"] == 11 and not left_alone(report, "")
    model.eval()
    assert eager_ops(model, x) == {}


def test_batch_norm_gradients_at_batch_1_are_as_accurate_as_eager():
    # At batch 1 the bottleneck's BatchNorm sees 4 pixels per channel; gradients there were once reported 1000x
    # less accurate than eager fp32 (issue 16): check_swap holds every gradient to a multiple of eager's own error.
    torch.manual_seed(0)
    model = ClassicUNet(width=32, depth=3, bilinear=False).to(DEVICE)
    check_swap(model, torch.randn(1, 3, 16, 16, device=DEVICE), modes=("train",))


def test_swapped_model_keeps_training_like_the_original():
    torch.manual_seed(0)
    model = ClassicUNet().to(DEVICE)
    reference = copy.deepcopy(model).double()
    fused_unet.swap(model)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, reference)]
    x = torch.randn(2, 3, 12, 12, device=DEVICE)
    target = torch.randint(0, 2, (2, 12, 12), device=DEVICE)
    for _ in range(2):
        for m, opt in zip((model, reference), optimizers):
            opt.zero_grad()
            F.cross_entropy(m(x.to(next(m.parameters()).dtype)), target).backward()
            opt.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert_close(a.double(), b.double(), torch.float32, name, MODEL_TOLERANCE_FACTOR)


def test_checkpoints_load_both_ways_and_swap_of_a_trained_model_gives_its_outputs():
    torch.manual_seed(0)
    trained = ClassicUNet().to(DEVICE).eval()
    for m in trained.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 12, 12, device=DEVICE)
    expected = trained.double()(x.double())
    swapped = ClassicUNet().to(DEVICE)
    fused_unet.swap(swapped)
    swapped.load_state_dict(trained.float().state_dict())
    assert_close(swapped.eval()(x), expected, torch.float32, "swapped, then loaded", MODEL_TOLERANCE_FACTOR)
    fresh = ClassicUNet().to(DEVICE)
    fresh.load_state_dict(swapped.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), swapped.state_dict().values()))
    again, _ = fused_unet.swap(copy.deepcopy(trained))
    assert_close(again(x), expected, torch.float32, "trained, then swapped", MODEL_TOLERANCE_FACTOR)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())

    def forward(self, x):
        y = F.max_pool2d(self.conv(x), 3, 2, 1)  # a ResNet stem's pool, as a call: torch.compile's graph swaps it
        return y * 2 if isinstance(x, torch.Tensor) and self.training else y


def test_a_branch_on_training_or_shapes_is_captured_by_torch_compile():
    model = Branchy().to(DEVICE)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    report = check_swap(model, x)
    # torch.fx would bake one branch in; torch.compile guards on self.training and captures a graph per mode.
    assert [name for name, _ in report.untraced] == [""] and "training" in report.untraced[0][1]
    assert report.traced == ["(whole model) [torch.compile]"] and report.counts() == {"conv+act": 1, "maxpool": 1}
    for mode in (True, False):
        model.train(mode)(x)  # swap had no example input: the first call of each mode compiles
        assert eager_ops(model, x) == {}


@pytest.mark.parametrize("make", [ClassicUNet, Branchy], ids=["torch.fx", "torch.compile"])
def test_a_copy_of_a_swapped_model_runs_its_own_parameters(make):
    torch.manual_seed(0)
    model = make().to(DEVICE).eval()
    fused_unet.swap(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(-1)
    reference = make().to(DEVICE).double().eval()
    reference.load_state_dict(twin.state_dict())
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    assert not torch.allclose(twin(x), model(x))
    assert_close(twin(x), reference(x.double()), torch.float32, "the copy", MODEL_TOLERANCE_FACTOR)


def test_runtime_sizes_the_kernel_does_not_cover_run_the_original_ops():
    class UpByOne(nn.Module):  # pads on one side only: not the centred pad the kernel does
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 4, 3, padding=1)

        def forward(self, x, skip):
            up = F.interpolate(x, scale_factor=2, mode="nearest")
            up = F.pad(up, [0, skip.shape[3] - up.shape[3], 0, skip.shape[2] - up.shape[2]])
            return F.relu(self.conv(torch.cat([up, skip], 1)))

    model = UpByOne().to(DEVICE)
    x, skip = torch.randn(1, 3, 4, 4, device=DEVICE), torch.randn(1, 3, 10, 10, device=DEVICE)
    reference = copy.deepcopy(model).double()
    _, report = fused_unet.swap(model, (x, skip))
    assert report.counts() == {"upsample+pad+cat+conv+act": 1}
    assert eager_ops(model, x, skip) == {"interpolate": 1, "cat": 1, "conv": 1}
    assert_close(model(x, skip), reference(x.double(), skip.double()), torch.float32, "one-sided pad")
    even = torch.randn(1, 3, 8, 8, device=DEVICE)  # a pad of 0: the fused kernel
    assert eager_ops(model, x, even) == {}
    assert_close(model(x, even), reference(x.double(), even.double()), torch.float32, "no pad")


def test_swap_modules_keeps_weights_keys_and_results():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.ConvTranspose2d(8, 4, 2, stride=2), nn.ReLU(),
        nn.Conv2d(4, 2, 1),
    ).to(DEVICE)
    original = copy.deepcopy(model).double()
    keys = list(model.state_dict())
    swapped, counts = fused_unet.swap_modules(model)
    assert swapped is model
    assert counts == {"Conv2d": 3, "MaxPool2d": 1, "ConvTranspose2d": 1, "ReLU fused": 3}
    assert list(model.state_dict()) == keys
    assert isinstance(model[0], fnn.Conv2d) and model[0].activation == "relu" and isinstance(model[1], nn.Identity)
    assert isinstance(model[4], fnn.ConvTranspose2d) and model[4].activation == "relu"
    assert model[6].activation is None
    x = torch.randn(2, 3, 10, 14, device=DEVICE)
    assert_close(model(x), original(x.double()), torch.float32, "swapped model", MODEL_TOLERANCE_FACTOR)


def test_swap_modules_without_relu_fusion_leaves_subclasses_and_unsupported_configs_alone():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, dilation=2, padding=2)).to(DEVICE)
    _, counts = fused_unet.swap_modules(model, fuse_relu=False)
    assert type(model[0]) is MyConv and isinstance(model[1], fnn.Conv2d) and isinstance(model[2], nn.ReLU)
    assert type(model[3]) is nn.Conv2d
    assert counts["Conv2d"] == 1 and counts["ReLU fused"] == 0


def test_swap_leaves_a_fused_unet_model_as_it_is():
    model = fused_unet.UNet(3, 2, base_channels=4, depth=1).to(DEVICE)
    _, report = fused_unet.swap(model)
    assert "forward" not in model.__dict__ and not report.fused and not report.traced and not report.untraced
    assert report.swapped == {"Conv2d": 0, "MaxPool2d": 0, "ConvTranspose2d": 0, "ReLU fused": 0}


def test_report_prints_a_table_and_rejects_non_modules():
    _, report = fused_unet.swap(ClassicUNet().to(DEVICE))
    text = str(report)
    assert "conv+bn+act+maxpool" in text and "concat_conv2d" in text and "classes swapped in" in text
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fused_unet.swap(lambda x: x)


def test_a_torch_compile_capture_needs_no_recompile_for_inference():
    # swap captures eval under no_grad too: a user's first inference call must not stop to recompile.
    model = Branchy().to(DEVICE)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    fused_unet.swap(model, x)
    compiled_frames = torch._dynamo.utils.counters["frames"]["ok"]
    with torch.no_grad():
        model.eval()(x)
    model.train()(x).sum().backward()
    assert torch._dynamo.utils.counters["frames"]["ok"] == compiled_frames


class UpThenConv(nn.Module):
    """A decoder step without a skip (smp's last block): up-sample x2, conv + BN + ReLU; in one of three spellings."""

    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        if self.spelling == "interpolate":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        elif self.spelling == "module":
            x = self.up(x)
        else:  # F.interpolate as torch.compile graphs of some versions inline it
            x = torch._C._nn.upsample_bilinear2d(x, None, False, [2.0, 2.0])
        return self.block(x)


@pytest.mark.parametrize("spelling", ["interpolate", "module", "upsample_bilinear2d"])
def test_an_upsampling_feeding_a_conv_without_a_skip_is_fused(spelling):
    torch.manual_seed(0)
    model = UpThenConv(spelling).to(DEVICE)
    x = torch.randn(2, 3, 5, 4, device=DEVICE)
    report = check_swap(model, x, example_input=x)
    assert report.counts() == {"upsample+conv+bn+act": 1}
    model.eval()
    assert eager_ops(model, x) == {}


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv-BN-ReLU, conv-BN, += identity (or a 1x1/s2 conv-BN projection), ReLU."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.downsample = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def test_resnet_blocks_fuse_strided_convs_and_the_residual_add(monkeypatch):
    # The stem (7x7/s2), a block with a 1x1/s2 projection, an identity block: every conv fused; the add and ReLU
    # in the second conv's epilogue in eval mode (its norm folds into the conv), after the fused conv + BN in training.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          BasicBlock(8, 16, 2), BasicBlock(16, 16)).to(DEVICE)
    x = torch.randn(2, 3, 19, 17, device=DEVICE)
    report = check_swap(model, x, more=[torch.randn(1, 3, 12, 16, device=DEVICE)])
    assert report.counts() == {"conv+bn+act": 3, "conv+bn+add+act": 2, "conv+bn": 1}
    assert not left_alone(report, "Conv2d")
    # In training the projection's pending BN, the block's BN, the add and the ReLU are one kernel
    # (functional.normalized_add): no element-wise op on a whole activation is left to PyTorch, in either mode.
    assert eager_elementwise(model.train(), x) == {}
    # ... and the projection's BN stays pending into that kernel: no pending norm is made a tensor in training.
    seen = record_launches(monkeypatch)
    model(x).sum().backward()
    assert sorted(name for name, flags in seen if flags.get("RES_NORM")) == ["batch_norm_act_backward",
                                                                               "pending_norm"]
    assert not any(name == "pending_norm" and not flags["RESIDUAL"] for name, flags in seen)
    # In eval both BNs fold: the projection (1x1/s2 conv + BN) is a second GEMM in the block's last conv, never
    # stored: 5 conv launches for 6 convs.
    seen.clear()
    model.eval()(x)
    convs = [flags for name, flags in seen if name == "conv2d_implicit_gemm"]
    assert len(convs) == 5 and [(f["PROJ"], f["PROJ_STRIDE"]) for f in convs if f["PROJ"]] == [(True, 2)]
    assert eager_ops(model.eval(), x).get("conv", 0) == 0
    assert eager_elementwise(model, x) == {}


class DiffusionResBlock(nn.Module):
    """diffusers' ResnetBlock2D (its time embedding a parameter): GroupNorm-SiLU-conv twice, (input + h) / scale, then
    Downsample2D."""

    def __init__(self, channels, groups=4):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)  # Downsample2D
        self.temb = nn.Parameter(torch.randn(1, channels, 1, 1))

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x))) + self.temb  # the time embedding: a broadcast add
        h = self.conv2(F.silu(self.norm2(h)))
        return self.down((x + h) / 1.0)


def test_a_diffusion_block_fuses_its_skip_add_and_downsampling():
    torch.manual_seed(0)
    model = DiffusionResBlock(8).to(DEVICE)
    x = torch.randn(2, 8, 10, 9, device=DEVICE)
    report = check_swap(model, x)
    # conv2 + the skip and conv1 + the time embedding (broadcast: read with zero strides) fuse. Each GroupNorm ->
    # SiLU (of the block's input, of conv1 + the time embedding) is pending into the conv that reads it.
    assert report.counts() == {"conv+add": 2, "bn+act": 2} and not left_alone(report, "Conv2d")
    model.train()
    assert eager_ops(model, x) == {} and eager_elementwise(model, x) == {}


class TwoBranches(nn.Module):
    """Two conv + BN branches with different activations, concatenated twice: into a conv and into a transposed
    conv (MONAI UNet's up layer reads its skip connection's cat so)."""

    def __init__(self):
        super().__init__()
        self.relu_branch = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.leaky_branch = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1))
        self.relu_again = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.leaky_again = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1))
        self.merge = nn.Conv2d(8, 2, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 3, 3, 2, 1, 1)

    def forward(self, x):
        merged = self.merge(torch.cat([self.relu_branch(x), self.leaky_branch(x)], 1))
        return self.up(torch.cat([self.relu_again(x), self.leaky_again(x)], 1))[:, :2, ::2, ::2] + merged


def test_concatenated_pending_norms_with_different_activations():
    # Each branch's BN stays pending into the concatenation's reader, which applies one activation to both: the
    # second source is made a tensor there (this crashed with a ValueError in training before).
    torch.manual_seed(0)
    model = TwoBranches().to(DEVICE)
    report = check_swap(model, torch.randn(2, 3, 7, 6, device=DEVICE))
    assert report.counts() == {"conv+bn+act": 4, "cat+conv": 1, "cat+convtranspose": 1} and not report.left_alone


class ConcatenationReadTwice(nn.Module):
    """MONAI's UnetrUpBlock: a concatenation read by a residual block's first conv and by its 1x1 projection (+ BN),
    added to the second conv's output; ``strided_reader``: also by a stride-2 conv, which the concatenating kernels
    do not cover."""

    def __init__(self, strided_reader):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
        self.conv1 = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.01))
        self.conv2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.projection = nn.Sequential(nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4))
        self.down = nn.Conv2d(6, 4, 3, stride=2, padding=1) if strided_reader else None

    def forward(self, x):
        cat = torch.cat([self.a(x), self.b(x)], 1)
        out = F.leaky_relu(self.conv2(self.conv1(cat)) + self.projection(cat), 0.01)
        return out if self.down is None else out + self.down(cat).mean((2, 3), keepdim=True)


@pytest.mark.parametrize("strided_reader", [False, True])
def test_a_concatenation_read_by_two_convs_is_read_by_both_kernels(strided_reader):
    torch.manual_seed(0)
    model = ConcatenationReadTwice(strided_reader).to(DEVICE)
    x = torch.randn(2, 3, 7, 6, device=DEVICE)
    report = check_swap(model, x)
    assert report.counts() == {"cat+conv+bn+act": 1, "cat+conv+bn": 1, "conv+bn+add+act": 1}
    # The stride-2 conv reads the concatenation PyTorch builds; without it nothing builds it.
    assert [what for what, _ in report.left_alone] == ["cat (model.cat)"] * strided_reader
    assert all(why.startswith("also read by a conv the concatenating kernels do not cover")
               for _, why in report.left_alone)
    assert eager_ops(model.eval(), x) == ({"cat": 1} if strided_reader else {})
