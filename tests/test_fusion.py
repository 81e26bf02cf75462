"""Cross-layer fusion: conv+bias+act+2x2 max-pool in one kernel, and the decoder's conv reading [up, skip] as one
virtual concatenation (with nearest / bilinear up-sampling inside its loads), against float64 eager PyTorch."""
import pytest
import torch

from tests.conftest import DEVICE, DTYPES, LAYOUTS, check_against_float64, make_tensor
import fused_unet
from fused_unet import eager, functional as FF
from fused_unet.utils import saved_activation_bytes

ACTIVATIONS = [None, "relu", "leaky_relu"]
# (batch, C_in, H, W, C_out): odd and even sizes, batch 1 and 3, C_in 1 and 3.
POOL_SHAPES = [(1, 1, 7, 9, 5), (3, 3, 6, 5, 20), (2, 16, 8, 8, 33)]


def _weight(c_out, c_in, dtype, k=3):
    return make_tensor((c_out, c_in, k, k), dtype, requires_grad=True, scale=(c_in * k * k) ** -0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_conv2d_pool_matches_float64(shape, dtype, activation):
    n, c_in, h, w, c_out = shape
    x = make_tensor((n, c_in, h, w), dtype, requires_grad=True)
    weight, b = _weight(c_out, c_in, dtype), make_tensor((c_out,), dtype, requires_grad=True)
    # Low precision: values that tie once rounded pick the first in the window, in PyTorch's own run as here.
    y, pooled = check_against_float64(lambda x, w, b: FF.conv2d_pool(x, w, b, activation, 0.2),
                                      lambda x, w, b: eager.conv2d_pool(x, w, b, activation, 0.2), [x, weight, b], dtype,
                                      baseline=dtype != torch.float32)
    assert y.shape == (n, c_out, h, w) and pooled.shape == (n, c_out, h // 2, w // 2)
    assert pooled.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv2d_pool_any_layout_and_no_bias(layout):
    x = make_tensor((2, 3, 9, 6), layout=layout, requires_grad=True)
    check_against_float64(lambda x, w: FF.conv2d_pool(x, w), lambda x, w: eager.conv2d_pool(x, w, None, "relu"),
                          [x, _weight(4, 3, torch.float32)], torch.float32)


def test_conv2d_pool_ties_and_nan_route_like_max_pool2d():
    # A 1x1 identity conv: the pooled windows see ties (first one wins) and a NaN (it wins), like nn.MaxPool2d.
    x = torch.tensor([[1.0, 1.0, 2.0, 0.5], [0.0, 1.0, 2.0, float("nan")]], device=DEVICE).view(1, 1, 2, 4)
    x = x.requires_grad_()
    weight = torch.ones(1, 1, 1, 1, device=DEVICE, requires_grad=True)
    y, pooled = FF.conv2d_pool(x, weight, None, None)
    ref_x = x.detach().double().requires_grad_()
    ref_y, ref_pooled = eager.conv2d_pool(ref_x, weight.detach().double(), None, None)
    torch.testing.assert_close(pooled.double(), ref_pooled, equal_nan=True)
    grad = torch.tensor([3.0, 5.0], device=DEVICE).view(1, 1, 1, 2)
    (gx,) = torch.autograd.grad(pooled, [x], grad)
    (ref_gx,) = torch.autograd.grad(ref_pooled, [ref_x], grad.double())
    torch.testing.assert_close(gx.double(), ref_gx)


UP_CASES = [(None, False), ("nearest", False), ("bilinear", False), ("bilinear", True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("up_mode,align_corners", UP_CASES)
@pytest.mark.parametrize("up_first", [True, False])
@pytest.mark.parametrize("skip_hw", [(8, 6), (9, 7)])  # equal sizes, and a skip 1 px larger (odd input sizes)
def test_concat_conv2d_matches_float64(up_mode, align_corners, up_first, skip_hw, dtype):
    c_up, c_skip, c_out = 5, 3, 6  # unequal channel counts
    up_hw = (4, 3) if up_mode else (8, 6)
    up = make_tensor((2, c_up, *up_hw), dtype, requires_grad=True)
    skip = make_tensor((2, c_skip, *skip_hw), dtype, "channels_last", requires_grad=True)
    weight, b = _weight(c_out, c_up + c_skip, dtype), make_tensor((c_out,), dtype, requires_grad=True)
    kwargs = dict(up_mode=up_mode, align_corners=align_corners, up_first=up_first)
    out = check_against_float64(
        lambda u, s, w, b: FF.concat_conv2d(u, s, w, b, "leaky_relu", 0.1, **kwargs),
        lambda u, s, w, b: eager.concat_conv2d(u, s, w, b, "leaky_relu", 0.1, up_mode, align_corners, up_first),
        [up, skip, weight, b], dtype)
    assert out.shape == (2, c_out, *skip_hw)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_concat_conv2d_layouts_and_activations(layout, activation):
    up = make_tensor((1, 2, 3, 5), layout=layout, requires_grad=True)
    skip = make_tensor((1, 4, 6, 10), layout=layout, requires_grad=True)
    check_against_float64(
        lambda u, s, w: FF.concat_conv2d(u, s, w, None, activation, up_mode="bilinear"),
        lambda u, s, w: eager.concat_conv2d(u, s, w, None, activation, up_mode="bilinear"),
        [up, skip, _weight(3, 6, torch.float32, k=1)], torch.float32)


@pytest.mark.parametrize("up_mode", ["transpose", "bilinear", "nearest"])
def test_fused_unet_never_concatenates_or_materialises_the_upsampling(monkeypatch, up_mode):
    model = fused_unet.UNet(3, 2, base_channels=4, depth=2, up_mode=up_mode).to(DEVICE)
    x = torch.randn(1, 3, 8, 8, device=DEVICE, requires_grad=True)

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.cat / F.interpolate was called on the fused path")

    monkeypatch.setattr(torch, "cat", forbidden)
    monkeypatch.setattr(torch.nn.functional, "interpolate", forbidden)
    model(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_saved_activations_meet_the_target(dtype):
    # Base 64, depth 4, 256x256, batch 2 measured shape-only on meta tensors: what the Functions save, no data.
    kwargs = dict(in_channels=3, num_classes=2, base_channels=64, depth=4)
    x = torch.empty(2, 3, 256, 256, device="meta", dtype=dtype, requires_grad=True)
    fused = saved_activation_bytes(fused_unet.UNet(**kwargs).to("meta", dtype), x)
    reference = saved_activation_bytes(fused_unet.ReferenceUNet(**kwargs).to("meta", dtype), x)
    assert fused <= 0.72 * reference, f"fused U-Net saves {fused / reference:.3f}x the eager model's activations"


def test_saved_activation_bytes_on_meta_equals_a_real_run():
    model = fused_unet.UNet(3, 2, base_channels=4, depth=2).to(DEVICE)
    x = torch.randn(1, 3, 16, 16, device=DEVICE)
    assert saved_activation_bytes(model, x) == saved_activation_bytes(model.to("meta"), x.to("meta"))
