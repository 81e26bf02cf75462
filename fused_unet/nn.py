"""Drop-in modules. Each subclasses the torch module it replaces (same state_dict, init and repr) and runs
the fused op; a configuration the kernels do not cover falls back to the parent's forward with one warning.
``activation``: None, "relu" or "leaky_relu" (with ``negative_slope``), applied in the kernel's epilogue; with a
``norm`` also "silu", "gelu", "gelu_tanh" or "prelu" (a child ``prelu = nn.PReLU()``, one learned slope) applied by
whoever reads the pending norm; without a norm they fall back.

``norm`` (the convs): "batch", "instance" or "group", a norm child ``bn`` (``nn.BatchNorm2d``, affine
``nn.InstanceNorm2d``, ``nn.GroupNorm`` of ``norm_groups`` groups) between the conv and its activation, so the
state_dict is that of a Conv2d plus the torch.nn norm (``bn.weight``, ``bn.running_mean``, ...). A norm with running
statistics in eval mode is folded into the conv's weight and bias (exact). Otherwise (training; instance norm
without running statistics; group norm always) the statistics come from the conv's epilogue (batch norm) or one
reduction kernel (per image: instance / group norm), running statistics update like torch.nn's, and the output is
a ``fused_unet.functional.Normalized``: with ``defer_norm=True`` (what ``UNet`` sets) it is returned as is and
the next fused layer applies norm + activation while reading it; otherwise it is materialised."""
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from fused_unet import eager, functional
from fused_unet.functional import Normalized
from fused_unet.kernels.checks import (ACTIVATIONS, EPILOGUE_ACTIVATIONS, MAX_KERNEL_SIZE,  # the codes' names
                                     POOL_PADDING, SUPPORTED_DTYPES, UP_MODES, conv_geometry, conv_output_shape)

NORMS = (None, "batch", "instance", "group")


def norm_layer(norm, channels, eps=1e-5, momentum=0.1, norm_groups=32, **factory):
    """The torch.nn module of a ``norm`` name (None: none): BatchNorm2d, affine InstanceNorm2d (nnU-Net's and
    MONAI's), GroupNorm of ``norm_groups`` groups."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "batch":
        return nn.BatchNorm2d(channels, eps, momentum, **factory)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, eps, momentum, affine=True, **factory)
    if norm == "group":
        return nn.GroupNorm(norm_groups, channels, eps, **factory)
    return None


def _factory(kwargs):
    """The ``device`` / ``dtype`` of a torch.nn constructor's keyword arguments, for the children it builds."""
    return {k: kwargs[k] for k in ("device", "dtype") if k in kwargs}


def prelu_layer(activation, **factory):
    """The learned slope of ``activation`` "prelu": a child ``nn.PReLU()`` (one slope, torch's init 0.25: MONAI's
    ADN default), its weight read by the kernels at every call; None for the other activations."""
    return nn.PReLU(**factory) if activation == "prelu" else None


def activation_slope(module):
    """What a module with ``activation`` / ``negative_slope`` (and a ``prelu`` child) passes as ``negative_slope``:
    the PReLU's weight, else the LeakyReLU's slope."""
    return module.prelu.weight if module.activation == "prelu" else module.negative_slope


def _tensor(x):
    return x.y if isinstance(x, Normalized) else x


def input_unsupported(x, name="x"):
    """Why the kernels cannot take ``x`` (a tensor or a Normalized) as an input (None: they can). A tensor no
    convolution takes (integer, bool, complex) is a TypeError naming the argument, as the functional API raises."""
    x = _tensor(x)
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32, float16 or bfloat16 in the kernels), "
                        f"got {x.dtype}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return f"input must be a 4-D [N, C, H, W] tensor, got {getattr(x, 'shape', type(x).__name__)}"
    if x.shape[1] == 0:  # e.g. smp's mix-transformer encoders give a 0-channel skip
        return f"{name} has no channels"
    if x.dtype not in SUPPORTED_DTYPES and not functional.autocast_enabled(x.device.type):
        return f"dtype {x.dtype} is not one of float32/float16/bfloat16"
    return None


