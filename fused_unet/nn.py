"""Drop-in modules. Each subclasses the torch module it replaces (same state_dict, init and repr) and runs
the fused op; a configuration the kernels do not cover falls back to the parent's forward with one warning."""
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from fused_unet import functional
from fused_unet.kernels.checks import SUPPORTED_DTYPES

ACTIVATIONS = (None, "relu")


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


class _FusedMixin:
    """The fallback bookkeeping shared by every module: why a call is unsupported, warned once per module."""

    def _input_unsupported(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return f"input must be a 4-D [N, C, H, W] tensor, got {getattr(x, 'shape', type(x).__name__)}"
        if x.dtype not in SUPPORTED_DTYPES and not functional.autocast_enabled(x.device.type):
            return f"dtype {x.dtype} is not one of float32/float16/bfloat16"
        return None

    def _fallback(self, reason):
        if not getattr(self, "_fallback_warned", False):
            self._fallback_warned = True
            warnings.warn(f"fused_unet.nn.{type(self).__name__}: {reason}; using the torch.nn forward instead",
                          stacklevel=3)

    def _activate(self, y):
        return F.relu(y) if self.activation == "relu" else y

    def _extra(self, base):
        return base if self.activation is None else f"{base}, activation={self.activation!r}"


class Conv2d(_FusedMixin, nn.Conv2d):
    """``nn.Conv2d`` (+ optional fused ReLU). Fused for odd square kernels, stride 1, padding k//2 or 'same',
    dilation 1, groups 1, zero padding mode; output is channels_last."""

    def __init__(self, *args, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation = _check_activation(activation)

    def _config_unsupported(self):
        k = self.kernel_size
        if k[0] != k[1] or k[0] % 2 == 0:
            return f"kernel_size {k} is not odd and square"
        if self.stride != (1, 1) or self.dilation != (1, 1) or self.groups != 1:
            return f"stride {self.stride}, dilation {self.dilation}, groups {self.groups} (fused: 1, 1, 1)"
        if self.padding not in ("same", (k[0] // 2, k[1] // 2)) or self.padding_mode != "zeros":
            return f"padding {self.padding!r} ({self.padding_mode}) is not the zero 'same' padding {k[0] // 2}"
        return None

    def forward(self, x):
        reason = self._config_unsupported() or self._input_unsupported(x)
        if reason:
            self._fallback(reason)
            return self._activate(super().forward(x))
        return functional.conv2d(x, self.weight, self.bias, relu=self.activation == "relu")

    def extra_repr(self):
        return self._extra(super().extra_repr())


class MaxPool2d(_FusedMixin, nn.MaxPool2d):
    """``nn.MaxPool2d``, fused for kernel 2, stride 2, no padding/dilation/ceil_mode/return_indices."""

    def __init__(self, kernel_size=2, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)

    def _config_unsupported(self):
        pair = nn.modules.utils._pair
        if pair(self.kernel_size) != (2, 2) or pair(self.stride) != (2, 2):
            return f"kernel_size {self.kernel_size}, stride {self.stride} (fused: 2, 2)"
        if pair(self.padding) != (0, 0) or pair(self.dilation) != (1, 1) or self.ceil_mode or self.return_indices:
            return "padding, dilation, ceil_mode or return_indices are set"
        return None

    def forward(self, x):
        reason = self._config_unsupported() or self._input_unsupported(x)
        if reason:
            self._fallback(reason)
            return super().forward(x)
        return functional.max_pool2x2(x)


class ConvTranspose2d(_FusedMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (+ optional fused ReLU), fused for kernel 2, stride 2, no padding, groups 1."""

    def __init__(self, *args, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation = _check_activation(activation)

    def _config_unsupported(self):
        if self.kernel_size != (2, 2) or self.stride != (2, 2):
            return f"kernel_size {self.kernel_size}, stride {self.stride} (fused: 2, 2)"
        if self.padding != (0, 0) or self.output_padding != (0, 0) or self.dilation != (1, 1) or self.groups != 1:
            return "padding, output_padding, dilation or groups are set"
        return None

    def forward(self, x, output_size=None):
        reason = self._config_unsupported() or self._input_unsupported(x)
        if output_size is not None:
            reason = reason or "output_size is given"
        if reason:
            self._fallback(reason)
            return self._activate(super().forward(x, output_size))
        return functional.conv_transpose2x2(x, self.weight, self.bias, relu=self.activation == "relu")

    def extra_repr(self):
        return self._extra(super().extra_repr())


class UpConcat(ConvTranspose2d):
    """The decoder's up step: ``cat([act(conv_transpose(x)), skip], dim=1)``, fused into one buffer (no torch.cat).
    Same parameters and state_dict as ``nn.ConvTranspose2d``; ``activation`` defaults to ``"relu"``."""

    def __init__(self, *args, activation="relu", **kwargs):
        super().__init__(*args, activation=activation, **kwargs)

    def forward(self, x, skip):
        reason = self._config_unsupported() or self._input_unsupported(x) or self._input_unsupported(skip)
        if reason:
            self._fallback(reason)
            return torch.cat([self._activate(nn.ConvTranspose2d.forward(self, x)), skip], dim=1)
        return functional.up_concat(x, skip, self.weight, self.bias, relu=self.activation == "relu")
