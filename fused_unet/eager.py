"""Plain-PyTorch twins of every fused op: the eager fallback, and the one place that says what an op means."""
import torch
import torch.nn.functional as F

from fused_unet.kernels.codes import POOL_PADDING


def activate(y, activation=None, negative_slope=0.01):
    """The activation table (kernels.codes.ACTIVATIONS) in torch; a PReLU's ``negative_slope`` is its weight (1 or C
    slopes)."""
    if activation == "prelu":
        return F.prelu(y, negative_slope.to(y.dtype))
    if activation == "relu":
        return F.relu(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, negative_slope)
    if activation == "silu":
        return F.silu(y)
    if activation in ("gelu", "gelu_tanh"):
        return F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    return y


def conv2d(x, weight, bias=None, activation=None, negative_slope=0.01, *, stride=1, padding=None, residual=None):
    """``padding`` None: 'same' (k // 2); ``residual`` is added before the activation."""
    padding = weight.shape[-1] // 2 if padding is None else padding
    y = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    return activate(y if residual is None else y + residual, activation, negative_slope)


def batch_norm_scale_shift(y, weight, bias, eps):
    """(scale, shift, mean, biased var) per channel of a training-mode batch norm of y, fp32, differentiable."""
    y = y.float()
    mean, var = y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=False)
    scale = weight.float() * torch.rsqrt(var + eps)
    return scale, bias.float() - mean * scale, mean.detach(), var.detach()


def group_norm_scale_shift(y, groups, weight, bias, eps):
    """(scale, shift) per (image, channel) [N, C] and (mean, biased var) per (image, group) [N, groups] of a group
    norm of y (instance norm: ``groups`` = C), fp32, differentiable."""
    batch, c = y.shape[:2]
    parts = y.float().reshape(batch, groups, -1)
    var, mean = torch.var_mean(parts, dim=2, correction=0)
    invstd = torch.rsqrt(var + eps).repeat_interleave(c // groups, dim=1)
    scale = weight.float() * invstd
    return scale, bias.float() - mean.repeat_interleave(c // groups, dim=1) * scale, mean.detach(), var.detach()


def pending_norm(y, scale, shift, activation=None, negative_slope=0.01):
    """act(y * scale + shift) in y's dtype: a norm (scale, shift from its statistics: per channel [C], or per image
    and channel [N, C]) and its activation, as the fused kernels apply them while reading y."""
    view = (-1 if scale.dim() == 2 else 1, y.shape[1], 1, 1)
    return activate(y * scale.view(view) + shift.view(view), activation, negative_slope).to(y.dtype)


def conv2d_pool(x, weight, bias=None, activation=None, negative_slope=0.01):
    y = conv2d(x, weight, bias, activation, negative_slope)
    return y, F.max_pool2d(y, 2)


def max_pool2x2(x):
    return F.max_pool2d(x, 2)


def max_pool(x, window):
    """The eager twin of kernels.pool.max_pool_forward: stride 2, padding 0 (2x2) or 1 (3x3)."""
    return F.max_pool2d(x, window, stride=2, padding=POOL_PADDING[window])


def conv_transpose2x2(x, weight, bias=None, activation=None, negative_slope=0.01):
    return activate(F.conv_transpose2d(x, weight, bias, stride=2), activation, negative_slope)


def conv_transpose2d(x, weight, bias=None, activation=None, negative_slope=0.01, stride=2, padding=0,
                     output_padding=0):
    return activate(F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding,
                                       output_padding=output_padding), activation, negative_slope)


def upsample_pad(up, height, width, up_mode=None, align_corners=False):
    """``up`` up-sampled x2 (``up_mode`` "nearest" / "bilinear"), then zero-padded centred to [height, width]:
    the ``F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])`` of popular U-Nets for odd sizes."""
    if up_mode is not None:
        up = F.interpolate(up, scale_factor=2, mode=up_mode, align_corners=align_corners if up_mode == "bilinear"
                           else None)
    dh, dw = height - up.shape[2], width - up.shape[3]
    return F.pad(up, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


def concat_conv2d(up, skip, weight, bias=None, activation=None, negative_slope=0.01, up_mode=None,
                  align_corners=False, up_first=True):
    if skip is None:  # the conv of the up-sampled up alone
        return conv2d(upsample_pad(up, 2 * up.shape[2], 2 * up.shape[3], up_mode, align_corners), weight, bias,
                      activation, negative_slope)
    up = upsample_pad(up, skip.shape[2], skip.shape[3], up_mode, align_corners)
    return conv2d(torch.cat([up, skip] if up_first else [skip, up], dim=1), weight, bias, activation, negative_slope)
