"""Stride-2 max-pools, 2x2 and 3x3 with padding 1: values, 1-byte argmax, gradient, floor mode, NaN and ties like
nn.MaxPool2d."""
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import DEVICE, DTYPES, LAYOUTS, check_against_float64, make_tensor
from fused_unet import eager, functional as FF
from fused_unet.kernels import pool


def _pool(window):
    return lambda x: FF.max_pool(x, window)


def _reference(window):
    return lambda x: F.max_pool2d(x, window, stride=2, padding=window - 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 7, 9), (3, 3, 16, 16), (2, 20, 17, 13), (1, 5, 2, 3), (2, 2, 3, 2)])
@pytest.mark.parametrize("window", [2, 3])
def test_max_pool_matches_float64(window, shape, dtype):
    # 3x3: overlapping windows, so an element's gradient sums those of up to four windows.
    x = make_tensor(shape, dtype, requires_grad=True)
    out = check_against_float64(_pool(window), _reference(window), [x], dtype)
    size = [(s // 2) if window == 2 else (s - 1) // 2 + 1 for s in shape[2:]]
    assert out.shape == (shape[0], shape[1], *size)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 1, 6), (1, 2, 5, 1)])
def test_max_pool3x3_of_one_pixel_high_or_wide_images(shape):
    check_against_float64(_pool(3), _reference(3), [make_tensor(shape, requires_grad=True)], torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("window", [2, 3])
def test_max_pool_any_layout_keeps_memory_format(layout, window):
    x = make_tensor((2, 6, 9, 10), torch.float32, layout, requires_grad=True)
    out = check_against_float64(_pool(window), _reference(window), [x], torch.float32)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()


def test_max_pool_argmax_is_one_byte_and_points_at_the_max():
    x = torch.tensor([[1.0, 5.0], [3.0, 2.0]], device=DEVICE).reshape(1, 1, 2, 2)
    y, argmax = pool.max_pool_forward(x, 2)
    assert argmax.dtype == torch.uint8 and argmax.item() == 1 and y.item() == 5.0
    y, argmax = pool.max_pool_forward(x, 3)  # the 3x3 window of (0, 0) starts in the padding: dy * 3 + dx = 4 + 1
    assert argmax.item() == 5 and y.item() == 5.0


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


def test_max_pool3x3_nan_ties_and_all_minus_infinity_like_torch():
    # Overlapping windows share elements; a window of -inf only (and padding) gives its first element inside x the
    # gradient, as PyTorch's scan does, never a padding position.
    inf, nan = float("inf"), float("nan")
    for rows in ([[-inf, -inf, 1.0], [2.0, 2.0, nan], [2.0, 0.0, 5.0]], [[-inf] * 3] * 3):
        x = torch.tensor([[rows]], device=DEVICE, requires_grad=True)
        xr = x.detach().clone().requires_grad_()
        out, ref = FF.max_pool(x, 3), _reference(3)(xr)
        torch.testing.assert_close(out, ref, equal_nan=True)
        out.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(x.grad, xr.grad)


def test_max_pool_rejects_other_windows():
    with pytest.raises(ValueError, match="window must be 2 or 3"):
        FF.max_pool(make_tensor((1, 1, 4, 4)), 4)
    with pytest.raises(ValueError, match=r"window must be one of \[2, 3\], got 5"):
        pool.max_pool_forward(make_tensor((1, 1, 4, 4)), 5)


def test_max_pool_empty_batch():
    assert FF.max_pool2x2(torch.randn(0, 3, 4, 4, device=DEVICE)).shape == (0, 3, 2, 2)
    assert FF.max_pool(torch.randn(0, 3, 5, 4, device=DEVICE), 3).shape == (0, 3, 3, 2)
