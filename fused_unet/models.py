"""U-Net for semantic segmentation: ``UNet`` built from the fused modules and ``ReferenceUNet``, its
plain-torch.nn twin with identical state_dict keys."""
import torch
import torch.nn.functional as F
from torch import nn

from fused_unet import eager
from fused_unet import nn as fnn
from fused_unet.kernels.codes import ACTIVATIONS, DECODER_UP_MODES, EPILOGUE_ACTIVATIONS

# UNet(block=...): two convs per level, or a ResNet basic block (the skip added before the second activation).
BLOCKS = ("plain", "residual")


class ConvBlock(nn.Module):
    """Two convs (``conv2`` None: one); the decoder's first conv takes (up, skip), an encoder's last returns
    (skip, pooled)."""

    def __init__(self, conv1, conv2=None):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2

    def forward(self, *inputs):
        x = self.conv1(*inputs)
        return self.conv2(x) if self.conv2 is not None else x


class ResidualBlock(nn.Module):
    """A ResNet basic block: ``conv2(conv1(x))`` plus x (through ``proj``, a 1x1 conv + norm, where the widths
    differ), then conv2's activation; ``pool``: returns ``(y, pool(y))`` (an encoder level: y is the skip)."""

    def __init__(self, conv1, conv2, proj=None, pool=None):
        super().__init__()
        self.conv1, self.conv2, self.proj, self.pool = conv1, conv2, proj, pool

    def forward(self, x):
        h = self.conv1(x)
        y = self.conv2(h, projection=(x, self.proj)) if self.proj is not None else self.conv2(h, residual=x)
        return (y, self.pool(y)) if self.pool is not None else y


class DecoderLevel(nn.Module):
    """Up-sample x2 (a transposed conv + activation as ``up``, or bilinear / nearest inside the next conv), then
    the conv block, whose first conv reads ``[up, skip]`` as one concatenation."""

    def __init__(self, up, block):
        super().__init__()
        self.up, self.block = up, block

    def forward(self, x, skip):
        return self.block(self.up(x) if self.up is not None else x, skip)


