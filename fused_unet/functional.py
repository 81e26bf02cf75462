"""The functional API: validate, apply autocast, then run the fused autograd Function or the eager twin
(see ``fused_unet.dispatch`` for the rule). Every op is differentiable w.r.t. every tensor input."""
import torch

from fused_unet import eager
from fused_unet.dispatch import backend
from fused_unet.kernels import checks


def _functions():
    # Imported on first fused call: Triton reads TRITON_INTERPRET when the kernels are decorated, and the
    # eager fallback must work where Triton is not installed.
    from fused_unet import functions

    return functions


def autocast_enabled(device_type):
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _autocast(*tensors):
    """Cast floating tensors to the autocast dtype when autocast is on, as it does for nn.Conv2d."""
    first = tensors[0]
    if not isinstance(first, torch.Tensor) or not autocast_enabled(first.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def conv2d(x, weight, bias=None, relu=False, *, stride=1, padding="same"):
    """``relu(conv2d(x, weight, bias, padding=k//2))`` for an odd square kernel, stride 1, groups 1.
    x: [N, C_in, H, W] (any strides), weight: [C_out, C_in, k, k]; returns channels_last [N, C_out, H, W]."""
    x, weight, bias = _autocast(x, weight, bias)
    checks.check_conv2d(x, weight, bias, stride, padding)
    if backend(x) == "eager":
        return eager.conv2d(x, weight, bias, relu)
    return _functions().Conv2dBiasReLU.apply(x, weight, bias, bool(relu))


def max_pool2x2(x):
    """``max_pool2d(x, 2)``: floor mode, NaN propagates; keeps x's memory format."""
    checks.check_max_pool2x2(x)
    if backend(x) == "eager":
        return eager.max_pool2x2(x)
    return _functions().MaxPool2x2.apply(x)


def conv_transpose2x2(x, weight, bias=None, relu=False):
    """``relu(conv_transpose2d(x, weight, bias, stride=2))`` for weight [C_in, C_out, 2, 2]."""
    x, weight, bias = _autocast(x, weight, bias)
    checks.check_conv_transpose2x2(x, weight, bias)
    if backend(x) == "eager":
        return eager.conv_transpose2x2(x, weight, bias, relu)
    return _functions().ConvTranspose2x2.apply(x, weight, bias, bool(relu))


def up_concat(x, skip, weight, bias=None, relu=True):
    """``cat([relu(conv_transpose2x2(x, weight, bias)), skip], dim=1)`` without calling torch.cat.
    skip: [N, C_skip, 2H, 2W]; returns channels_last [N, C_out + C_skip, 2H, 2W]."""
    x, skip, weight, bias = _autocast(x, skip, weight, bias)
    checks.check_up_concat(x, skip, weight, bias)
    if backend(x) == "eager":
        return eager.up_concat(x, skip, weight, bias, relu)
    return _functions().UpConcat.apply(x, skip, weight, bias, bool(relu))
