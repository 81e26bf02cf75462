"""Transposed conv 2x2 stride 2 (+bias, +activation): forward and every gradient against float64."""
import pytest
import torch

from tests.conftest import DEVICE, DTYPES, LAYOUTS, check_against_float64, make_tensor
from fused_unet import eager, functional as FF

# (batch, C_in, H, W, C_out)
SHAPES = [(1, 1, 3, 5, 4), (3, 3, 8, 8, 17), (2, 24, 5, 4, 6), (1, 40, 1, 1, 33)]


def _inputs(shape, dtype, layout="contiguous", bias=True):
    n, c_in, h, w, c_out = shape
    x = make_tensor((n, c_in, h, w), dtype, layout, requires_grad=True)
    weight = make_tensor((c_in, c_out, 2, 2), dtype, requires_grad=True, scale=c_in ** -0.5)
    b = make_tensor((c_out,), dtype, requires_grad=True) if bias else None
    return x, weight, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias,activation", [(True, "relu"), (False, None), (True, "leaky_relu")])
def test_conv_transpose_matches_float64(shape, dtype, bias, activation):
    x, weight, b = _inputs(shape, dtype, bias=bias)
    out = check_against_float64(lambda x, w, b: FF.conv_transpose2x2(x, w, b, activation, 0.2),
                                lambda x, w, b: eager.conv_transpose2x2(x, w, b, activation, 0.2), [x, weight, b],
                                dtype)
    assert out.shape == (shape[0], shape[4], 2 * shape[2], 2 * shape[3])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_transpose_any_layout(layout):
    x, weight, b = _inputs((2, 5, 3, 4, 6), torch.float32, layout)
    check_against_float64(lambda x, w, b: FF.conv_transpose2x2(x, w, b, "relu"),
                          lambda x, w, b: eager.conv_transpose2x2(x, w, b, "relu"), [x, weight, b], torch.float32)


def test_conv_transpose_empty_batch():
    out = FF.conv_transpose2x2(torch.randn(0, 3, 4, 4, device=DEVICE), torch.randn(3, 2, 2, 2, device=DEVICE))
    assert out.shape == (0, 2, 8, 8)