class _FusedMixin:
    """Activation settings and the fallback bookkeeping shared by every module: why a call is unsupported,
    warned once per module."""

    def _set_activation(self, activation, negative_slope, **factory):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation, self.negative_slope = activation, float(negative_slope)
        self.prelu = prelu_layer(activation, **factory)

    @staticmethod
    def _adopt(module):
        """Give a torch module whose class was just swapped for this one the fused module's own settings."""
        module.activation, module.negative_slope, module.bn, module.defer_norm = None, 0.01, None, False
        module.prelu = None

    def _activation_unsupported(self):
        activation = getattr(self, "activation", None)
        if activation == "leaky_relu" and not self.negative_slope >= 0:
            return f"negative_slope {self.negative_slope} < 0 (fused: >= 0)"
        if activation not in EPILOGUE_ACTIVATIONS and getattr(self, "bn", None) is None:
            return f"activation {activation!r} without a norm (fused after a norm only: a conv's epilogue keeps its " \
                   "output, not the input its backward needs)"
        return None

    def _fallback(self, reason):
        if not getattr(self, "_fallback_warned", False):
            self._fallback_warned = True
            warnings.warn(f"fused_unet.nn.{type(self).__name__}: {reason}; using the torch.nn forward instead",
                          stacklevel=3)

    def _activate(self, y):
        return eager.activate(y, **self._act_args())

    def _act_args(self):
        return dict(activation=self.activation, negative_slope=activation_slope(self))

    def _extra(self, base):
        if self.activation is None:
            return base
        slope = f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        return f"{base}, activation={self.activation!r}{slope}"


