"""U-Net for semantic segmentation: ``UNet`` built from the fused modules and ``ReferenceUNet``, its
plain-torch.nn twin with identical state_dict keys."""
import torch
import torch.nn.functional as F
from torch import nn

from fused_unet import nn as fnn


class ConvBlock(nn.Module):
    """(conv3x3 + ReLU) x2, or x1 when ``double_conv=False``."""

    def __init__(self, make_conv_relu, in_channels, out_channels, double_conv):
        super().__init__()
        self.conv1 = make_conv_relu(in_channels, out_channels)
        self.conv2 = make_conv_relu(out_channels, out_channels) if double_conv else None

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(x) if self.conv2 is not None else x


class DecoderLevel(nn.Module):
    """Up-sample x2 with a transposed conv (+ReLU), concatenate ``[up, skip]``, then the conv block."""

    def __init__(self, make_conv_relu, make_up_concat, in_channels, out_channels, double_conv):
        super().__init__()
        self.up = make_up_concat(in_channels, out_channels)
        self.block = ConvBlock(make_conv_relu, 2 * out_channels, out_channels, double_conv)

    def forward(self, x, skip):
        return self.block(self.up(x, skip))


class _UNetBase(nn.Module):
    def __init__(self, in_channels=3, num_classes=2, base_channels=64, depth=4, double_conv=True):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("base_channels", base_channels), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            ConvBlock(self._conv_relu, c_in, c_out, double_conv)
            for c_in, c_out in zip([in_channels] + widths[:depth - 1], widths[:depth]))
        self.pool = self._pool()
        self.bottleneck = ConvBlock(self._conv_relu, widths[depth - 1], widths[depth], double_conv)
        self.decoder = nn.ModuleList(
            DecoderLevel(self._conv_relu, self._up_concat, widths[i + 1], widths[i], double_conv)
            for i in reversed(range(depth)))
        self.head = self._head(widths[0], num_classes)

    def forward(self, x):
        """x: [N, in_channels, H, W], any H, W >= 1 -> logits [N, num_classes, H, W]. H and W are zero-padded
        at the bottom/right to a multiple of 2**depth and the logits cropped back."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, {self.in_channels}, H, W], got {getattr(x, 'shape', type(x).__name__)}")
        h, w = x.shape[-2:]
        multiple = 2**self.depth
        x = F.pad(x, (0, -w % multiple, 0, -h % multiple))
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for level, skip in zip(self.decoder, reversed(skips)):
            x = level(x, skip)
        return self.head(x)[..., :h, :w]

    @torch.no_grad()
    def segment(self, x):
        """Class-id mask: [N, H, W] int64 for [N, C, H, W], or [H, W] for one [C, H, W] image."""
        single = isinstance(x, torch.Tensor) and x.dim() == 3
        logits = self(x.unsqueeze(0) if single else x)
        mask = logits.argmax(dim=1)
        return mask[0] if single else mask


class UNet(_UNetBase):
    """The classic U-Net (padding 1) with every conv, pool and up-sampling in fused_unet's kernels. Its conv
    weights are stored channels_last ([C_out, kh, kw, C_in] in memory), the layout the kernels read, so the
    forward pass does not re-lay them out; values and state_dict keys are those of ReferenceUNet."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to(memory_format=torch.channels_last)

    @staticmethod
    def _conv_relu(c_in, c_out):
        return fnn.Conv2d(c_in, c_out, 3, padding=1, activation="relu")

    @staticmethod
    def _pool():
        return fnn.MaxPool2d(2)

    @staticmethod
    def _up_concat(c_in, c_out):
        return fnn.UpConcat(c_in, c_out, 2, stride=2, activation="relu")

    @staticmethod
    def _head(c_in, num_classes):
        return fnn.Conv2d(c_in, num_classes, 1)


class ReferenceConvReLU(nn.Conv2d):
    def forward(self, x):
        return F.relu(super().forward(x))


class ReferenceUpConcat(nn.ConvTranspose2d):
    def forward(self, x, skip):
        return torch.cat([F.relu(super().forward(x)), skip], dim=1)


class ReferenceUNet(_UNetBase):
    """The same network in plain torch.nn (cuDNN / CPU kernels); state_dict keys identical to ``UNet``."""

    @staticmethod
    def _conv_relu(c_in, c_out):
        return ReferenceConvReLU(c_in, c_out, 3, padding=1)

    @staticmethod
    def _pool():
        return nn.MaxPool2d(2)

    @staticmethod
    def _up_concat(c_in, c_out):
        return ReferenceUpConcat(c_in, c_out, 2, stride=2)

    @staticmethod
    def _head(c_in, num_classes):
        return nn.Conv2d(c_in, num_classes, 1)
