"""swap on the U-Nets people already have: MONAI BasicUNet / UNet / DynUNet, nnU-Net's PlainConvUNet
(dynamic-network-architectures) and segmentation_models_pytorch Unet (ResNet and VGG encoders), installed by the
``compat`` extra. Each swapped model against its own float64 copy (outputs, every
gradient, BatchNorm running statistics; train and eval), what the report says was fused, and that no eager conv /
pool / cat / interpolate runs where the report says it was fused."""
import warnings

import pytest
import torch

import fused_unet
from tests.conftest import DEVICE, record_launches
from tests.test_swap import check_swap, eager_elementwise, eager_ops, left_alone

pytestmark = pytest.mark.whole_model  # Whole models: the interpreter without its overflow check (conftest)

monai_nets = pytest.importorskip("monai.networks.nets", reason="the compat extra: pip install -e '.[compat]'")
smp = pytest.importorskip("segmentation_models_pytorch", reason="the compat extra: pip install -e '.[compat]'")


@pytest.fixture(autouse=True)
def _quiet_libraries():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _eager_left(model, x, report):
    """The eager ops of an eval forward, and the counts the report leads one to expect."""
    model.eval()
    counts = eager_ops(model, x)
    return counts, {kind: n for kind, n in (("conv", left_alone(report, "Conv2d") + left_alone(report, "ConvTranspose2d")),
                                            ("maxpool", left_alone(report, "MaxPool2d")),
                                            ("cat", left_alone(report, "cat")),
                                            ("interpolate", left_alone(report, "interpolate"))) if n}


# Instance norm (MONAI's default) needs > 1 pixel at the bottom: 32x32; its eval mode computes as its training mode
# does (no running statistics), so training only there, at batch 1 (its statistics are per image), to keep CI short.
@pytest.mark.parametrize("norm,modes,size,batch", [("batch", ("train", "eval"), 16, 2), ("instance", ("train",), 32, 1)])
def test_monai_basic_unet(norm, modes, size, batch):
    torch.manual_seed(0)
    model = monai_nets.BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(4, 4, 8, 8, 16, 4),
                                 norm=norm).to(DEVICE).train("train" in modes)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    # An odd size: UpCat pads the up-sampled tensor by replicating an edge, which the kernel does not do; that
    # call runs the original ops (the rest stays fused).
    odd = [torch.randn(1, 3, 2 * size + 3, 2 * size - 1, device=DEVICE)] if norm == "batch" else []
    report = check_swap(model, x, modes, example_input=x, more=odd)
    # UpCat.forward tests isinstance(x_e, Tensor), which a torch.fx proxy fails (the trace would drop the skip):
    # torch.compile captures the model instead, graph breaks and all. Names starting with UpCat cover its 4 instances.
    assert report.untraced[0][0] == "" and report.traced == ["(whole model) [torch.compile]"]
    # conv -> BatchNorm2d / InstanceNorm2d -> Dropout(0) -> LeakyReLU(0.1): every norm fused, none left eager.
    assert report.counts() == {"conv+bn+act": 7, "conv+bn+act+maxpool": 4, "pad+cat+conv+bn+act": 1,
                               "convtranspose": 1, "conv": 1}
    assert not report.left_alone
    assert any(part.startswith("UpCat.") for f in report.fused for part in f.parts)
    assert _eager_left(model, x, report)[0] == {}


# Its default instance norm (no affine, no running statistics: the same in eval) at 8x8 and 4x4: statistics from the
# conv's epilogue, and from the reduction kernel below 64 pixels.
@pytest.mark.parametrize("norm,modes", [("batch", ("train", "eval")), ("instance", ("train",))])
def test_monai_unet_fuses_its_skip_concatenations(norm, modes):
    torch.manual_seed(0)
    model = monai_nets.UNet(spatial_dims=2, in_channels=3, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                            num_res_units=1, norm=norm).to(DEVICE)
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    report = check_swap(model, x, modes, example_input=x)
    # Its stride-2 convs fuse, each residual unit's projection with the unit's add in its epilogue, and its 3x3 /
    # stride-2 / output_padding-1 transposed convs run in the kernels, each reading its skip connection's
    # cat([x, submodule(x)]) as two sources ("cat+convtranspose"); every norm -> Dropout(0) -> PReLU (its default
    # ADN) is pending in the kernels that read it, the one after each transposed conv too ("bn+act").
    assert report.traced == [""] and report.counts() == {"conv+bn+act": 4, "conv+add": 4, "bn+act": 2,
                                                         "cat+convtranspose": 2}
    assert report.swapped["ConvTranspose2d"] == 2 and left_alone(report, "ConvTranspose2d") == 0
    assert "PReLU" not in str(report) and not report.left_alone
    counts, expected = _eager_left(model, x, report)
    assert counts == expected == {} and "prelu" not in eager_elementwise(model, x)


