"""Transposed conv 2x2 stride 2 (+bias, +ReLU) and the up+concat that never calls torch.cat."""
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
@pytest.mark.parametrize("bias,relu", [(True, True), (False, False), (True, False)])
def test_conv_transpose_matches_float64(shape, dtype, bias, relu):
    x, weight, b = _inputs(shape, dtype, bias=bias)
    out = check_against_float64(lambda x, w, b: FF.conv_transpose2x2(x, w, b, relu=relu),
                                lambda x, w, b: eager.conv_transpose2x2(x, w, b, relu=relu), [x, weight, b], dtype)
    assert out.shape == (shape[0], shape[4], 2 * shape[2], 2 * shape[3])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_transpose_any_layout(layout):
    x, weight, b = _inputs((2, 5, 3, 4, 6), torch.float32, layout)
    check_against_float64(lambda x, w, b: FF.conv_transpose2x2(x, w, b, relu=True),
                          lambda x, w, b: eager.conv_transpose2x2(x, w, b, relu=True), [x, weight, b], torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,c_skip", [((1, 8, 3, 5, 4), 4), ((2, 6, 4, 4, 3), 7), ((3, 3, 2, 3, 1), 1)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("relu", [True, False])
def test_up_concat_matches_float64(shape, c_skip, dtype, layout, relu):
    x, weight, b = _inputs(shape, dtype, layout)
    skip = make_tensor((shape[0], c_skip, 2 * shape[2], 2 * shape[3]), dtype, layout, requires_grad=True)
    out = check_against_float64(lambda x, s, w, b: FF.up_concat(x, s, w, b, relu=relu),
                                lambda x, s, w, b: eager.up_concat(x, s, w, b, relu=relu),
                                [x, skip, weight, b], dtype)
    assert out.shape == (shape[0], shape[4] + c_skip, 2 * shape[2], 2 * shape[3])
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_up_concat_never_calls_torch_cat(monkeypatch):
    def no_cat(*args, **kwargs):
        raise AssertionError("torch.cat was called on the fused path")

    monkeypatch.setattr(torch, "cat", no_cat)
    x, weight, b = _inputs((1, 4, 3, 3, 2), torch.float32)
    skip = make_tensor((1, 2, 6, 6), requires_grad=True)
    FF.up_concat(x, skip, weight, b).sum().backward()
    assert skip.grad is not None and x.grad is not None


def test_conv_transpose_empty_batch():
    out = FF.conv_transpose2x2(torch.randn(0, 3, 4, 4, device=DEVICE), torch.randn(3, 2, 2, 2, device=DEVICE))
    assert out.shape == (0, 2, 8, 8)
