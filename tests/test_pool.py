"""2x2 stride-2 max-pool: values, 1-byte argmax, gradient, floor mode, NaN and ties like nn.MaxPool2d."""
import pytest
import torch

from tests.conftest import DEVICE, DTYPES, LAYOUTS, check_against_float64, make_tensor
from fused_unet import eager, functional as FF
from fused_unet.kernels import pool


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 7, 9), (3, 3, 16, 16), (2, 20, 17, 13), (1, 5, 2, 3), (2, 2, 3, 2)])
def test_max_pool_matches_float64(shape, dtype):
    x = make_tensor(shape, dtype, requires_grad=True)
    out = check_against_float64(FF.max_pool2x2, eager.max_pool2x2, [x], dtype)
    assert out.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_any_layout_keeps_memory_format(layout):
    x = make_tensor((2, 6, 9, 10), torch.float32, layout, requires_grad=True)
    out = check_against_float64(FF.max_pool2x2, eager.max_pool2x2, [x], torch.float32)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()


def test_max_pool_argmax_is_one_byte_and_points_at_the_max():
    x = torch.tensor([[1.0, 5.0], [3.0, 2.0]], device=DEVICE).reshape(1, 1, 2, 2)
    y, argmax = pool.max_pool2x2_forward(x)
    assert argmax.dtype == torch.uint8 and argmax.item() == 1 and y.item() == 5.0


def test_max_pool_nan_and_ties_like_torch():
    x = torch.tensor([[[[2.0, 2.0, 1.0, float("nan")],
                        [1.0, 2.0, float("nan"), 0.0]]]], device=DEVICE, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    out, ref = FF.max_pool2x2(x), eager.max_pool2x2(xr)
    torch.testing.assert_close(out, ref, equal_nan=True)
    out.sum().backward()
    ref.sum().backward()
    # Ties: the first maximum in scan order gets the gradient; NaN: the last NaN does, as in PyTorch.
    torch.testing.assert_close(x.grad, xr.grad)


def test_max_pool_empty_batch():
    assert FF.max_pool2x2(torch.randn(0, 3, 4, 4, device=DEVICE)).shape == (0, 3, 2, 2)