def test_monai_attention_unet():
    torch.manual_seed(0)
    model = monai_nets.AttentionUnet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16),
                                     strides=(2, 2)).to(DEVICE)
    x = torch.randn(2, 1, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("train", "eval"), example_input=x)
    # ConvBlocks (conv -> BN -> Dropout(0) -> ReLU, twice; stride 2 first), UpConv (3x3 / stride-2 transposed conv, its
    # BN + ReLU pending: "bn+act"), each attention gate's W_g and W_x (1x1 conv + BN, the add and ReLU in W_g's
    # kernel), psi's 1x1 conv to one channel + BN, the merge's cat + conv. psi's Sigmoid and the gate's x * psi stay.
    assert report.counts() == {"conv+bn+act": 6, "conv+bn+add+act": 2, "conv+bn": 4, "cat+conv+bn+act": 2,
                               "bn+act": 2}
    assert sorted(name.split(" ")[-1] for name, _ in report.left_alone) == ["(Sigmoid)", "(Sigmoid)"]
    counts, expected = _eager_left(model, x, report)
    assert counts == expected == {} and eager_elementwise(model.train(), x) == {"mul": 2}


# vgg11_bn in eval only (its 64- and 128-channel convs are the slowest interpreted model here): its conv -> BN ->
# ReLU -> max-pool in training is MONAI BasicUNet's pattern, tested in both modes above.
@pytest.mark.parametrize("encoder,depth,decoder,size,modes", [
    ("resnet18", 3, (16, 8, 8), 16, ("train", "eval")),
    ("vgg11_bn", 2, (8, 8), 8, ("eval",)),
])
def test_smp_unet(encoder, depth, decoder, size, modes, monkeypatch):
    torch.manual_seed(0)
    model = smp.Unet(encoder, encoder_weights=None, classes=2, encoder_depth=depth, decoder_channels=decoder).to(DEVICE)
    x = torch.randn(2, 3, size, size, device=DEVICE)
    report = check_swap(model, x, modes, example_input=x)
    assert report.traced == [""] and not report.untraced
    patterns = report.counts()
    # Decoder: nearest x2 F.interpolate + cat + Conv2dReLU, one per skip; the last block has no skip.
    assert patterns["upsample+cat+conv+bn+act"] == depth - 1 and patterns["upsample+conv+bn+act"] == 1
    if encoder.startswith("vgg"):  # conv -> BatchNorm2d -> ReLU -> MaxPool2d closes each encoder stage
        assert patterns["conv+bn+act+maxpool"] == depth
    else:  # the 7x7/s2 stem, the 3x3/s2 and 1x1/s2 downsampling convs and each block's add + ReLU fuse; the stem's
        # 3x3/s2 max-pool runs in the kernels, in training reading the stem's pending BatchNorm + ReLU
        assert patterns["conv+bn+act"] == 8 and patterns["conv+bn+add+act"] == 4 and patterns["conv+bn"] == 1
        assert left_alone(report, "Conv2d") == 0 and left_alone(report, "MaxPool2d") == 0
        launches = record_launches(monkeypatch)
        # In training each block's BN, add and ReLU are one kernel: no element-wise op on an activation is eager.
        assert eager_elementwise(model.train(), x) == {}
        pools = {(kwargs["WINDOW"], kwargs["NORM"]) for name, kwargs in launches if name == "max_pool"}
        assert report.swapped["MaxPool2d"] == 1 and pools == {(3, True)}  # each of its forwards
    counts, expected = _eager_left(model, x, report)
    assert counts == expected


def test_smp_unet_plus_plus():
    # UNet++'s nested decoder: each node up-samples x2 and concatenates the skips of its row, cat(up, cat(skips)):
    # the outer cat + conv fuses (its second source the inner cat), the inner cat of several tensors stays. Eval
    # only: its encoder is smp Unet's resnet18, tested in both modes above.
    torch.manual_seed(0)
    model = smp.UnetPlusPlus("resnet18", encoder_weights=None, classes=2, encoder_depth=3,
                             decoder_channels=(16, 8, 8)).to(DEVICE).eval()
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("eval",), example_input=x)
    assert report.counts()["upsample+cat+conv+bn+act"] == 3 and report.counts()["conv+bn+add+act"] == 4
    assert [what for what, _ in report.left_alone] == ["cat (decoder)"]
    assert eager_ops(model, x) == {"cat": 1}


