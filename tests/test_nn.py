"""Drop-in modules: same state_dict/repr/init as the torch module, fused results, fallback with one warning."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import DEVICE, make_tensor
import fused_unet
from fused_unet import eager, nn as fnn


def _same_params(fused, plain):
    plain.load_state_dict(fused.state_dict())
    return plain


def test_conv2d_is_a_drop_in_nn_conv2d():
    torch.manual_seed(0)
    fused = fnn.Conv2d(3, 8, 3, padding=1, device=DEVICE)
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 8, 3, padding=1, device=DEVICE)
    assert isinstance(fused, nn.Conv2d)
    assert repr(fused) == repr(plain)
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fused.parameters(), plain.parameters()))  # same init
    x = make_tensor((2, 3, 7, 6))
    torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-5)


def test_conv2d_activation_and_same_padding():
    fused = fnn.Conv2d(4, 5, 3, padding="same", activation="relu", device=DEVICE)
    plain = _same_params(fused, nn.Conv2d(4, 5, 3, padding="same", device=DEVICE))
    assert "activation='relu'" in repr(fused)
    x = make_tensor((1, 4, 5, 5))
    torch.testing.assert_close(fused(x), torch.relu(plain(x)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="activation must be one of"):
        fnn.Conv2d(4, 5, 3, activation="tanh")


@pytest.mark.parametrize("kwargs", [dict(stride=3, padding=1), dict(padding=(1, 0)), dict(dilation=2, padding=2),
                                    dict(groups=2, padding=1), dict(padding=1, padding_mode="reflect")])
def test_conv2d_unsupported_config_falls_back_with_one_warning(kwargs):
    fused = fnn.Conv2d(4, 6, 3, activation="relu", device=DEVICE, **kwargs)
    plain = _same_params(fused, nn.Conv2d(4, 6, 3, device=DEVICE, **kwargs))
    x = make_tensor((1, 4, 8, 8))
    with pytest.warns(UserWarning, match="using the torch.nn forward"):
        out = fused(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused(x)  # warned once per module
    torch.testing.assert_close(out, torch.relu(plain(x)))


def test_conv2d_float64_input_falls_back():
    fused = fnn.Conv2d(2, 3, 3, padding=1, device=DEVICE).double()
    with pytest.warns(UserWarning, match="dtype torch.float64"):
        assert fused(make_tensor((1, 2, 4, 4), torch.float64)).dtype == torch.float64


def test_max_pool2d_drop_in():
    fused, plain = fnn.MaxPool2d(2), nn.MaxPool2d(2)
    assert repr(fused) == repr(plain) and isinstance(fused, nn.MaxPool2d)
    x = make_tensor((2, 3, 7, 9))
    torch.testing.assert_close(fused(x), plain(x))
    odd = fnn.MaxPool2d(3, stride=1)
    with pytest.warns(UserWarning, match="kernel_size 3"):
        torch.testing.assert_close(odd(x), nn.MaxPool2d(3, stride=1)(x))


def test_conv_transpose2d_drop_in_and_fallback():
    fused = fnn.ConvTranspose2d(4, 3, 2, stride=2, device=DEVICE)
    plain = _same_params(fused, nn.ConvTranspose2d(4, 3, 2, stride=2, device=DEVICE))
    assert repr(fused) == repr(plain) and list(fused.state_dict()) == list(plain.state_dict())
    x = make_tensor((2, 4, 3, 5))
    torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-5)
    dilated = fnn.ConvTranspose2d(4, 3, 3, stride=2, dilation=2, device=DEVICE)
    with pytest.warns(UserWarning, match="dilation"):
        dilated(x)


@pytest.mark.parametrize("kernel,stride,padding,output_padding", [(3, 2, 1, 1), (4, 2, 1, 0), (3, 1, 1, 0)])
def test_any_conv_transpose2d_module_runs_the_kernels(kernel, stride, padding, output_padding):
    # MONAI's up-sampling (3x3 / 2 / output_padding 1), Linknet's (4x4 / 2 / 1): no fallback, torch.nn's results.
    fused = fnn.ConvTranspose2d(4, 3, kernel, stride, padding, output_padding, device=DEVICE)
    plain = _same_params(fused, nn.ConvTranspose2d(4, 3, kernel, stride, padding, output_padding, device=DEVICE))
    assert fused._config_unsupported() is None
    x = make_tensor((2, 4, 3, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-5)


def test_conv2d_relu_pool_module_returns_skip_and_pooled():
    fused = fnn.Conv2dReLUPool(3, 4, 3, padding=1, device=DEVICE)
    plain = _same_params(fused, nn.Conv2d(3, 4, 3, padding=1, device=DEVICE))
    assert isinstance(fused, nn.Conv2d) and list(fused.state_dict()) == list(plain.state_dict())
    x = make_tensor((2, 3, 7, 5))
    skip, pooled = fused(x)
    ref = torch.relu(plain(x))
    torch.testing.assert_close(skip, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, F.max_pool2d(ref, 2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2x2"):
        fused(make_tensor((1, 3, 1, 4)))


@pytest.mark.parametrize("up_mode", [None, "nearest", "bilinear"])
@pytest.mark.parametrize("up_first", [True, False])
def test_up_concat_conv2d_module(up_mode, up_first):
    up_hw = (3, 2) if up_mode else (6, 4)
    fused = fnn.UpConcatConv2d(5, 4, up_mode=up_mode, up_first=up_first, device=DEVICE)
    plain = _same_params(fused, nn.Conv2d(5, 4, 3, padding=1, device=DEVICE))
    assert f"up_mode={up_mode!r}" in repr(fused) and list(fused.state_dict()) == list(plain.state_dict())
    up, skip = make_tensor((2, 2, *up_hw)), make_tensor((2, 3, 7, 5))
    ref = eager.upsample_pad(up, 7, 5, up_mode)
    ref = torch.relu(plain(torch.cat([ref, skip] if up_first else [skip, ref], 1)))
    torch.testing.assert_close(fused(up, skip), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="up_mode must be one of"):
        fnn.UpConcatConv2d(5, 4, up_mode="bicubic")


def test_leaky_relu_module_and_negative_slope_fallback():
    fused = fnn.Conv2d(3, 4, 3, padding=1, activation="leaky_relu", negative_slope=0.2, device=DEVICE)
    plain = _same_params(fused, nn.Conv2d(3, 4, 3, padding=1, device=DEVICE))
    assert "activation='leaky_relu', negative_slope=0.2" in repr(fused)
    x = make_tensor((1, 3, 5, 5))
    torch.testing.assert_close(fused(x), F.leaky_relu(plain(x), 0.2), atol=1e-5, rtol=1e-5)
    fused.negative_slope = -0.5
    with pytest.warns(UserWarning, match="negative_slope -0.5 < 0"):
        torch.testing.assert_close(fused(x), F.leaky_relu(plain(x), -0.5), atol=1e-5, rtol=1e-5)


def test_backend_rule_and_force_eager():
    assert fused_unet.backend("cpu") in ("triton-interpreter", "eager")
    assert fused_unet.backend(torch.zeros(1, device=DEVICE)) in ("triton", "triton-interpreter")
    with fused_unet.force_eager():
        assert fused_unet.backend(DEVICE) == "eager"
        assert "eager PyTorch fallback" in fused_unet.describe(DEVICE)
    assert fused_unet.backend(DEVICE) != "eager"


def test_eager_fallback_gives_the_same_answer():
    conv = fnn.Conv2d(3, 4, 3, padding=1, activation="relu", device=DEVICE)
    x = make_tensor((1, 3, 6, 6))
    with fused_unet.force_eager():
        eager_out = conv(x)
    torch.testing.assert_close(conv(x), eager_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=1, stride=2),
                                    dict(kernel_size=7, stride=2, padding=3), dict(kernel_size=3, padding=0),
                                    dict(kernel_size=4, stride=2, padding=1)])
@pytest.mark.parametrize("norm", [None, "batch", "instance"])
def test_strided_and_padded_conv2d_module_matches_torch(kwargs, norm):
    # ResNet / nnU-Net / diffusers down-sampling convs (with their norm, training mode): fused, no fallback.
    fused = fnn.Conv2d(3, 16, activation="relu", norm=norm, device=DEVICE, **kwargs)
    plain = nn.Conv2d(3, 16, device=DEVICE, **kwargs)
    plain.load_state_dict({k: v for k, v in fused.state_dict().items() if not k.startswith("bn.")})
    bn = copy.deepcopy(fused.bn) if norm else nn.Identity()
    x = make_tensor((2, 3, 9, 11), requires_grad=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*using the torch.nn forward")  # no fallback
        out = fused(x)
    ref = torch.relu(bn(plain(x)))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [x, fused.weight], g)
    ref_grads = torch.autograd.grad(ref, [x, plain.weight], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