def conv2d_config_unsupported(conv, strided=True):
    """Why the kernels cannot run this ``nn.Conv2d``'s configuration (None: they can): a square kernel, stride 1 or
    2, zero padding below the kernel size, dilation 1, groups 1. ``strided`` False: stride 1 and 'same' padding only
    (the pooling and concatenating convs)."""
    k = conv.kernel_size
    if k[0] != k[1] or not 1 <= k[0] <= MAX_KERNEL_SIZE:
        return f"kernel_size {k} is not square (fused: 1x1 up to {MAX_KERNEL_SIZE}x{MAX_KERNEL_SIZE})"
    if conv.dilation != (1, 1) or conv.groups != 1:
        return f"dilation {conv.dilation}, groups {conv.groups} (fused: 1, 1; depthwise / grouped convs stay PyTorch)"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} (fused: 'zeros')"
    try:
        stride, padding = conv_geometry(k[0], conv.stride, conv.padding)
    except (TypeError, ValueError) as error:
        return str(error)
    if not strided and (k[0] % 2 == 0 or (stride, padding) != (1, k[0] // 2)):
        return f"stride {conv.stride}, padding {conv.padding!r} (fused with a pool or a concatenation: stride 1 and " \
               f"the 'same' padding of an odd kernel)"
    return None


def max_pool2d_config_unsupported(pool):
    """Why the kernels cannot run this ``nn.MaxPool2d`` (None: they can)."""
    pair = nn.modules.utils._pair
    covered = [((w, w), (2, 2), (p, p)) for w, p in POOL_PADDING.items()]
    if (pair(pool.kernel_size), pair(pool.stride), pair(pool.padding)) not in covered:
        fused = " and ".join(f"{w}, 2, {p}" for w, p in POOL_PADDING.items())
        return f"kernel_size {pool.kernel_size}, stride {pool.stride}, padding {pool.padding} (fused: {fused})"
    if pair(pool.dilation) != (1, 1) or pool.ceil_mode or pool.return_indices:
        return "dilation, ceil_mode or return_indices are set"
    return None


def conv_transpose2d_config_unsupported(conv):
    """Why the kernels cannot run this ``nn.ConvTranspose2d`` (None: they can): square kernels up to
    checks.MAX_KERNEL_SIZE, stride 1 or 2 (at most the kernel), zero padding below the kernel, output_padding below
    the stride, no dilation, groups 1."""
    (k, kw), (stride, sw) = conv.kernel_size, conv.stride
    if k != kw or stride != sw or not 1 <= stride <= min(2, k) or k > MAX_KERNEL_SIZE:
        return f"kernel_size {conv.kernel_size}, stride {conv.stride} (fused: square kernels, stride 1 or 2 up to it)"
    if isinstance(conv.padding, str) or len(set(conv.padding)) != 1 or not 0 <= conv.padding[0] < k or \
            len(set(conv.output_padding)) != 1:
        return f"padding {conv.padding}, output_padding {conv.output_padding} (fused: equal in H and W, below k)"
    if conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        return "dilation, groups or a padding mode other than zeros is set"
    return None


def norm_kind(bn):
    """"batch", "instance" or "group": the kind of a norm module, or of a torch.compile graph's norm arguments
    (fused_unet.swap's stand-ins say theirs)."""
    for kind, module in (("group", nn.GroupNorm), ("instance", nn.InstanceNorm2d), ("batch", nn.BatchNorm2d)):
        if isinstance(bn, module):
            return kind
    return getattr(bn, "kind", None)


def _pending(bn):
    """Whether the norm ``bn`` normalises with statistics of this batch (training, no running statistics, group
    norm): it stays pending after the conv instead of folding into it."""
    return bn is not None and (bn.training or not getattr(bn, "track_running_stats", False))


def norm_unsupported(bn):
    """Why the kernels cannot run the norm module ``bn`` after a conv (None: they can)."""
    if isinstance(bn, nn.InstanceNorm2d) and bn.track_running_stats and bn.momentum is None:
        return "InstanceNorm2d with momentum=None (torch.nn never updates its running statistics)"
    return None


def _running_scale_shift(bn):
    """fp32 per-channel (scale, shift) of a norm with running statistics: differentiable in its parameters."""
    # In fp32 whatever the parameters' dtype, as nn.BatchNorm2d computes.
    scale = torch.rsqrt(bn.running_var.float() + bn.eps)
    scale = scale * bn.weight.float() if bn.affine else scale
    shift = -bn.running_mean.float() * scale
    return scale, (shift + bn.bias.float() if bn.affine else shift)


def _folded(conv, bn):
    """(weight, bias) of ``conv`` with an eval-mode ``bn`` (running statistics) folded in: exact, and
    differentiable in every parameter."""
    if bn is None or _pending(bn):
        return conv.weight, conv.bias
    scale, shift = _running_scale_shift(bn)
    if conv.bias is not None:
        shift = shift + conv.bias.float() * scale
    weight = (conv.weight.float() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)  # rounded once, at the end
    return weight, shift.to(conv.weight.dtype)


def norm_act(x, bn, activation=None, negative_slope=0.01, defer=False):
    """``act(bn(x))`` for a tensor x that is not a fused conv's output (a pre-activation block's norm, a diffusion
    block's GroupNorm of its input or of a sum): its statistics by one reduction kernel (with running statistics
    updated like torch.nn's), or the running statistics in eval mode; then pending like a conv's norm. ``defer``:
    return the Normalized (the next fused op applies it while reading x), else one kernel makes it a tensor."""
    return _finish(_normalize(functional.materialize(x), None, bn, activation, negative_slope), defer)


def _normalize(y, stats, bn, activation, negative_slope):
    """The pending norm + activation of the pre-norm output ``y`` as torch.nn's norm ``bn`` computes it in this mode
    (running statistics, BatchNorm2d's cumulative average when momentum is None, num_batches_tracked): a
    Normalized. ``stats``: a batch norm's statistics from the conv's epilogue (None: a reduction kernel reads y).
    A norm with running statistics in eval mode is their per-channel scale and shift."""
    if not _pending(bn):
        return functional.Normalized(y, *_running_scale_shift(bn), activation,
                                     functional.pending_slope(activation, negative_slope, y.shape[1]))
    if norm_kind(bn) == "group":
        return functional.group_norm(y, bn.num_groups, bn.weight, bn.bias, bn.eps, activation, negative_slope, stats)
    update = bn.training and bn.track_running_stats
    if norm_kind(bn) == "instance":
        return functional.instance_norm(y, bn.weight, bn.bias, bn.running_mean if update else None,
                                        bn.running_var if update else None, bn.momentum, bn.eps,
                                        activation=activation, negative_slope=negative_slope, stats=stats)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if update and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return functional.batch_norm(y, stats, bn.weight, bn.bias, bn.running_mean if update else None,
                                 bn.running_var if update else None, factor, bn.eps, activation=activation,
                                 negative_slope=negative_slope)


def _finish(z, defer):
    return z if defer else z.materialize()


def _pre_norm(bn, stats_op, plain_op, *inputs, **layout):
    """(y, statistics) of the conv before the norm ``bn``: a pending norm's from the conv's epilogue (``stats_op``;
    per image for instance / group norm, None where its images are too small: its reduction kernel reads y), none
    for running statistics."""
    if _pending(bn):
        return stats_op(*inputs, **layout, per_image=norm_kind(bn) != "batch")
    return plain_op(*inputs, activation=None, **layout), None


def _stays_pending(bn, activation):
    """Whether a conv's norm stays pending after it: statistics of this batch, or an activation the conv's epilogue
    cannot run (SiLU, GELU, PReLU: their backward needs the input) after running statistics."""
    return _pending(bn) or (bn is not None and activation not in EPILOGUE_ACTIVATIONS)


def conv_bn_act(x, conv, bn=None, activation=None, negative_slope=0.01, defer=False):
    """``act(bn(conv(x)))`` in the kernels, from the parameters of a supported ``nn.Conv2d`` and an optional
    norm module (folded into the conv when it uses running statistics and the epilogue runs the activation; else
    pending, with running statistics updated like torch.nn's). ``defer``: return a pending result as a
    Normalized."""
    geometry = dict(stride=conv.stride, padding=conv.padding)
    if _stays_pending(bn, activation):
        y, stats = _pre_norm(bn, functional.conv2d_stats, functional.conv2d, x, conv.weight, conv.bias, **geometry)
        return _finish(_normalize(y, stats, bn, activation, negative_slope), defer)
    return functional.conv2d(x, *_folded(conv, bn), activation, negative_slope, **geometry)


def residual_fits(x, conv, residual):
    """Whether ``residual`` can be added in the epilogue of ``conv`` applied to ``x`` (a tensor or a Normalized): a
    Normalized of the conv's output shape, or a tensor of that shape or broadcast to it (a time embedding
    [N, C, 1, 1]), of x's dtype and device."""
    x, pending = _tensor(x), isinstance(residual, Normalized)
    residual = _tensor(residual)
    if not isinstance(residual, torch.Tensor) or residual.dtype != x.dtype or residual.device != x.device or \
            residual.dim() != 4:
        return False
    return all(r == s or (r == 1 and not pending) for r, s in zip(residual.shape, _conv_output_shape(x, conv)))


def _conv_output_shape(x, conv):
    return conv_output_shape(x.shape, conv.weight.shape, *conv_geometry(conv.weight.shape[2], conv.stride,
                                                                         conv.padding))


def projection_fits(x, conv, bn, proj_x, proj_conv, proj_bn):
    """Whether a projection (the 1x1 ``proj_conv`` + ``proj_bn`` of ``proj_x``) runs inside the kernel of ``conv``
    on ``x`` (``conv_bn_add_act``'s ``projection``): both norms fold (none, or running statistics), proj_conv is a
    supported 1x1 of stride 1 or 2 without padding, x and proj_x image batches the kernels take, of one dtype and
    device, whose projection has the conv's output shape."""
    if input_unsupported(x):
        return False
    x = _tensor(x)
    if _pending(bn) or _pending(proj_bn) or not isinstance(proj_x, torch.Tensor) or \
            input_unsupported(proj_x, "projection input") or tuple(proj_conv.weight.shape[2:]) != (1, 1) or \
            isinstance(proj_conv, nn.Conv2d) and conv2d_config_unsupported(proj_conv):
        return False
    stride, padding = conv_geometry(1, proj_conv.stride, proj_conv.padding)
    return padding == 0 and proj_x.dtype == x.dtype and proj_x.device == x.device and \
        _conv_output_shape(proj_x, proj_conv) == _conv_output_shape(x, conv)


def conv_bn_add_act(x, residual, conv, bn=None, activation=None, negative_slope=0.01, projection=None):
    """``act(bn(conv(x)) + residual)`` (a ResNet block's end; ``residual`` a tensor or a Normalized): the residual
    added in the conv's epilogue when the norm folds into the conv (none, or running statistics in eval mode); a
    pending norm (training) needs the whole conv's statistics before the add, so there the norm, the add and the
    activation are one more kernel after the fused conv (``functional.normalized_add``). ``projection`` (proj_x,
    proj_conv, proj_bn; the caller checked ``projection_fits``) in the place of a residual: the ResNet downsample
    ``proj_bn(proj_conv(proj_x))`` inside the conv's kernel, a second GEMM into its accumulator."""
    if projection is not None:
        proj_x, proj_conv, proj_bn = projection
        weight, bias = _folded(proj_conv, proj_bn)
        stride = conv_geometry(1, proj_conv.stride, proj_conv.padding)[0]
        return functional.conv2d(x, *_folded(conv, bn), activation, negative_slope, stride=conv.stride,
                                 padding=conv.padding, projection=functional.Projection(proj_x, weight, bias, stride))
    if _pending(bn):
        return functional.normalized_add(conv_bn_act(x, conv, bn, defer=True), residual, activation, negative_slope)
    return functional.conv2d(x, *_folded(conv, bn), activation, negative_slope, stride=conv.stride,
                             padding=conv.padding, residual=functional.materialize(residual))


def conv_bn_act_pool(x, conv, bn=None, activation=None, negative_slope=0.01, defer=False):
    """``(y, max_pool2d(y, 2))`` with ``y = conv_bn_act(...)``: one kernel writes both; with a pending norm the
    pool is a second kernel (the statistics exist only once the whole conv ran) reading y normalised."""
    if _stays_pending(bn, activation):
        y, stats = _pre_norm(bn, functional.conv2d_stats, functional.conv2d, x, conv.weight, conv.bias)
        z = _normalize(y, stats, bn, activation, negative_slope)
        return _finish(z, defer), functional.max_pool2x2(z)
    return functional.conv2d_pool(x, *_folded(conv, bn), activation, negative_slope)


def concat_conv_bn_act(up, skip, conv, bn=None, activation=None, negative_slope=0.01, defer=False, **layout):
    """``act(bn(conv(cat([pad(upsample(up)), skip]))))`` without the concatenation (``layout``: up_mode,
    align_corners, up_first as in ``functional.concat_conv2d``)."""
    if _stays_pending(bn, activation):
        y, stats = _pre_norm(bn, functional.concat_conv2d_stats, functional.concat_conv2d, up, skip, conv.weight,
                             conv.bias, **layout)
        return _finish(_normalize(y, stats, bn, activation, negative_slope), defer)
    return functional.concat_conv2d(up, skip, *_folded(conv, bn), activation, negative_slope, **layout)


class Conv2d(_FusedMixin, nn.Conv2d):
    """``nn.Conv2d`` (+ optional norm and fused activation). Fused for square kernels (1x1 ... 31x31), stride 1 or
    2, zero padding (an int below the kernel size, 'valid', or 'same' for odd kernels at stride 1), dilation 1,
    groups 1; output is channels_last. Accepts a ``Normalized`` input (its pending norm is applied while reading
    it)."""

    def __init__(self, *args, activation=None, negative_slope=0.01, norm=None, eps=1e-5, momentum=0.1,
                 norm_groups=32, **kwargs):
        super().__init__(*args, **kwargs)
        self.bn = norm_layer(norm, self.out_channels, eps, momentum, norm_groups, **_factory(kwargs))
        self._set_activation(activation, negative_slope, **_factory(kwargs))
        self.defer_norm = False

    def _reference(self, x, residual=None):
        """The torch.nn computation (the fallback)."""
        y = nn.Conv2d.forward(self, functional.materialize(x))
        y = self.bn(y) if self.bn is not None else y
        return self._activate(y + functional.materialize(residual) if residual is not None else y)

    # The pooling and concatenating subclasses run stride-1 'same' convs only.
    _strided = True

    def _config_unsupported(self):
        return conv2d_config_unsupported(self, self._strided) or self._activation_unsupported() or \
            norm_unsupported(self.bn)

    def _fused(self, op, *inputs, **layout):
        return op(*inputs, self, self.bn, **self._act_args(), defer=self.defer_norm, **layout)

    def forward(self, x, residual=None, projection=None):
        """``act(norm(conv(x)))``, or with ``residual`` (a tensor or a Normalized of the output's shape: a residual
        block's skip) ``act(norm(conv(x)) + residual)``; ``projection`` (input, a fused ``Conv2d`` without an
        activation) in the place of the residual: ``module(input)`` added (a ResNet downsample), computed in this
        conv's kernel where both norms fold (``projection_fits``)."""
        if projection is not None:
            proj_x, proj = projection
            if not (self._config_unsupported() or proj._config_unsupported()) and proj.activation is None and \
                    projection_fits(x, self, self.bn, proj_x, proj, proj.bn):
                return conv_bn_add_act(x, None, self, self.bn, **self._act_args(),
                                       projection=(proj_x, proj, proj.bn))
            residual = proj(proj_x)
        reason = self._config_unsupported() or input_unsupported(x)
        if residual is not None and not reason and not residual_fits(x, self, residual):
            reason = "the residual is not a tensor of the output's shape (or broadcast to it) and dtype"
        if reason:
            self._fallback(reason)
            return self._reference(x, residual)
        if residual is not None:
            return conv_bn_add_act(x, residual, self, self.bn, **self._act_args())
        return self._fused(conv_bn_act, x)

    def extra_repr(self):
        return self._extra(super().extra_repr())


class Conv2dReLUPool(Conv2d):
    """The last conv of an encoder level: returns ``(y, max_pool2d(y, 2))`` with ``y = act(conv(x))``, both written
    by one kernel (``y`` is the skip connection). Same parameters and state_dict as ``nn.Conv2d``; ``activation``
    defaults to "relu" ("leaky_relu" and None work too). With ``norm="batch"`` in training mode the pool is a
    second kernel (the statistics exist only once the conv has run) that reads y with its norm applied."""

    _strided = False

    def __init__(self, *args, activation="relu", **kwargs):
        super().__init__(*args, activation=activation, **kwargs)

    def forward(self, x):
        reason = self._config_unsupported() or input_unsupported(x)
        if reason:
            self._fallback(reason)
            y = self._reference(x)
            return y, F.max_pool2d(y, 2)
        return self._fused(conv_bn_act_pool, x)


class UpConcatConv2d(Conv2d):
    """The first conv of a decoder level: ``act(conv(cat([up, skip], 1)))`` (``up_first=False``: ``[skip, up]``)
    without building the concatenation. ``up_mode`` None takes ``up`` at the skip's resolution (e.g. from a
    transposed conv); "nearest" / "bilinear" up-sample it x2 inside the conv's loads. An up-sampled ``up`` smaller
    than the skip (odd sizes) is zero-padded centred. ``in_channels`` is up's plus skip's channels; padding defaults
    to k//2. Same parameters and state_dict as ``nn.Conv2d``."""

    _strided = False

    def __init__(self, in_channels, out_channels, kernel_size=3, *, up_mode=None, align_corners=False, up_first=True,
                 activation="relu", padding=None, **kwargs):
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {up_mode!r}")
        k = nn.modules.utils._pair(kernel_size)[0]
        super().__init__(in_channels, out_channels, kernel_size, padding=k // 2 if padding is None else padding,
                         activation=activation, **kwargs)
        self.up_mode, self.align_corners, self.up_first = up_mode, bool(align_corners), bool(up_first)

    def forward(self, up, skip):
        reason = self._config_unsupported() or input_unsupported(up, "up") or input_unsupported(skip, "skip")
        if reason:
            self._fallback(reason)
            up, skip = functional.materialize(up), functional.materialize(skip)
            up = eager.upsample_pad(up, skip.shape[2], skip.shape[3], self.up_mode, self.align_corners)
            return self._reference(torch.cat([up, skip] if self.up_first else [skip, up], 1))
        return self._fused(concat_conv_bn_act, up, skip, up_mode=self.up_mode, align_corners=self.align_corners,
                           up_first=self.up_first)

    def extra_repr(self):
        up = f", up_mode={self.up_mode!r}" + (", align_corners=True" if self.align_corners else "")
        return super().extra_repr() + up + ("" if self.up_first else ", up_first=False")


class MaxPool2d(_FusedMixin, nn.MaxPool2d):
    """``nn.MaxPool2d``, fused for kernel 2, stride 2 and for kernel 3, stride 2, padding 1 (a ResNet stem's); no
    dilation/ceil_mode/return_indices."""

    def __init__(self, kernel_size=2, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)

    def _config_unsupported(self):
        return max_pool2d_config_unsupported(self)

    def forward(self, x):
        reason = self._config_unsupported() or input_unsupported(x)
        if reason:
            self._fallback(reason)
            return super().forward(functional.materialize(x))
        return functional.max_pool(x, nn.modules.utils._pair(self.kernel_size)[0])


class ConvTranspose2d(_FusedMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (+ optional fused activation), fused for square kernels, stride 1 or 2 up to the kernel
    size, zero padding and output_padding, groups 1 (conv_transpose2d_config_unsupported)."""

    def __init__(self, *args, activation=None, negative_slope=0.01, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_activation(activation, negative_slope, **_factory(kwargs))

    def _config_unsupported(self):
        return conv_transpose2d_config_unsupported(self) or self._activation_unsupported()

    def forward(self, x, output_size=None):
        reason = self._config_unsupported() or input_unsupported(x)
        if output_size is not None:
            reason = reason or "output_size is given"
        if reason:
            self._fallback(reason)
            return self._activate(super().forward(functional.materialize(x), output_size))
        return functional.conv_transpose2d(x, self.weight, self.bias, self.stride[0], self.padding[0],
                                           self.output_padding[0], **self._act_args())

    def extra_repr(self):
        return self._extra(super().extra_repr())