def test_smp_unet_with_bottleneck_blocks():
    # resnet50's Bottleneck: 1x1 -> 3x3 -> 1x1 + BN, the add and ReLU in the last conv's kernels; the first block's
    # 1x1 projection to 256 channels. Depth 2 (stem, layer1) keeps the interpreter's cost down.
    torch.manual_seed(0)
    model = smp.Unet("resnet50", encoder_weights=None, classes=2, encoder_depth=2, decoder_channels=(8, 8)).to(DEVICE)
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("train", "eval"), example_input=x)
    assert report.counts()["conv+bn+add+act"] == 3 and report.counts()["conv+bn"] == 1
    assert left_alone(report, "Conv2d") == 0 and left_alone(report, "MaxPool2d") == 0
    assert eager_elementwise(model.train(), x) == {}


def test_smp_linknet():
    # Linknet's decoder up-samples with 4x4 / stride-2 / padding-1 transposed convs (+ BN + ReLU), each block's
    # output added to the skip: all of it in the kernels (eval; the transposed conv's backward is held by
    # test_monai_unet_fuses_its_skip_concatenations and tests/test_conv_transpose.py).
    torch.manual_seed(0)
    model = smp.Linknet("resnet18", encoder_weights=None, classes=2, encoder_depth=3).to(DEVICE)
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("eval",), example_input=x)
    assert report.counts()["convtranspose"] == 3 and not report.left_alone
    assert _eager_left(model, x, report)[0] == {}


def test_smp_fpn():
    # FPN on smp Unet's ResNet encoder: the top-down pathway's 1x1 lateral convs add the coarser level's nearest x2
    # in their epilogue, each segmentation block's conv -> GroupNorm -> ReLU fuses, with the x2 bilinear before it.
    # Left to PyTorch, and named: the up-samplings read by an add (the top-down ones, each segmentation block's last)
    # and the head's x4. Eval: the encoder is tested in both modes above.
    torch.manual_seed(0)
    model = smp.FPN("resnet18", encoder_weights=None, classes=2, encoder_depth=3, decoder_pyramid_channels=16,
                    decoder_segmentation_channels=32).to(DEVICE).eval()
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("eval",), example_input=x)
    assert report.counts() == {"conv+bn+act": 9, "conv+bn+add+act": 4, "conv+bn": 1, "conv+add": 3,
                               "upsample+conv+bn+act": 3, "maxpool": 1, "conv": 2}
    assert left_alone(report, "Conv2d") == 0 and left_alone(report, "interpolate") == 6
    counts, expected = _eager_left(model, x, report)
    # PyTorch's too: the head's x4 UpsamplingBilinear2d, the merge's torch.stack(levels).sum(0) (a cat inside).
    assert counts == {"interpolate": 7, "cat": 1} and expected == {"interpolate": 6}


# One encoder per smp family that builds offline (encoder_weights=None), small enough for the interpreter: swap either
# fuses with the unswapped model's outputs and gradients, or leaves a part alone and says why — never an exception.
# Eval mode: efficientnet's drop-connect and the mix transformer's drop-path draw random numbers in training.
SMP_ENCODERS = ["efficientnet-b0", "mobilenet_v2", "mit_b0"]
# mit_b0 at seed 0 has a decoder pre-ReLU value of 1.5e-7 in float64: fp32 rounding (ours, or a CPU's other eager
# kernels) flips its mask and moves a whole region of dL/dx. Seed 4 keeps every ReLU input >= 1.5e-4 from zero.
SMP_SEEDS = {"mit_b0": 4}
# The smallest input each encoder takes at depth 3 (mit_b0's 8x8-kernel attention reduction needs 32x32).
SMP_SIZES = {"mit_b0": 32}


@pytest.mark.parametrize("encoder", SMP_ENCODERS)
def test_smp_encoder_families_swap_or_say_why(encoder):
    if encoder not in smp.encoders.get_encoder_names():
        pytest.skip(f"the installed segmentation_models_pytorch has no {encoder} encoder")
    torch.manual_seed(SMP_SEEDS.get(encoder, 0))
    model = smp.Unet(encoder, encoder_weights=None, classes=2, encoder_depth=3, decoder_channels=(16, 8, 8))
    model = model.to(DEVICE).eval()
    x = torch.randn(1, 3, SMP_SIZES.get(encoder, 16), SMP_SIZES.get(encoder, 16), device=DEVICE)
    report = check_swap(model, x, modes=("eval",), example_input=x)
    assert report.counts().get("upsample+cat+conv+bn+act", 0) >= 1  # the decoder is fused whatever the encoder
    assert all(why for _, why in report.untraced + report.left_alone)


