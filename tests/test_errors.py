"""Bad input gets a ValueError/TypeError that names the argument and what was expected."""
import pytest
import torch

from tests.conftest import DEVICE
from fused_unet import functional as FF


def t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(shape, device=device).to(dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype, device=device)


CONV_CASES = [
    (lambda: FF.conv2d([[1.0]], t(2, 3, 3, 3)), TypeError, "x must be a torch.Tensor"),
    (lambda: FF.conv2d(t(3, 8, 8), t(2, 3, 3, 3)), ValueError, r"x must be 4-D \[N, C, H, W\]"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3)), ValueError, "weight must be 4-D"),
    (lambda: FF.conv2d(t(1, 4, 8, 8), t(2, 3, 3, 3)), ValueError, "weight expects 3 input channels"),
    (lambda: FF.conv2d(t(1, 3, 8, 8, dtype=torch.int32), t(2, 3, 3, 3)), TypeError, "x must be float32, float16"),
    (lambda: FF.conv2d(t(1, 3, 8, 8, dtype=torch.float64), t(2, 3, 3, 3, dtype=torch.float64)), TypeError,
     "x must be float32"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3, dtype=torch.float16)), TypeError, "weight has dtype torch.float16"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3, device="meta")), ValueError, "weight is on meta.*mixed devices"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 2, 2)), ValueError, "odd square kernel"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 5)), ValueError, "odd square kernel"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), stride=2), ValueError, "stride must be 1"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 33, 33)), ValueError, "at most 31x31"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), padding=0), ValueError, "padding must be 'same' or 1"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), t(3)), ValueError, r"bias must have shape \[2\]"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), t(2, dtype=torch.int64)), TypeError, "bias must be float32"),
    (lambda: FF.conv2d(t(1, 0, 8, 8), t(2, 0, 3, 3)), ValueError, "x must have at least one channel"),
    (lambda: FF.conv2d(t(1, 2**16, 2**8, 2**8, device="meta"), t(2, 2**16, 1, 1, device="meta")), ValueError,
     "exceeds 2\\^31"),
    (lambda: FF.conv2d(t(2**14, 1, 2**9, 2**9, device="meta"), t(2, 1, 1, 1, device="meta")), ValueError,
     "N\\*H\\*W pixels"),
]
OTHER_CASES = [
    (lambda: FF.max_pool2x2(t(3, 8, 8)), ValueError, "x must be 4-D"),
    (lambda: FF.max_pool2x2(t(1, 3, 8, 8, dtype=torch.uint8)), TypeError, "x must be float32"),
    (lambda: FF.max_pool2x2(t(1, 3, 1, 8)), ValueError, "at least 2x2"),
    (lambda: FF.conv_transpose2x2(t(1, 3, 4, 4), t(4, 2, 2, 2)), ValueError, "weight expects 4 input channels"),
    (lambda: FF.conv_transpose2x2(t(1, 3, 4, 4), t(3, 2, 3, 3)), ValueError, "2x2 kernel"),
    (lambda: FF.conv_transpose2x2(t(2**12, 1, 2**9, 2**9, device="meta"), t(1, 2, 2, 2, device="meta")), ValueError,
     "output's N\\*H\\*W pixels"),
    (lambda: FF.conv_transpose2x2(t(1, 3, 4, 4), t(3, 2, 2, 2), t(3)), ValueError, r"bias must have shape \[2\]"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), None, "gelu"), ValueError, "activation must be one of"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), None, "leaky_relu", -0.1), ValueError,
     "negative_slope must be >= 0"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), None, "leaky_relu", "0.1"), TypeError,
     "negative_slope must be a float"),
    (lambda: FF.conv2d_pool(t(1, 3, 1, 8), t(2, 3, 3, 3)), ValueError, "at least 2x2"),
    (lambda: FF.concat_conv2d(t(1, 3, 8, 8), t(1, 2, 7, 8), t(2, 5, 3, 3)), ValueError,
     r"up has spatial size \(8, 8\), larger than the skip's \(7, 8\)"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), t(1, 2, 7, 7), t(2, 5, 3, 3), up_mode="nearest"), ValueError,
     r"up up-sampled x2 has spatial size \(8, 8\)"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), t(1, 2, 8, 8), t(2, 5, 3, 3), up_mode="area"), ValueError,
     "up_mode must be one of"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), t(1, 2, 8, 8), t(2, 4, 3, 3), up_mode="bilinear"), ValueError,
     r"weight expects 4 input channels .* up has 3 and skip 2 \(5 concatenated\)"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), t(2, 2, 8, 8), t(2, 5, 3, 3), up_mode="nearest"), ValueError,
     "skip has batch 2"),
    (lambda: FF.concat_conv2d(t(1, 3, 8, 8), t(1, 2, 8, 8, dtype=torch.float16), t(2, 5, 3, 3)), TypeError,
     "skip has dtype torch.float16 but up has"),
    (lambda: FF.concat_conv2d(t(1, 3, 8, 8), t(1, 2, 8, 8, device="meta"), t(2, 5, 3, 3)), ValueError,
     "skip is on meta"),
    (lambda: FF.concat_conv2d(t(1, 3, 8, 8), t(1, 2, 8, 8), t(2, 5, 3, 3), align_corners=1), TypeError,
     "align_corners must be a bool"),
]


@pytest.mark.parametrize("call,error,message", CONV_CASES + OTHER_CASES)
def test_bad_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_outputs_may_pass_2_to_the_31_elements_per_image():
    # A first conv 3 -> 64 at 8192^2 writes 4.3e9 elements per image: its offsets are int64, so it is accepted
    # (shape-only on meta tensors; the GPU session runs it for real).
    x = torch.empty(1, 3, 2**13, 2**13, device="meta", requires_grad=True)
    out = FF.conv2d(x, torch.empty(64, 3, 3, 3, device="meta", requires_grad=True), None, "relu")
    assert out.shape == (1, 64, 2**13, 2**13) and out[0].numel() > 2**31
    out.sum().backward()
