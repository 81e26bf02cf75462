"""The functional API: validate, apply autocast, then run the fused autograd Function or the eager twin
(see ``fused_unet.dispatch`` for the rule). Every op is differentiable w.r.t. every tensor input.
``activation`` is None, "relu" or "leaky_relu" (``negative_slope`` >= 0, as in ``F.leaky_relu``); a norm's also
"silu", "gelu", "gelu_tanh" (``F.gelu(approximate="tanh")``) or "prelu" (``negative_slope`` the PReLU's weight, 1 or
C learned slopes, as in ``F.prelu``: differentiable): a conv's own epilogue keeps only its output, and their backward
needs the input, which a pending norm recomputes.

Batch norm in training mode: ``conv2d_stats`` / ``concat_conv2d_stats`` return the pre-norm output and its
batch statistics (written by the conv's epilogue), ``batch_norm`` turns them into a ``Normalized``: the tensor
``act(y * scale + shift)``, never stored. Every op here accepts a ``Normalized`` input and applies its norm and
activation while reading ``y``; ``Normalized.materialize()`` computes it with PyTorch ops for anything else."""
from typing import NamedTuple, Optional

import torch

from fused_unet import eager
from fused_unet.dispatch import backend
from fused_unet.kernels import checks
from fused_unet.kernels.codes import Statistics, image_statistics_fit


class Normalized(NamedTuple):
    """A conv's pre-norm output ``y`` whose norm and activation are pending: it stands for
    ``act(y * scale + shift)`` (``scale``, ``shift``: fp32, one per channel [C] for batch norm, one per image and
    channel [N, C] for instance and group norm; a PReLU's ``negative_slope``: its fp32 slopes [C])."""
    y: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    activation: Optional[str] = None
    negative_slope: float = 0.01

    def materialize(self):
        """The tensor this stands for (differentiable): one kernel (``normalized_add`` without a residual), or
        PyTorch ops on the eager backend."""
        return normalized_add(self)

    @property
    def shape(self):
        return self.y.shape

    @property
    def applied_activation(self):
        """(activation, leaky slope) as a fused reader applies it: equal for two sources a fused concatenation
        reads with one activation (a PReLU's slopes are a table of each source's own: 0.0 here)."""
        return self.activation, 0.0 if self.activation == "prelu" else float(self.negative_slope)


def _functions():
    # Imported on first fused call: Triton reads TRITON_INTERPRET when the kernels are decorated, and the
    # eager fallback must work where Triton is not installed.
    from fused_unet import functions

    return functions


# Devices autocast knows (it raises for others, e.g. meta). A fixed tuple, not torch.amp.is_autocast_available:
# torch.compile 2.11 cannot trace that call and broke the graph at every fused op on a GPU.
_AUTOCAST_DEVICES = ("cuda", "cpu")


def autocast_enabled(device_type):
    return device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type)