def test_a_3d_model_is_left_alone_and_the_report_says_so():
    torch.manual_seed(0)
    model = monai_nets.BasicUNet(in_channels=1, out_channels=2, features=(2, 2, 2, 2, 2, 2)).to(DEVICE).eval()  # 3D
    x = torch.randn(1, 1, 32, 32, 32, device=DEVICE)
    expected = model(x)
    _, report = fused_unet.swap(model, x)
    assert not report.fused and not any(report.swapped.values())
    three_d = [what for what, why in report.left_alone if why == "3D: not supported yet"]
    assert sum("(Conv3d)" in what for what in three_d) == 19 and any("(MaxPool3d)" in w for w in three_d)
    assert any("(ConvTranspose3d)" in w for w in three_d) and any("(InstanceNorm3d)" in w for w in three_d)
    assert torch.equal(model(x), expected)


def test_an_upsampling_whose_reader_is_past_a_graph_break_is_reported_as_such():
    # MONAI FlexibleUNet's UpCat up-samples, then breaks the graph (torch.jit.isinstance) before pad + cat + conv:
    # that conv is fused in the next graph; the up-sampling is named by its module, with the real reason.
    torch.manual_seed(0)
    model = monai_nets.FlexibleUNet(in_channels=3, out_channels=2, backbone="efficientnet-b0", pretrained=False,
                                    decoder_channels=(16, 8, 8, 8, 8)).to(DEVICE).eval()
    with fused_unet.force_eager():  # the report does not depend on the backend; the probes run faster so
        _, report = fused_unet.swap(model, torch.randn(1, 3, 32, 32, device=DEVICE))
    assert report.counts()["pad+cat+conv+bn+act"] == 1
    assert ("UpCat.upsample.upsample_non_trainable", "its result leaves this torch.compile graph: the code that "
            "reads it runs past a graph break, in another graph") in report.left_alone
    assert not any(".input_" in what for what, _ in report.left_alone)


