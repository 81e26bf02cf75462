"""Edge shapes behave like PyTorch: an empty batch (forward and backward, weight gradients zero), and 1x1 / 1xW
images through every op and the whole U-Net (values and gradients against float64)."""
import pytest
import torch

import fused_unet
from tests.conftest import DEVICE, MODEL_TOLERANCE_FACTOR, check_against_float64, make_tensor
from fused_unet import eager, functional as FF

OPS = {
    "conv2d": (lambda x, w: FF.conv2d(x, w, None, "relu"), lambda x, w: eager.conv2d(x, w, None, "relu"), 3),
    "conv2d_pool": (lambda x, w: FF.conv2d_pool(x, w), lambda x, w: eager.conv2d_pool(x, w, None, "relu"), 3),
    "concat_conv2d bilinear": (lambda x, w: FF.concat_conv2d(x[:, :, ::2, ::2], x, w, up_mode="bilinear"),
                               lambda x, w: eager.concat_conv2d(x[:, :, ::2, ::2], x, w, None, "relu",
                                                                up_mode="bilinear"), 6),
    "conv_transpose2x2": (lambda x, w: FF.conv_transpose2x2(x, w[:3, :, :2, :2], None, "relu"),
                          lambda x, w: eager.conv_transpose2x2(x, w[:3, :, :2, :2], None, "relu"), 3),
    "max_pool2x2": (lambda x, w: FF.max_pool2x2(x) * w.sum(), lambda x, w: eager.max_pool2x2(x) * w.sum(), 3),
}


def _inputs(shape, op):
    return [make_tensor(shape, requires_grad=True), make_tensor((4, OPS[op][2], 3, 3), requires_grad=True, scale=0.2)]


@pytest.mark.parametrize("op", OPS)
def test_empty_batch_like_pytorch(op):
    fused, reference, _ = OPS[op]
    check_against_float64(fused, reference, _inputs((0, 3, 6, 6), op), torch.float32)


@pytest.mark.parametrize("op", ["conv2d", "concat_conv2d bilinear", "conv_transpose2x2"])
@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (9, 1)])
def test_one_pixel_high_or_wide_images(op, hw):
    fused, reference, _ = OPS[op]
    if op.startswith("concat"):
        hw = (2 * hw[0], 2 * hw[1])  # the up source is the skip at half size
    check_against_float64(fused, reference, _inputs((2, 3, *hw), op), torch.float32)


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (1, 3, 1, 1), (2, 3, 1, 7)])
@pytest.mark.parametrize("norm", [None, "batch"])
def test_unet_on_edge_shapes(shape, norm):
    model = fused_unet.UNet(3, 2, base_channels=4, depth=2, norm=norm).to(DEVICE).eval()
    reference = fused_unet.ReferenceUNet(**model.config).to(DEVICE, torch.float64).eval()
    reference.load_state_dict(model.state_dict())
    x = make_tensor(shape, requires_grad=True)
    check_against_float64(model, reference, [x], torch.float32, factor=MODEL_TOLERANCE_FACTOR)
