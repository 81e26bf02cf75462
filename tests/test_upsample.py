"""The adjoint of x2 up-sampling (the concatenating conv's backward into ``up``): our gather kernel against
PyTorch's float64 autograd of F.interpolate, at edge sizes; the conv of an up-sampled tensor without a skip; and
whole U-Net training steps that repeat bit for bit under torch.use_deterministic_algorithms(True)."""
import pytest
import torch
import torch.nn.functional as F

import fused_unet
from tests.conftest import DEVICE, DTYPES, assert_close, check_against_float64, make_tensor
from fused_unet import eager, functional as FF
from fused_unet.kernels import upsample

MODES = [("nearest", False), ("bilinear", False), ("bilinear", True)]


@pytest.mark.parametrize("up_mode,align_corners", MODES)
@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (2, 2), (3, 4), (7, 2), (6, 9)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_upsample_adjoint_matches_float64(up_mode, align_corners, hw, layout):
    x = torch.zeros(2, 3, *hw, device=DEVICE, dtype=torch.float64, requires_grad=True)
    grad = make_tensor((2, 3, 2 * hw[0], 2 * hw[1]), layout=layout)
    kwargs = dict(align_corners=align_corners) if up_mode == "bilinear" else {}
    (ref,) = torch.autograd.grad(F.interpolate(x, scale_factor=2, mode=up_mode, **kwargs), [x], grad.double())
    out = upsample.upsample2x_backward(grad, list(x.shape), up_mode, align_corners)
    assert_close(out, ref, torch.float32, f"{up_mode} align_corners={align_corners} {hw}")
    assert torch.equal(out, upsample.upsample2x_backward(grad, list(x.shape), up_mode, align_corners))


@pytest.mark.parametrize("up_mode,align_corners", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_upsampling_conv_without_a_skip_matches_float64(up_mode, align_corners, dtype, layout):
    # A decoder step with no skip connection (smp's last block): the conv reads up-sampled x2 up, never stored.
    up = make_tensor((2, 5, 4, 3), dtype, layout, requires_grad=True)
    weight = make_tensor((6, 5, 3, 3), dtype, requires_grad=True, scale=0.3)
    bias = make_tensor((6,), dtype, requires_grad=True)
    out = check_against_float64(
        lambda u, w, b: FF.concat_conv2d(u, None, w, b, "relu", up_mode=up_mode, align_corners=align_corners),
        lambda u, w, b: eager.concat_conv2d(u, None, w, b, "relu", 0.01, up_mode, align_corners),
        [up, weight, bias], dtype)
    assert out.shape == (2, 6, 8, 6)


def _training_step(options, x, target):
    torch.manual_seed(0)
    model = fused_unet.UNet(3, 3, base_channels=4, depth=1, **options).to(DEVICE)
    torch.nn.functional.cross_entropy(model(x), target).backward()
    buffers = [b.clone() for b in model.buffers()]
    return [p.grad for p in model.parameters()] + buffers


@pytest.mark.parametrize("options", [dict(up_mode=m, norm=n) for m in ("transpose", "bilinear", "nearest")
                                     for n in (None, "batch")], ids=str)
def test_unet_training_step_is_deterministic(options):
    x = make_tensor((2, 3, 12, 10))
    target = torch.randint(0, 3, (2, 12, 10), device=DEVICE)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = _training_step(options, x, target), _training_step(options, x, target)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second))