class _UNetBase(nn.Module):
    def __init__(self, in_channels=3, num_classes=2, base_channels=64, depth=4, double_conv=True,
                 up_mode="transpose", activation="relu", negative_slope=0.01, norm=None, norm_groups=None,
                 block="plain"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("base_channels", base_channels), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if up_mode not in DECODER_UP_MODES:
            raise ValueError(f"up_mode must be one of {DECODER_UP_MODES}, got {up_mode!r}")
        if activation not in ACTIVATIONS or activation is None:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)[1:]}, got {activation!r}")
        if activation not in EPILOGUE_ACTIVATIONS and (norm is None or up_mode == "transpose"):
            raise ValueError(f"activation {activation!r} fuses after a norm only: set norm to one of {fnn.NORMS[1:]} "
                             f"and up_mode to 'bilinear' or 'nearest' (the transposed conv has no norm), got norm "
                             f"{norm!r}, up_mode {up_mode!r}")
        if norm not in fnn.NORMS:
            raise ValueError(f"norm must be one of {fnn.NORMS}, got {norm!r}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        if block == "residual" and (not double_conv or activation not in EPILOGUE_ACTIVATIONS):
            raise ValueError(f"block 'residual' needs double_conv=True (two convs around the skip) and an activation "
                             f"the residual add keeps in a conv's epilogue {EPILOGUE_ACTIVATIONS[1:]}, got "
                             f"double_conv={double_conv!r}, activation={activation!r}")
        norm_groups = min(32, base_channels) if norm_groups is None else norm_groups
        if norm == "group" and (not isinstance(norm_groups, int) or norm_groups < 1 or base_channels % norm_groups):
            raise ValueError(f"norm_groups must be an int dividing base_channels {base_channels}, got {norm_groups!r}")
        self.in_channels, self.num_classes, self.depth, self.up_mode = in_channels, num_classes, depth, up_mode
        # The constructor's arguments: ReferenceUNet(**unet.config) is the same network in plain torch.nn.
        self.config = dict(in_channels=in_channels, num_classes=num_classes, base_channels=base_channels, depth=depth,
                           double_conv=double_conv, up_mode=up_mode, activation=activation,
                           negative_slope=negative_slope, norm=norm, norm_groups=norm_groups, block=block)
        self.act = dict(activation=activation, negative_slope=negative_slope)
        # conv -> norm -> activation; the conv's bias is then redundant (the norm's shift replaces it).
        self.conv_options = dict(self.act, norm=norm, norm_groups=norm_groups, bias=norm is None)
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(self._encoder_level(c_in, c_out, double_conv, block)
                                     for c_in, c_out in zip([in_channels] + widths[:depth - 1], widths[:depth]))
        self.bottleneck = self._residual(widths[depth - 1], widths[depth]) if block == "residual" else \
            ConvBlock(self._conv(widths[depth - 1], widths[depth]),
                      self._conv(widths[depth], widths[depth]) if double_conv else None)
        self.decoder = nn.ModuleList(self._decoder_level(widths[i + 1], widths[i], double_conv)
                                     for i in reversed(range(depth)))
        self.head = self._head(widths[0], num_classes)

    def _encoder_level(self, c_in, c_out, double_conv, block):
        if block == "residual":
            return self._residual(c_in, c_out, self._pool())
        if double_conv:
            return ConvBlock(self._conv(c_in, c_out), self._conv_pool(c_out, c_out))
        return ConvBlock(self._conv_pool(c_in, c_out))

    def _residual(self, c_in, c_out, pool=None):
        """conv -> norm -> act, conv -> norm, + x (a 1x1 conv -> norm where the widths differ), act."""
        proj = self._conv(c_in, c_out, kernel_size=1, activation=None) if c_in != c_out else None
        return ResidualBlock(self._conv(c_in, c_out), self._conv(c_out, c_out), proj, pool)

    def _decoder_level(self, c_in, c_out, double_conv):
        if self.up_mode == "transpose":
            up, c_cat, up_mode = self._up(c_in, c_out), 2 * c_out, None
        else:
            up, c_cat, up_mode = None, c_in + c_out, self.up_mode
        return DecoderLevel(up, ConvBlock(self._concat_conv(c_cat, c_out, up_mode),
                                          self._conv(c_out, c_out) if double_conv else None))

    def forward(self, x):
        """x: [N, in_channels, H, W], any H, W >= 1 -> logits [N, num_classes, H, W]. H and W are zero-padded
        at the bottom/right to a multiple of 2**depth and the logits cropped back."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, {self.in_channels}, H, W], got {getattr(x, 'shape', type(x).__name__)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point image batch (float32, float16 or bfloat16), got {x.dtype}")
        h, w = x.shape[-2:]
        multiple = 2**self.depth
        x = F.pad(x, (0, -w % multiple, 0, -h % multiple))
        skips = []
        for level in self.encoder:
            skip, x = level(x)
            skips.append(skip)
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
    """The classic U-Net (padding 1) with every layer in fused_unet's kernels: each encoder level's last conv
    also writes the pooled output, each decoder level's first conv reads [up, skip] without a concatenation
    (``up_mode`` "transpose": a 2x2 transposed conv + activation; "bilinear" / "nearest": up-sampled inside
    that conv). ``norm`` "batch", "instance" or "group" (``norm_groups`` groups, default min(32, base_channels)):
    conv -> norm -> activation in every 3x3 conv; a pending norm's normalised tensor is never stored, each
    consumer kernel normalises its input as it reads it. ``activation`` "silu", "gelu", "gelu_tanh" or "prelu" (a
    learned slope per conv, its child ``prelu``) need a norm and ``up_mode`` "bilinear" or "nearest".
    ``block="residual"``: each encoder level and the bottleneck are ResNet basic blocks (``ResidualBlock``), the
    skip added in the second conv's epilogue (with a pending norm: in the one kernel that applies it), then the 2x2
    max-pool. Conv weights are stored channels_last
    ([C_out, kh, kw, C_in] in memory), the layout the kernels read; values and state_dict keys are those of
    ReferenceUNet with the same options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to(memory_format=torch.channels_last)
        for module in self.modules():
            if isinstance(module, fnn.Conv2d):
                module.defer_norm = True  # every consumer of a conv's output here is a fused layer

    def _conv(self, c_in, c_out, kernel_size=3, **options):
        return fnn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, **dict(self.conv_options, **options))

    def _conv_pool(self, c_in, c_out):
        return fnn.Conv2dReLUPool(c_in, c_out, 3, padding=1, **self.conv_options)

    @staticmethod
    def _pool():
        return fnn.MaxPool2d(2)

    def _up(self, c_in, c_out):
        return fnn.ConvTranspose2d(c_in, c_out, 2, stride=2, **self.act)

    def _concat_conv(self, c_in, c_out, up_mode):
        return fnn.UpConcatConv2d(c_in, c_out, 3, up_mode=up_mode, **self.conv_options)

    @staticmethod
    def _head(c_in, num_classes):
        return fnn.Conv2d(c_in, num_classes, 1)


