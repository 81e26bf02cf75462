"""The fused callables a rewritten graph calls: each checks its run-time sizes and dtypes and runs the fused op,
or else the original ops."""
import collections
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree

from fused_unet import eager, functional
from fused_unet import nn as fnn
from fused_unet.kernels.checks import pool_min_size

# The profiler label of the shape-only stand-ins (ops on meta tensors, no data).
SHAPE_ONLY = "fused_unet.swap: shape only (meta tensors)"
_CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate)
_REPLACED_FUNCTIONS = {f.__name__: f for f in (F.pad, F.interpolate, *_CAT_FUNCTIONS, torch._C._nn.upsample_nearest2d,
                                                 torch._C._nn.upsample_bilinear2d)}


def _on_meta(op, *args, **kwargs):
    """op's output on meta tensors (op: a module, or the name of a function a pattern replaces): the shape of a
    replaced node for code that reads only its shape."""
    def meta(value):
        value = value.y if isinstance(value, functional.Normalized) else value
        return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value

    op = _REPLACED_FUNCTIONS[op] if isinstance(op, str) else op
    with torch.profiler.record_function(SHAPE_ONLY):
        return op(*_pytree.tree_map(meta, args, is_leaf=lambda v: isinstance(v, functional.Normalized)),
                  **_pytree.tree_map(meta, kwargs))


class _ConvArgs(NamedTuple):
    """A conv of a torch.compile graph: what the fused calls read of an nn.Conv2d."""
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: object = 1
    padding: object = 0

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


def _running_norm_fields(mode, mode_default):
    """The arguments after the input of F.batch_norm and F.instance_norm (same order; the flag that picks the
    batch's statistics is ``training`` / ``use_input_stats``), with those functions' defaults."""
    return collections.namedtuple(f"_{mode}_fields", ("running_mean", "running_var", "weight", "bias", mode,
                                                      "momentum", "eps"),
                                  defaults=(None, None, None, None, mode_default, 0.1, 1e-5))


class _RunningStatistics:
    """What the fused calls ask of a torch.compile graph's batch / instance norm arguments besides the fields."""
    __slots__ = ()

    @property
    def track_running_stats(self):
        return self.running_mean is not None

    @property
    def affine(self):
        return self.weight is not None


class _BatchNormArgs(_running_norm_fields("training", False), _RunningStatistics):
    """F.batch_norm's arguments in a torch.compile graph: what the fused calls read of an nn.BatchNorm2d. The graph
    itself counts num_batches_tracked and turns a momentum of None into this call's factor."""
    __slots__ = ()
    num_batches_tracked = None
    kind = "batch"

    def forward(self, y):
        return F.batch_norm(y, *self)


class _InstanceNormArgs(_running_norm_fields("use_input_stats", True), _RunningStatistics):
    """F.instance_norm's arguments in a torch.compile graph (an nn.InstanceNorm2d): ``use_input_stats`` is the
    module's ``training or not track_running_stats``."""
    __slots__ = ()
    kind = "instance"

    @property
    def training(self):
        return self.use_input_stats

    def forward(self, y):
        return F.instance_norm(y, *self)


class _GroupNormArgs(collections.namedtuple("_group_norm_fields", ("num_groups", "weight", "bias", "eps"),
                                            defaults=(None, None, None, 1e-5))):
    """F.group_norm's arguments in a torch.compile graph (an nn.GroupNorm)."""
    __slots__ = ()
    kind = "group"
    training = True  # group norm always normalises with the input's own statistics

    def forward(self, y):
        return F.group_norm(y, *self)


# A norm call of a torch.compile graph -> the stand-in holding its arguments after the input (its fields, in order,
# with the function's defaults).
NORM_CALLS = {F.batch_norm: _BatchNormArgs, F.instance_norm: _InstanceNormArgs, F.group_norm: _GroupNormArgs}


def _eager_norm(y, bn):
    return nn.BatchNorm2d.forward(bn, y) if isinstance(bn, nn.BatchNorm2d) else bn.forward(y)


def _eager_chain(x, conv, bn, activation, negative_slope):
    """The original ops of a conv chain, in PyTorch."""
    x = functional.materialize(x)
    y = nn.Conv2d.forward(conv, x) if isinstance(conv, nn.Conv2d) else conv.forward(x)
    if bn is not None:
        y = _eager_norm(y, bn)
    return eager.activate(y, activation, negative_slope)


def _fused_norm_act(x, bn, activation, negative_slope, defer):
    """act(bn(x)) of a norm whose input is not a fused conv's output: pending into the fused ops that read it
    (``defer``), else one kernel; the original ops where x is not an image batch the kernels take (a 3-D sequence
    for attention, a batch norm's single value per channel)."""
    t = functional.materialize(x)
    if fnn.input_unsupported(t) or not t.shape[2] * t.shape[3] or \
            (fnn.norm_kind(bn) == "batch" and bn.training and t.shape[0] * t.shape[2] * t.shape[3] == 1):
        return eager.activate(_eager_norm(t, bn), activation, negative_slope)
    return fnn.norm_act(t, bn, activation, negative_slope, defer)


def _one_activation(a, b):
    """(a, b), b made a tensor where both are pending norms with different activations (a fused concatenation
    applies one)."""
    if isinstance(a, functional.Normalized) and isinstance(b, functional.Normalized) and \
            a.applied_activation != b.applied_activation:
        return a, b.materialize()
    return a, b