def _autocast(*tensors):
    """Cast floating tensors to the autocast dtype when autocast is on, as it does for nn.Conv2d."""
    first = tensors[0]
    if not isinstance(first, torch.Tensor) or not autocast_enabled(first.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def _split(x, name="x"):
    """(tensor, scale, shift, activation, leaky slope, PReLU slopes or None) of a plain tensor (or None) or a
    Normalized, validated."""
    if not isinstance(x, Normalized):
        return x, None, None, None, 0.0, None
    checks.check_pending(name, *x)
    return (x.y, x.scale, x.shift, *x.applied_activation, x.negative_slope if x.activation == "prelu" else None)


def pending_slope(activation, negative_slope, channels):
    """A norm's activation slope as a Normalized keeps it: a PReLU's weight as fp32 [channels] (differentiable), a
    leaky slope as a float."""
    if activation == "prelu":
        return negative_slope.float().reshape(-1).expand(channels)
    return float(negative_slope)


def materialize(x):
    """x itself, or the tensor a Normalized stands for."""
    return x.materialize() if isinstance(x, Normalized) else x


def normalized_add(x, residual=None, activation=None, negative_slope=0.01):
    """``act(x + residual)`` as a tensor (x.y's dtype and dense layout: a fused conv's is channels_last) for a
    Normalized x: its norm and activation applied as y is read, the residual (optional: a tensor of x's shape and
    dtype, or a Normalized: of x.y's shape and dtype it is normalised as it is read — a ResNet projection's output,
    never stored —, else made a tensor first) added, then ``activation`` (a ResNet block's end:
    ``relu(bn2(conv2(h)) + identity)``; ``activation`` ReLU / LeakyReLU or None, and only with a residual), in one
    kernel; backward is one kernel and saves nothing but y (the residual's y) and, with an activation, the output."""
    if not isinstance(x, Normalized):
        raise TypeError(f"x must be a Normalized (a pending norm), got {type(x).__name__}")
    y, scale, shift, in_act, in_slope, prelu = _split(x)
    if residual is None and activation is not None:
        raise ValueError(f"activation {activation!r} needs a residual: without one, the Normalized's own activation "
                         "is the last")
    checks.check_activation(activation, negative_slope, epilogue=True)
    if backend(y) != "eager" and _reads_pending(residual, y):
        res_y, res_scale, res_shift, res_act, res_slope, res_prelu = _split(residual, "residual")
        return _functions().PendingNorm.apply(y, scale, shift, res_y, in_act, in_slope, activation,
                                              float(negative_slope), prelu, res_scale, res_shift, res_act, res_slope,
                                              res_prelu)
    residual = materialize(residual)
    if isinstance(residual, torch.Tensor) and autocast_enabled(y.device.type) and residual.is_floating_point():
        residual = residual.to(y.dtype)  # as the conv epilogue's residual: the autocast dtype
    residual = checks.check_added(residual, y, y.shape, "x.y")
    if backend(y) == "eager":
        z = eager.pending_norm(y, scale, shift, in_act, in_slope if prelu is None else prelu)
        return z if residual is None else eager.activate(z + residual, activation, negative_slope)
    return _functions().PendingNorm.apply(y, scale, shift, residual, in_act, in_slope, activation,
                                          float(negative_slope), prelu, None, None, None, 0.0, None)


def _reads_pending(residual, y):
    """Whether ``normalized_add``'s kernel reads ``residual`` as a pending norm: a Normalized of y's shape, dtype and
    device (else it is made a tensor, which the add may broadcast or cast)."""
    return isinstance(residual, Normalized) and isinstance(residual.y, torch.Tensor) and \
        residual.y.shape == y.shape and residual.y.dtype == y.dtype and residual.y.device == y.device


class Projection(NamedTuple):
    """A 1x1 conv ``conv2d(x, weight, bias, stride)`` (weight [C_out, C_p, 1, 1], stride 1 or 2) that ``conv2d``
    sums into its own accumulator: a ResNet downsample block's projection of the block input."""
    x: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None
    stride: int = 1


def conv2d(x, weight, bias=None, activation=None, negative_slope=0.01, *, stride=1, padding="same", residual=None,
           projection=None):
    """``act(conv2d(x, weight, bias, stride, padding) + residual)`` for a square kernel k (1x1 ... 31x31), stride 1
    or 2, zero padding (an int in [0, k), "valid" or "same" for an odd k at stride 1), groups 1. x: [N, C_in, H, W]
    (any strides) or a Normalized, weight: [C_out, C_in, k, k], ``residual`` (optional, any strides) of the output's
    shape or broadcast to it, added in the kernel's epilogue (a ResNet or diffusion block's skip, a diffusion
    block's time embedding [N, C, 1, 1]: read with zero strides, its gradient summed by autograd); ``projection``
    (a ``Projection``, optional): its 1x1 conv computed in the same kernel, a second GEMM into the same accumulator
    (a ResNet downsample block's ``conv2(h) + downsample(x)`` with both norms folded: the projection's output is
    never stored); returns channels_last [N, C_out, H_out, W_out]."""
    return _conv2d(x, weight, bias, activation, negative_slope, stride, padding, stats=None, residual=residual,
                   projection=projection)


def conv2d_stats(x, weight, bias=None, *, stride=1, padding="same", per_image=False):
    """``(y, stats)``: the conv of x (plain or Normalized) and, for the batch norm that follows it, y's
    per-channel statistics (per group of rows; see ``batch_norm``), or with ``per_image`` per (image, channel) for
    an instance / group norm (see ``group_norm``), written by the conv's epilogue. ``stats`` is None on the eager
    backend, and per image where an output image has fewer than 64 pixels: the norm's reduction kernel reads y."""
    return _conv2d(x, weight, bias, None, 0.01, stride, padding, stats=_statistics(per_image))


def _statistics(per_image):
    return Statistics.IMAGE if per_image else Statistics.CHANNEL


def _epilogue_statistics(stats, pixels_per_image):
    """The statistics a conv's epilogue writes for the ``stats`` asked (None: none): per-image ones only of images
    it covers."""
    if not stats or (stats == Statistics.IMAGE and not image_statistics_fit(pixels_per_image)):
        return Statistics.NONE
    return stats


def _conv2d(x, weight, bias, activation, negative_slope, stride, padding, stats, residual=None, projection=None):
    x_t, scale, shift, in_act, in_slope, prelu = _split(x)
    x_t, weight, bias, residual = _autocast(x_t, weight, bias, residual)
    stride, padding = checks.check_conv2d(x_t, weight, bias, stride, padding)
    residual = checks.check_residual(residual, x_t, weight, stride, padding)
    checks.check_activation(activation, negative_slope, epilogue=True)
    if projection is not None:
        if not isinstance(projection, Projection):
            raise TypeError(f"projection must be a fused_unet.functional.Projection, got {type(projection).__name__}")
        projection = Projection(*_autocast(*projection[:3]), projection.stride)
        checks.check_projection(*projection, x_t, weight, stride, padding)
        bias = projection.bias if bias is None else bias if projection.bias is None else bias + projection.bias
    if backend(x_t) == "eager":
        if projection is not None:
            added = eager.conv2d(projection.x, projection.weight, stride=projection.stride, padding=0)
            residual = added if residual is None else residual + added
        plain = _autocast(materialize(x))[0]
        y = eager.conv2d(plain, weight, bias, activation, negative_slope, stride=stride, padding=padding,
                         residual=residual)
        # The eager norms compute their statistics from y itself: no workspace.
        return (y, None) if stats else y
    out = checks.conv_output_shape(x_t.shape, weight.shape, stride, padding)
    written = _epilogue_statistics(stats, out[2] * out[3])
    proj_x, proj_weight, _, proj_stride = projection or (None, None, None, 1)
    y = _functions().Conv2dBiasAct.apply(x_t, scale, shift, weight, bias, activation, float(negative_slope), in_act,
                                         in_slope, int(written), stride, padding, residual, proj_x, proj_weight,
                                         proj_stride, prelu)
    return (y, None) if stats and not written else y


def conv2d_pool(x, weight, bias=None, activation="relu", negative_slope=0.01):
    """``(y, max_pool2d(y, 2))`` with ``y = conv2d(x, weight, bias, activation)``: one kernel writes both (the
    encoder's skip and its pooled output). H and W >= 2; odd sizes drop the last row/column like MaxPool2d.
    A Normalized x is materialised first."""
    x, weight, bias = _autocast(materialize(x), weight, bias)
    checks.check_conv2d(x, weight, bias)
    checks.check_pool_size(x)
    checks.check_activation(activation, negative_slope, epilogue=True)
    if backend(x) == "eager":
        return eager.conv2d_pool(x, weight, bias, activation, negative_slope)
    return _functions().Conv2dBiasActPool.apply(x, weight, bias, activation, float(negative_slope))


def _shared_activation(*sources):
    """(activation, leaky slope) the pending norms of a virtual concatenation's sources (name, scale or None,
    activation, slope) apply: one for all (PReLUs may differ in their slopes: each source reads its own table)."""
    pending = [(name, act, slope) for name, scale, act, slope in sources if scale is not None]
    if len({(act, slope) for _, act, slope in pending}) > 1:
        (a, a_act, a_slope), (b, b_act, b_slope) = pending[:2]
        raise ValueError(f"{a} and {b} are Normalized with different activations ({a_act}, {a_slope}) and "
                         f"({b_act}, {b_slope}); the fused concatenation applies one")
    return pending[0][1:] if pending else (None, 0.0)


def concat_conv2d(up, skip, weight, bias=None, activation="relu", negative_slope=0.01, *, up_mode=None,
                  align_corners=False, up_first=True):
    """``conv2d(cat([pad(upsample(up)), skip], 1), weight, bias, activation)`` (``[skip, up]`` with
    ``up_first=False``) without materialising the concatenation or the up-sampled tensor: the kernel reads both
    tensors (plain or Normalized). ``up_mode``: None (``up`` is already up-sampled, e.g. by a transposed conv),
    "nearest" or "bilinear" (x2, ``align_corners`` as in F.interpolate). An up-sampled ``up`` smaller than
    ``skip`` (odd sizes) is zero-padded centred, like ``F.pad(up, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])``.
    ``skip=None``: the conv of the up-sampled ``up`` alone (a decoder step without a skip connection)."""
    return _concat_conv2d(up, skip, weight, bias, activation, negative_slope, up_mode, align_corners, up_first, None)


def concat_conv2d_stats(up, skip, weight, bias=None, *, up_mode=None, align_corners=False, up_first=True,
                        per_image=False):
    """``(y, stats)`` of ``concat_conv2d`` without activation, for the norm that follows it (see ``conv2d_stats``)."""
    return _concat_conv2d(up, skip, weight, bias, None, 0.01, up_mode, align_corners, up_first,
                          _statistics(per_image))


def _concat_conv2d(up, skip, weight, bias, activation, negative_slope, up_mode, align_corners, up_first, stats):
    up_t, up_scale, up_shift, up_act, up_slope, up_prelu = _split(up, "up")
    skip_t, skip_scale, skip_shift, skip_act, skip_slope, skip_prelu = _split(skip, "skip")
    in_act, in_slope = _shared_activation(("up", up_scale, up_act, up_slope), ("skip", skip_scale, skip_act,
                                                                                skip_slope))
    up_t, skip_t, weight, bias = _autocast(up_t, skip_t, weight, bias)
    checks.check_concat_conv2d(up_t, skip_t, weight, bias, up_mode, align_corners)
    checks.check_activation(activation, negative_slope, epilogue=True)
    if backend(up_t) == "eager":
        up, skip = _autocast(materialize(up), materialize(skip))
        if stats:
            return eager.concat_conv2d(up, skip, weight, bias, None, 0.01, up_mode, align_corners, up_first), None
        return eager.concat_conv2d(up, skip, weight, bias, activation, negative_slope, up_mode, align_corners, up_first)
    _, height, width = checks.concat_grid(up_t, skip_t, up_mode)
    written = _epilogue_statistics(stats, height * width)
    y = _functions().ConcatConv2dBiasAct.apply(up_t, up_scale, up_shift, skip_t, skip_scale, skip_shift, weight, bias,
                                               activation, float(negative_slope), up_mode, align_corners,
                                               bool(up_first), in_act, in_slope, int(written), up_prelu, skip_prelu)
    return (y, None) if stats and not written else y


def batch_norm(y, stats, weight=None, bias=None, running_mean=None, running_var=None, momentum=0.1, eps=1e-5,
               activation=None, negative_slope=0.01):
    """Training-mode batch norm of a ``conv2d_stats`` / ``concat_conv2d_stats`` output (``stats``: the statistics
    its epilogue wrote) or of any tensor y (``stats`` None: one reduction kernel reads y): the Normalized
    ``act((y - mean) / sqrt(var + eps) * weight + bias)`` with y's batch mean and biased variance. Updates
    ``running_mean`` / ``running_var`` in place like ``nn.BatchNorm2d`` (``momentum``: the weight of this batch;
    the running variance takes the unbiased variance)."""
    channels = y.shape[1]
    checks.check_activation(activation, negative_slope, channels=channels)
    weight = weight if weight is not None else torch.ones(channels, device=y.device)
    bias = bias if bias is not None else torch.zeros(channels, device=y.device)
    if backend(y) == "eager":
        scale, shift, mean, var = eager.batch_norm_scale_shift(y, weight, bias, eps)
        _update_running(running_mean, running_var, mean, var, y.numel() // channels, momentum)
    else:  # the kernel that finalises the statistics updates the running ones
        y, scale, shift = _functions().BatchNormScaleShift.apply(y, stats, weight, bias, float(eps), running_mean,
                                                                 running_var, float(momentum))
    return Normalized(y, scale, shift, activation, pending_slope(activation, negative_slope, channels))


def group_norm(y, num_groups, weight=None, bias=None, eps=1e-5, activation=None, negative_slope=0.01, stats=None):
    """Group norm of a conv's output ``y`` (plain tensor [N, C, H, W], C divisible by ``num_groups``) as the
    Normalized ``act((y - mean) / sqrt(var + eps) * weight + bias)``, mean and biased variance per (image, group):
    its scale and shift are per (image, channel) [N, C], applied by the next fused op while it reads ``y``.
    ``stats``: the per-image statistics the conv's epilogue wrote (``conv2d_stats(..., per_image=True)``); None:
    one reduction kernel reads y."""
    y, scale, shift = _group_norm(y, num_groups, weight, bias, eps, activation, negative_slope, stats)
    return Normalized(y, scale, shift, activation, pending_slope(activation, negative_slope, y.shape[1]))


def instance_norm(y, weight=None, bias=None, running_mean=None, running_var=None, momentum=0.1, eps=1e-5,
                  activation=None, negative_slope=0.01, stats=None):
    """Instance norm (statistics per image and channel) of a conv's output ``y`` as a Normalized (see
    ``group_norm``, ``stats`` too). Updates ``running_mean`` / ``running_var`` in place like ``nn.InstanceNorm2d``
    with ``track_running_stats`` (the batch's average of the per-image mean and unbiased variance)."""
    y, scale, shift = _group_norm(y, y.shape[1], weight, bias, eps, activation, negative_slope, stats,
                                  (running_mean, running_var, momentum))
    return Normalized(y, scale, shift, activation, pending_slope(activation, negative_slope, y.shape[1]))


def _group_norm(y, groups, weight, bias, eps, activation, negative_slope, stats, running=(None, None, 0.0)):
    """(y as its consumers read it, scale, shift [N, C]) of a group norm of y; an instance norm's ``running``
    (mean, var, momentum) statistics updated in place."""
    checks.check_group_norm(y, groups, weight, bias)
    checks.check_activation(activation, negative_slope, channels=y.shape[1])
    channels = y.shape[1]
    weight = weight if weight is not None else torch.ones(channels, device=y.device)
    bias = bias if bias is not None else torch.zeros(channels, device=y.device)
    if backend(y) == "eager":
        scale, shift, mean, var = eager.group_norm_scale_shift(y, groups, weight, bias, eps)
        running_mean, running_var, momentum = running
        _update_running(running_mean, running_var, mean.mean(0), var.mean(0), y.shape[2] * y.shape[3], momentum)
        return y, scale, shift
    return _functions().GroupNormScaleShift.apply(y, stats, weight, bias, int(groups), float(eps), *running)


def _update_running(running_mean, running_var, mean, var, count, momentum):
    """Running statistics updated in place like nn.BatchNorm2d's: ``momentum`` weighs this batch's mean and
    unbiased variance (``var`` is biased over ``count`` elements)."""
    if running_mean is None:
        return
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        unbiased = var * count / max(count - 1, 1)
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def max_pool2x2(x):
    """``max_pool2d(x, 2)``: floor mode, NaN propagates; keeps x's memory format. x may be a Normalized."""
    return max_pool(x, 2)


def max_pool(x, window):
    """``max_pool2d(x, window, stride=2, padding=window - 2)`` for ``window`` 2 (the U-Net's) or 3 (a ResNet stem's:
    padding 1): floor mode, NaN propagates; keeps x's memory format. x may be a Normalized (a pending norm +
    activation, applied as the pool reads it)."""
    x_t, scale, shift, in_act, in_slope, prelu = _split(x)
    checks.check_max_pool(x_t, window)
    if backend(x_t) == "eager":
        return eager.max_pool(materialize(x), window)
    return _functions().MaxPool.apply(x_t, scale, shift, in_act, in_slope, window, prelu)


def conv_transpose2d(x, weight, bias=None, stride=2, padding=0, output_padding=0, activation=None,
                     negative_slope=0.01, *, skip=None):
    """``act(conv_transpose2d(x, weight, bias, stride, padding, output_padding))`` for a square weight [C_in, C_out,
    k, k] and a stride (1 or 2) up to k — MONAI's 3x3 / stride 2 / output_padding 1, Linknet's 4x4 / stride 2 /
    padding 1; x may be a Normalized (read as it is loaded). The 2x2 / stride-2 / unpadded case is
    conv_transpose2x2 (one GEMM). With ``skip`` (a tensor or Normalized of x's batch, size and dtype): of
    ``cat([x, skip], 1)`` without building it (MONAI UNet's up layers; the weight's first C_x rows read x)."""
    x_t, scale, shift, in_act, in_slope, prelu = _split(x)
    skip_t, skip_scale, skip_shift, skip_act, skip_slope, skip_prelu = _split(skip, "skip")
    in_act, in_slope = _shared_activation(("x", scale, in_act, in_slope), ("skip", skip_scale, skip_act, skip_slope))
    x_t, weight, bias, skip_t = _autocast(x_t, weight, bias, skip_t)
    stride, padding, output_padding = checks.check_conv_transpose2d(x_t, weight, bias, stride, padding,
                                                                    output_padding, skip_t)
    if skip is None and weight.shape[2] == 2 and (stride, padding, output_padding) == (2, 0, 0):
        return conv_transpose2x2(x, weight, bias, activation, negative_slope)
    checks.check_activation(activation, negative_slope, epilogue=True)
    if backend(x_t) == "eager":
        inputs = _autocast(*(materialize(t) for t in (x, skip) if t is not None))
        return eager.conv_transpose2d(torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0], weight, bias,
                                      activation, negative_slope, stride, padding, output_padding)
    return _functions().ConvTranspose2dBiasAct.apply(x_t, scale, shift, weight, bias, activation,
                                                     float(negative_slope), in_act, in_slope, stride, padding,
                                                     output_padding, prelu, skip_t, skip_scale, skip_shift,
                                                     skip_prelu)


def conv_transpose2x2(x, weight, bias=None, activation=None, negative_slope=0.01):
    """``act(conv_transpose2d(x, weight, bias, stride=2))`` for weight [C_in, C_out, 2, 2]; x may be a
    Normalized."""
    x_t, scale, shift, in_act, in_slope, prelu = _split(x)
    x_t, weight, bias = _autocast(x_t, weight, bias)
    checks.check_conv_transpose2x2(x_t, weight, bias)
    checks.check_activation(activation, negative_slope, epilogue=True)
    if backend(x_t) == "eager":
        return eager.conv_transpose2x2(_autocast(materialize(x))[0], weight, bias, activation, negative_slope)
    return _functions().ConvTranspose2x2BiasAct.apply(x_t, scale, shift, weight, bias, activation,
                                                      float(negative_slope), in_act, in_slope, prelu)