class ReferenceConvAct(nn.Conv2d):
    """conv (-> the norm as ``bn``) (+ ``residual``, or + ``module(input)`` of a ``projection`` (input, module)) ->
    activation."""

    def __init__(self, *args, activation, negative_slope, norm=None, norm_groups=32, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation, self.negative_slope = activation, negative_slope
        self.bn = fnn.norm_layer(norm, self.out_channels, norm_groups=norm_groups)
        self.prelu = fnn.prelu_layer(activation)

    def forward(self, x, residual=None, projection=None):
        if projection is not None:
            proj_x, proj = projection
            residual = proj(proj_x)
        y = super().forward(x)
        y = self.bn(y) if self.bn is not None else y
        return eager.activate(y + residual if residual is not None else y, self.activation,
                              fnn.activation_slope(self))


class ReferenceConvActPool(ReferenceConvAct):
    def forward(self, x):
        y = super().forward(x)
        return y, F.max_pool2d(y, 2)


class ReferenceConcatConvAct(ReferenceConvAct):
    def __init__(self, *args, up_mode, **kwargs):
        super().__init__(*args, **kwargs)
        self.up_mode = up_mode

    def forward(self, up, skip):
        up = eager.upsample_pad(up, skip.shape[2], skip.shape[3], self.up_mode)
        return super().forward(torch.cat([up, skip], dim=1))


class ReferenceConvTransposeAct(nn.ConvTranspose2d):
    def __init__(self, *args, activation, negative_slope, **kwargs):
        super().__init__(*args, **kwargs)
        self.act = dict(activation=activation, negative_slope=negative_slope)

    def forward(self, x):
        return eager.activate(super().forward(x), **self.act)


class ReferenceUNet(_UNetBase):
    """The same network in plain torch.nn (cuDNN / CPU kernels: conv, activation, max-pool, F.interpolate,
    torch.cat); state_dict keys identical to ``UNet`` with the same options."""

    def _conv(self, c_in, c_out, kernel_size=3, **options):
        return ReferenceConvAct(c_in, c_out, kernel_size, padding=kernel_size // 2,
                                **dict(self.conv_options, **options))

    @staticmethod
    def _pool():
        return nn.MaxPool2d(2)

    def _conv_pool(self, c_in, c_out):
        return ReferenceConvActPool(c_in, c_out, 3, padding=1, **self.conv_options)

    def _up(self, c_in, c_out):
        return ReferenceConvTransposeAct(c_in, c_out, 2, stride=2, **self.act)

    def _concat_conv(self, c_in, c_out, up_mode):
        return ReferenceConcatConvAct(c_in, c_out, 3, padding=1, up_mode=up_mode, **self.conv_options)

    @staticmethod
    def _head(c_in, num_classes):
        return nn.Conv2d(c_in, num_classes, 1)
