"""PReLU after a norm (MONAI's default activation): its learned slopes (one, or one per channel) read by every
consumer of the pending norm, their gradient summed by the norm's backward kernel, against float64 eager PyTorch;
swap's norm -> PReLU pattern, eval-mode norms before activations a conv's epilogue cannot run, and the error
cases."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fused_unet import eager, functional as FF, nn as fnn
from fused_unet.models import ReferenceConvAct
from tests.conftest import DEVICE, check_against_float64, compare_step, make_tensor, model_triplet
from tests.test_swap import check_swap, eager_elementwise, eager_ops


def _norm(kind, y, gamma, beta, slope):
    if kind == "batch":
        return FF.batch_norm(*FF.conv2d_stats(y[0], y[1]), gamma, beta, activation="prelu", negative_slope=slope)
    conv = FF.conv2d(y[0], y[1])
    if kind == "instance":
        return FF.instance_norm(conv, gamma, beta, activation="prelu", negative_slope=slope)
    return FF.group_norm(conv, 2, gamma, beta, activation="prelu", negative_slope=slope)


def _norm_reference(kind, y, gamma, beta):
    if kind == "batch":
        return F.batch_norm(y, None, None, gamma, beta, training=True)
    if kind == "instance":
        return F.instance_norm(y, weight=gamma, bias=beta)
    return F.group_norm(y, 2, gamma, beta)


# fp16 with a per-sample norm of 12x11 pixels at batch 2: interpreted tiles straddle the images (image-pair tables).
@pytest.mark.parametrize("kind,slopes,dtype", [("batch", 1, torch.float32), ("instance", 6, torch.float32),
                                               ("group", 6, torch.float16), ("batch", 6, torch.float16)])
def test_prelu_after_a_norm_read_by_every_consumer_matches_float64(kind, slopes, dtype):
    x = make_tensor((2, 3, 12, 11), dtype, requires_grad=True)
    w1, w2 = (make_tensor(s, dtype, requires_grad=True, scale=0.5) for s in ((6, 3, 3, 3), (4, 6, 3, 3)))
    wt, wt3 = (make_tensor(s, dtype, requires_grad=True, scale=0.5) for s in ((6, 4, 2, 2), (6, 4, 3, 3)))
    gamma = (torch.rand(6, device=DEVICE) + 0.5).to(dtype).requires_grad_()
    beta = make_tensor((6,), dtype, requires_grad=True)
    slope = (torch.rand(slopes, device=DEVICE) * 0.6 - 0.1).to(dtype).requires_grad_()  # a negative slope too

    def fused(x, w1, gamma, beta, slope, w2, wt, wt3):
        z = _norm(kind, (x, w1), gamma, beta, slope)
        return (FF.conv2d(z, w2, None, "relu"), FF.conv2d(z, w2, stride=2, padding=1), FF.max_pool2x2(z),
                FF.max_pool(z, 3), FF.conv_transpose2x2(z, wt), FF.conv_transpose2d(z, wt3, None, 2, 1, 1),
                z.materialize())

    def reference(x, w1, gamma, beta, slope, w2, wt, wt3):
        z = F.prelu(_norm_reference(kind, F.conv2d(x, w1, padding=1), gamma, beta), slope)
        return (eager.conv2d(z, w2, None, "relu"), F.conv2d(z, w2, stride=2, padding=1), F.max_pool2d(z, 2),
                F.max_pool2d(z, 3, 2, 1), F.conv_transpose2d(z, wt, stride=2),
                F.conv_transpose2d(z, wt3, stride=2, padding=1, output_padding=1), z)

    check_against_float64(fused, reference, [x, w1, gamma, beta, slope, w2, wt, wt3], dtype,
                          baseline=dtype != torch.float32)


@pytest.mark.parametrize("up_mode", [None, "nearest"])
def test_concatenation_of_two_prelus_with_their_own_slopes_matches_float64(up_mode):
    up0 = make_tensor((2, 4, 5, 6) if up_mode else (2, 4, 10, 12), requires_grad=True)
    skip0 = make_tensor((2, 3, 10, 12), requires_grad=True)
    w_up, w_skip, w_cat = (make_tensor(s, requires_grad=True, scale=0.5)
                           for s in ((4, 4, 1, 1), (3, 3, 1, 1), (5, 7, 3, 3)))
    up_slope, skip_slope = (torch.rand(c, device=DEVICE).requires_grad_() for c in (4, 3))

    def fused(up0, skip0, w_up, w_skip, w_cat, up_slope, skip_slope):
        up = FF.instance_norm(FF.conv2d(up0, w_up), activation="prelu", negative_slope=up_slope)
        skip = FF.batch_norm(*FF.conv2d_stats(skip0, w_skip), activation="prelu", negative_slope=skip_slope)
        return FF.concat_conv2d(up, skip, w_cat, None, None, up_mode=up_mode)

    def reference(up0, skip0, w_up, w_skip, w_cat, up_slope, skip_slope):
        up = F.prelu(F.instance_norm(F.conv2d(up0, w_up)), up_slope)
        skip = F.prelu(F.batch_norm(F.conv2d(skip0, w_skip), None, None, training=True), skip_slope)
        return eager.concat_conv2d(up, skip, w_cat, None, None, 0.0, up_mode)

    check_against_float64(fused, reference, [up0, skip0, w_up, w_skip, w_cat, up_slope, skip_slope], torch.float32)


def test_prelu_errors_name_the_argument():
    y = make_tensor((1, 4, 5, 5))
    with pytest.raises(TypeError, match="prelu's negative_slope must be its weight"):
        FF.group_norm(y, 2, activation="prelu", negative_slope=0.25)
    with pytest.raises(ValueError, match="1 or 4 slopes"):
        FF.group_norm(y, 2, activation="prelu", negative_slope=torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match="prelu fuse after a norm"):
        FF.conv2d(make_tensor((1, 3, 5, 5)), make_tensor((4, 3, 3, 3)), activation="prelu",
                  negative_slope=torch.ones(1, device=DEVICE))
    bad = FF.Normalized(y, torch.ones(4, device=DEVICE), torch.zeros(4, device=DEVICE), "prelu",
                        torch.ones(4, device=DEVICE, dtype=torch.float64))
    with pytest.raises(ValueError, match="x.negative_slope of a prelu must be float32"):
        FF.max_pool2x2(bad)


class _ConvNormAct(nn.Module):
    """MONAI's Convolution block order: conv -> norm -> Dropout(0) -> activation, twice."""

    def __init__(self, norm, act):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)
        self.norm1, self.norm2 = norm(6), norm(4)
        self.drop = nn.Dropout(0.0)
        self.act1, self.act2 = act(6), act(4)

    def forward(self, x):
        return self.act2(self.norm2(self.conv2(self.act1(self.drop(self.norm1(self.conv1(x)))))))