class _AllOutputs(torch.nn.Module):
    """A deep-supervision network's outputs (one per decoder level) as one tensor, for the float64 comparison."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.cat([o.flatten(1) for o in self.net(x)], 1)


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_nnunet_plain_conv_unet(deep_supervision):
    # As nnU-Net instantiates it in 2D: Conv2d, InstanceNorm2d(affine, eps 1e-5), LeakyReLU(0.01), strided downsampling.
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet",
                               reason="the compat extra: pip install -e '.[compat]'")
    torch.manual_seed(0)
    net = unet.PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv2d,
                             kernel_sizes=3, strides=[1, 2, 2], n_conv_per_stage=2, num_classes=3,
                             n_conv_per_stage_decoder=2, conv_bias=True, norm_op=torch.nn.InstanceNorm2d,
                             norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                             nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision).to(DEVICE)
    model = _AllOutputs(net) if deep_supervision else net
    x = torch.randn(2, 1, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("train",), example_input=x)
    # Every conv -> InstanceNorm2d -> LeakyReLU is one fused conv, the two stride-2 ones too (the decoder's first
    # reads the transposed conv's output and the skip without their cat).
    assert report.counts() == {"conv+bn+act": 8, "cat+conv+bn+act": 2}
    assert len(report.left_alone) == deep_supervision  # the test wrapper's own cat


@pytest.mark.parametrize("norm", ["instance", ("group", {"num_groups": 4})])
def test_monai_dyn_unet(norm):
    torch.manual_seed(0)
    model = monai_nets.DynUNet(spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                               upsample_kernel_size=[2, 2], filters=[4, 8, 16], norm_name=norm).to(DEVICE)
    x = torch.randn(2, 1, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("train",), example_input=x)
    # conv -> norm -> LeakyReLU in every block (the two stride-2 ones too) and the decoders' cat + conv.
    assert report.counts() == {"conv+bn+act": 8, "cat+conv+bn+act": 2}
    assert not report.left_alone


def test_nnunet_residual_encoder_unet():
    # nnU-Net's recommended ResEnc preset in 2D: BasicBlockD residual blocks (conv-norm-LeakyReLU, conv-norm, + the
    # skip, a 1x1/s2 conv-norm projection where the stage strides), stride-2 first convs, InstanceNorm2d(affine).
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet",
                               reason="the compat extra: pip install -e '.[compat]'")
    torch.manual_seed(0)
    net = unet.ResidualEncoderUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16],
                                   conv_op=torch.nn.Conv2d, kernel_sizes=3, strides=[1, 2, 2],
                                   n_blocks_per_stage=[1, 2, 2], num_classes=3, n_conv_per_stage_decoder=1,
                                   conv_bias=True, norm_op=torch.nn.InstanceNorm2d,
                                   norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                                   nonlin_kwargs={"inplace": True}, deep_supervision=False).to(DEVICE)
    x = torch.randn(2, 1, 16, 16, device=DEVICE)
    report = check_swap(net, x, ("train",), example_input=x)
    # Each block's second conv + norm fuses with its add and LeakyReLU (the add and activation after the fused conv +
    # norm: instance statistics must exist first); the projections are conv + norm.
    assert report.counts() == {"conv+bn+act": 6, "conv+bn+add+act": 5, "conv+bn": 2, "cat+conv+bn+act": 2}
    assert not report.left_alone and _eager_left(net, x, report) == ({}, {})
    # Training: each block's norm, add and LeakyReLU are one kernel; nothing element-wise on an activation is eager.
    assert eager_elementwise(net.train(), x) == {}


def test_monai_dyn_unet_with_residual_blocks():
    torch.manual_seed(0)
    model = monai_nets.DynUNet(spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                               upsample_kernel_size=[2, 2], filters=[4, 8, 16], norm_name="instance",
                               res_block=True).to(DEVICE)
    x = torch.randn(2, 1, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("train",), example_input=x)
    # UnetResBlock: conv-norm-LeakyReLU, conv-norm + the (1x1 conv-norm projected) skip, LeakyReLU.
    assert report.counts() == {"conv+bn+act": 5, "conv+bn+add+act": 3, "conv+bn": 3, "cat+conv+bn+act": 2}
    assert not report.left_alone and _eager_left(model, x, report) == ({}, {})


def test_monai_unetr():
    # UNETR: a ViT encoder (eager: linear layers and attention), UnetrPrUpBlock's 2x2 / stride-2 transposed convs
    # from its hidden states, UnetrUpBlock's transposed conv + cat([up, skip]) + UnetResBlock, whose first conv and
    # 1x1 projection each read the concatenation's two tensors (no cat is built). Its 16x16 / stride-16 patch
    # embedding conv is left to PyTorch, and the report says so.
    torch.manual_seed(0)
    model = monai_nets.UNETR(in_channels=1, out_channels=2, img_size=(16, 16), spatial_dims=2, feature_size=4,
                             hidden_size=16, mlp_dim=32, num_heads=2).to(DEVICE)
    x = torch.randn(2, 1, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("train",), example_input=x)
    assert report.counts() == {"conv+bn+act": 4, "conv+bn+add+act": 8, "conv+bn": 1, "cat+conv+bn+act": 4,
                               "cat+conv+bn": 4, "convtranspose": 10, "conv": 1}
    assert report.left_alone == [("vit.patch_embedding.patch_embeddings (Conv2d)", "stride must be 1 or 2, got 16")]
    counts, expected = _eager_left(model, x, report)
    assert counts == expected == {"conv": 1}


class _Denoiser(torch.nn.Module):
    """A diffusers UNet2DModel at a fixed timestep: the image in, the predicted noise out."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x, 10).sample


def test_diffusers_unet2d_model(monkeypatch):
    # ResnetBlock2D (GroupNorm -> SiLU -> conv, + the time embedding, conv, (x + h) / scale), Downsample2D (3x3/s2
    # conv), Upsample2D (nearest x2 + conv), the skip cats: captured whole by torch.compile.
    diffusers = pytest.importorskip("diffusers", reason="the compat extra: pip install -e '.[compat]'")
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8,
                                down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"))
    model = _Denoiser(net).to(DEVICE)
    x = torch.randn(1, 3, 16, 16, device=DEVICE)
    report = check_swap(model, x, ("train",), example_input=x)
    assert report.traced == ["(whole model) [torch.compile]"]
    # Every conv fused: each block's first conv with its time embedding ([N, C, 1, 1], read with zero strides) and
    # its second with its skip add in the epilogue, the up-sampling conv with its nearest x2. Every GroupNorm -> SiLU
    # (of a block's input, of a sum, of a skip cat) is pending into the conv that reads it; the cats a GroupNorm
    # reads stay PyTorch's, and so does the mid-block attention's GroupNorm (of a [N, C, H*W] sequence).
    assert report.counts() == {"conv+add": 16, "upsample+conv": 1, "conv": 8, "bn+act": 17}
    launches = record_launches(monkeypatch)
    counts, _ = _eager_left(model, x, report)
    assert counts == {"cat": 6, "norm": 1}
    # The 5 blocks whose width changes add a 1x1 conv_shortcut of their input: a second GEMM in conv2's kernel.
    assert sum(bool(kwargs.get("PROJ")) for _, kwargs in launches) == 5