def _fused_conv_transpose(x, weight, bias, stride, padding, output_padding, skip=None):
    """conv_transpose2d(x) (with ``skip``: of cat([x, skip], 1), without the concatenation where both are image
    batches of one size), else the original ops."""
    if fnn.input_unsupported(x) or skip is not None and (
            fnn.input_unsupported(skip, "skip") or skip.shape[0] != x.shape[0] or skip.shape[2:] != x.shape[2:]):
        x = functional.materialize(x)
        return F.conv_transpose2d(torch.cat([x, functional.materialize(skip)], 1) if skip is not None else x, weight,
                                  bias, stride=stride, padding=padding, output_padding=output_padding)
    x, skip = _one_activation(x, skip)
    return functional.conv_transpose2d(x, weight, bias, stride, padding, output_padding, skip=skip)


def _fused_max_pool(x, window):
    if fnn.input_unsupported(x) or min(x.shape[2:]) < pool_min_size(window):
        return eager.max_pool(functional.materialize(x), window)
    return functional.max_pool(x, window)


def _fused_conv(x, conv, bn, activation, negative_slope, defer):
    if fnn.input_unsupported(x):
        return _eager_chain(x, conv, bn, activation, negative_slope)
    return fnn.conv_bn_act(x, conv, bn, activation, negative_slope, defer)


def _fused_conv_add(x, conv, bn, residual, activation, negative_slope, projection=None):
    """act(bn(conv(x)) + residual): the residual in the conv's epilogue where it is a tensor of the conv's output
    shape (or broadcast to it) and dtype (fused_unet.nn.conv_bn_add_act), else the fused conv and PyTorch's add.
    ``projection`` (proj_x, proj_conv, proj_bn) in the place of the residual (a ResNet downsample): in the conv's
    kernel where fnn.projection_fits — either conv may be the 1x1 one (a forward that computes the downsample first
    makes it the add's first operand) —, else computed first as the residual (its norm left pending)."""
    if projection is not None:
        for main, other in (((x, conv, bn), projection), (projection, (x, conv, bn))):
            if fnn.projection_fits(*main, *other):
                return fnn.conv_bn_add_act(main[0], None, *main[1:], activation, negative_slope, projection=other)
        residual = _fused_conv(*projection, None, 0.01, defer=True)
    if fnn.input_unsupported(x):
        y = _eager_chain(x, conv, bn, None, 0.01)
    elif not fnn.residual_fits(x, conv, residual):
        y = fnn.conv_bn_act(x, conv, bn)  # the conv fused; an add that widens it or mixes dtypes PyTorch's
    else:
        return fnn.conv_bn_add_act(x, residual, conv, bn, activation, negative_slope)
    return eager.activate(y + functional.materialize(residual), activation, negative_slope)


def _fused_conv_pool(x, conv, bn, activation, negative_slope, defer):
    if fnn.input_unsupported(x) or min(x.shape[2:]) < 2:
        y = _eager_chain(x, conv, bn, activation, negative_slope)
        return y, F.max_pool2d(y, 2)
    return fnn.conv_bn_act_pool(x, conv, bn, activation, negative_slope, defer)


def _centred_pad(up_size, skip_size):
    dh, dw = skip_size[0] - up_size[0], skip_size[1] - up_size[1]
    return [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2]


def _fused_concat_conv(up, skip, conv, bn, activation, negative_slope, defer, up_first, up_mode, align_corners, size,
                       pad, pad_mode, interpolate, upsampler):
    """The concatenating conv where the run-time sizes are those the kernel handles (an x2 up-sampling, a centred
    zero pad to the skip's size), else the original ops."""
    fits = not (fnn.input_unsupported(up, "up") or skip is not None and fnn.input_unsupported(skip, "skip"))
    if fits:
        factor = 1 if up_mode is None else 2
        up_size = (factor * up.shape[2], factor * up.shape[3])
        if size is not None:
            fits = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
            fits = tuple(int(s) for s in fits) == up_size
        skip_size = tuple(skip.shape[2:]) if skip is not None else up_size
        if fits and pad is None:
            fits = up_size == skip_size
        elif fits:
            amounts = [int(p) for p in pad]
            fits = min(skip_size[0] - up_size[0], skip_size[1] - up_size[1]) >= 0 and \
                amounts == _centred_pad(up_size, skip_size) and (pad_mode == "constant" or not any(amounts))
    if fits:
        up, skip = _one_activation(up, skip)
        return fnn.concat_conv_bn_act(up, skip, conv, bn, activation, negative_slope, defer, up_mode=up_mode,
                                      align_corners=align_corners, up_first=up_first)
    up, skip = functional.materialize(up), functional.materialize(skip)
    if upsampler is not None:
        up = upsampler(up)
    elif up_mode is not None:
        up = F.interpolate(up, **interpolate)
    if pad is not None:
        up = F.pad(up, pad, pad_mode)
    if skip is not None:
        up = torch.cat([up, skip] if up_first else [skip, up], 1)
    return _eager_chain(up, conv, bn, activation, negative_slope)


# Fused op -> how many leading arguments are data inputs (which may be pending batch norms).
_FUSED_OPS = {_fused_conv: 1, _fused_conv_pool: 1, _fused_concat_conv: 2}
# Fused op -> the position of its norm argument (a norm left pending where only fused ops read the result).
_NORM_ARGUMENT = {**{op: data + 1 for op, data in _FUSED_OPS.items()}, _fused_norm_act: 1}
# Every fused call and the positions of its data arguments (a pending batch norm may reach them: the residual conv's
# residual too, normalised by the add's kernel, and a projection's input); the conv transpose and the pool have no
# batch norm of their own, and the residual conv's own norm is never left pending (the add reads it).
_DATA_INPUTS = {**{op: tuple(range(data)) for op, data in _FUSED_OPS.items()}, _fused_conv_transpose: (0, 6),
                _fused_max_pool: (0,), _fused_conv_add: (0, 3)}