@pytest.mark.parametrize("norm,act,modes", [
    (lambda c: nn.InstanceNorm2d(c, affine=True), lambda c: nn.PReLU(), ("train",)),
    (nn.BatchNorm2d, lambda c: nn.PReLU(c, init=0.1), ("train", "eval")),
    # Running statistics fold into a conv, but a SiLU after them needs its input: the norm stays pending.
    (nn.BatchNorm2d, lambda c: nn.SiLU(), ("eval",))])
def test_swap_fuses_a_norm_and_its_prelu(norm, act, modes):
    torch.manual_seed(0)
    model = _ConvNormAct(norm, act).to(DEVICE)
    for bn in (model.norm1, model.norm2):
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 9, 7, device=DEVICE)
    report = check_swap(model, x, modes, example_input=x)
    assert report.counts() == {"conv+bn+act": 2} and not report.left_alone
    model.eval()
    assert eager_ops(model, x) == {} and eager_elementwise(model, x) == {}



@pytest.mark.parametrize("norm,modes", [("instance", ("train",)), ("batch", ("train", "eval"))])
def test_module_with_a_prelu_child_matches_float64(norm, modes):
    # fused_unet.nn.Conv2d(activation="prelu") holds its slope as a child nn.PReLU (the state_dict of conv + norm +
    # PReLU); the slope's gradient comes from the norm's backward kernel; BatchNorm's running statistics stay pending
    # in eval (the conv's epilogue cannot run a PReLU).
    torch.manual_seed(0)
    options = dict(padding=1, norm=norm, activation="prelu", negative_slope=0.01)
    conv = fnn.Conv2d(3, 5, 3, **options).to(DEVICE)
    assert "prelu.weight" in conv.state_dict() and "activation='prelu'" in repr(conv)
    with torch.no_grad():
        conv.prelu.weight.fill_(-0.3)
        if norm == "batch":
            conv.bn.running_mean.normal_()
            conv.bn.running_var.uniform_(0.5, 2.0)
    models = model_triplet(conv, ReferenceConvAct(3, 5, 3, **options).to(DEVICE))
    for mode in modes:
        for m in models:
            m.train(mode == "train")
        compare_step(models, torch.randn(2, 3, 9, 7, device=DEVICE), torch.randn(2, 5, 9, 7, device=DEVICE), mode)
