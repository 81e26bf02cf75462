"""torch.autograd.Functions of the fused ops: what each saves for backward and which kernels run.

What is saved is the least backward needs, and never a copy: the activation's output instead of its input (its
sign is the mask), the pool's 1-byte argmax, a virtual concatenation's two sources (which exist anyway) and,
for an input whose batch norm + activation are pending (read through ``in_scale``, ``in_shift``), the pre-norm
tensor itself: the normalised one is recomputed by the kernels that need it, never stored."""
from typing import Callable, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from fused_unet import candidates, ops
from fused_unet.kernels import conv, grad, norm, pool, specs, upsample
from fused_unet.kernels.codes import Statistics


def _traced(like):
    """Whether torch.compile is tracing, or ``like`` is a meta tensor: then the custom ops run, nothing else
    (but while fused_unet.plan records a step: it reads the launchers' launches)."""
    return torch.compiler.is_compiling() or (like.device.type == "meta" and not specs.recording_active())


def _launch(launcher, like):
    """``launcher`` (a fused_unet.kernels function) itself; while torch.compile traces, or for meta tensors like
    ``like``, its custom-op twin (opaque to the tracer; shape-only on meta tensors)."""
    return ops.custom_op(launcher) if _traced(like) else launcher


class _Gemms(NamedTuple):
    """The backward GEMM launchers of a conv-like op, and how aten's convolution_backward computes the same."""
    input_grad: Callable
    weight_grad: Callable
    transposed: bool  # aten: a 2x2 stride-2 transposed conv, else a conv of the op's stride and padding


_CONV = _Gemms(conv.conv2d_input_grad, conv.conv2d_weight_grad, transposed=False)
_CONV_TRANSPOSE = _Gemms(conv.conv_transpose2x2_input_grad, conv.conv_transpose2x2_weight_grad, transposed=True)


def _needs(ctx, *indices):
    return any(ctx.needs_input_grad[i] for i in indices)


def _through_pending_norm(ctx, grad_z, x, scale, shift, slope, index):
    """(dL/dx, dL/dscale, dL/dshift, dL/dslope) from dL/dz, z the input as the kernel read it: x itself, or
    act(x * scale + shift) when its norm was pending (inputs ``index``, ``index + 1``, ``index + 2``; ``slope``: a
    PReLU's slopes, else None)."""
    if grad_z is None or scale is None:
        return grad_z, None, None, None
    dx, dscale, dshift, dslope = _launch(norm.batch_norm_act_input_grad, grad_z)(grad_z, x, scale, shift,
                                                                               *ctx.in_act, slope=slope)
    return dx if ctx.needs_input_grad[index] else None, dscale, dshift, (dslope if slope is not None else None)


def _save(ctx, *tensors, y, activation, negative_slope, in_activation=None, in_negative_slope=0.0, in_slopes=(),
          extra=()):
    """Save ``tensors``, then, with an activation, its output ``y`` (the mask of the activation's backward), then
    ``in_slopes`` (the sources' PReLU slopes or None, read back by ``_slopes``), then ``extra`` (``_extra``)."""
    ctx.save_for_backward(*tensors, y if activation else None, *in_slopes, *extra)
    ctx.slopes, ctx.extra = len(in_slopes), len(extra)
    ctx.act = (activation, negative_slope)
    ctx.in_act = (in_activation, in_negative_slope)


def _slopes(ctx):
    """(saved tensors but the slopes and extras, the slopes) (see ``_save``)."""
    saved = ctx.saved_tensors[:len(ctx.saved_tensors) - ctx.extra]
    return saved[:len(saved) - ctx.slopes], saved[len(saved) - ctx.slopes:]


def _extra(ctx):
    """The ``extra`` tensors ``_save`` saved last."""
    return ctx.saved_tensors[len(ctx.saved_tensors) - ctx.extra:]


def _with_workspace(ctx, y, workspace):
    """(y, workspace) of a conv that wrote its norm's per-tile statistics: no gradient flows into the workspace, and
    autograd leaves it None instead of filling a [tiles, 3, C] tensor with zeros (so an unused y's is None too)."""
    ctx.mark_non_differentiable(workspace)
    ctx.set_materialize_grads(False)
    return y, workspace


class Conv2dBiasAct(torch.autograd.Function):
    """Conv (``stride`` 1 or 2, zero ``padding``) + bias (+ ``residual``) (+ activation) of x, or of
    act(x * in_scale + in_shift) (a pending norm; ``in_slope``: its PReLU's slopes). ``stats`` (codes.Statistics,
    not NONE): no activation; returns (y, per-tile statistics of y) for the norm that follows. The residual's
    gradient is the prepared output gradient: nothing saved. ``proj_x``, ``proj_weight`` [C_out, C_p, 1, 1],
    ``proj_stride``: a 1x1 conv of another input summed into the same accumulator (a ResNet downsample block's end:
    its output never stored); saves proj_x (the block input, alive anyway) and proj_weight; its gradients are the
    input-grad and weight-grad of that conv from the same prepared gradient."""

    @staticmethod
    def forward(ctx, x, in_scale, in_shift, weight, bias, activation, negative_slope, in_activation,
                in_negative_slope, stats, stride, padding, residual=None, proj_x=None, proj_weight=None,
                proj_stride=1, in_slope=None):
        pending = (in_scale, in_shift, in_activation, in_negative_slope)
        geometry = dict(stride=stride, padding=padding, in_slope=in_slope)
        if stats:
            result = y, _ = _with_workspace(ctx, *_launch(conv.conv2d_stats_forward, x)(
                x, weight, bias, *pending, **geometry, per_image=stats == Statistics.IMAGE))
        else:
            y = result = _launch(conv.conv2d_forward, x)(x, weight, bias, activation, negative_slope, *pending,
                                                         **geometry, residual=residual, proj_x=proj_x,
                                                         proj_weight=proj_weight, proj_stride=proj_stride)
        _save(ctx, x, in_scale, in_shift, weight, y=y, activation=activation, negative_slope=negative_slope,
              in_activation=in_activation, in_negative_slope=in_negative_slope, in_slopes=(in_slope,),
              extra=(proj_x, proj_weight) if proj_x is not None else ())
        ctx.geometry = dict(stride=stride, padding=padding)
        ctx.proj_geometry = dict(stride=proj_stride, padding=0)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_stats=None):
        if grad_y is None:
            return (None,) * len(ctx.needs_input_grad)
        # The residual's gradient is the prepared one (the activation's backward applied): it entered before it.
        *grads, dslope, dz = _one_source_backward(ctx, grad_y, _CONV, prepared=True)
        grad_proj_x = grad_proj_w = None
        if ctx.extra:
            proj_x, proj_weight = _extra(ctx)
            if ctx.needs_input_grad[13]:
                grad_proj_x = _input_grad(_CONV, dz, proj_x, proj_weight, **ctx.proj_geometry)
            if ctx.needs_input_grad[14]:
                grad_proj_w = _weight_grad(_CONV, dz, proj_x, proj_weight, ctx.proj_geometry)
        return (*grads, *[None] * 7, dz if ctx.needs_input_grad[12] else None, grad_proj_x, grad_proj_w, None,
                dslope)


def _prepared(ctx, grad_y, out, bias_index, grad_pooled=None, argmax=None):
    """(dz, dL/dbias): the conv's output gradient with its activation's (and pool's) backward applied, once, for
    the backward GEMMs, and the bias-grad (None unless input ``bias_index`` needs it). A gradient with nothing to
    apply that is already channels_last is used as it is."""
    bias_grad = ctx.needs_input_grad[bias_index]
    if out is None and grad_pooled is None and not bias_grad and \
            grad_y.is_contiguous(memory_format=torch.channels_last):
        return grad_y, None
    dz, db = _launch(grad.conv_output_grad, grad_y)(grad_y, out, *ctx.act, grad_pooled, argmax, bias_grad)
    return dz, (db if bias_grad else None)


def _aten_backward(dz, x, weight, gemms, output_mask, stride=1, padding=None):
    """aten's convolution_backward of the op of ``gemms`` (a conv of ``stride`` and ``padding``, None: 'same';
    conv_transpose2x2: stride 2)."""
    padding = conv.conv_padding(weight, padding)
    stride, padding = ([2, 2], [0, 0]) if gemms.transposed else ([stride] * 2, [padding] * 2)
    return torch.ops.aten.convolution_backward(dz, x, weight, None, stride, padding, [1, 1], gemms.transposed, [0, 0],
                                               1, output_mask)


def _input_grad(gemms, dz, x, weight, **geometry):
    """dL/dx from the prepared gradient: our kernel, or aten's where it is faster (fused_unet.candidates).
    ``geometry``: a conv's stride and padding."""
    def triton():
        size = dict(input_size=list(x.shape[2:])) if geometry else {}
        return _launch(gemms.input_grad, dz)(dz, weight, **geometry, **size)

    if _traced(dz):
        return triton()
    return candidates.run(gemms.input_grad.__name__, (dz, x, weight), dict(
        triton=triton, aten=lambda: _aten_backward(dz, x, weight, gemms, [True, False, False], **geometry)[0]))


def _weight_grad(gemms, dz, x, weight, geometry=None, **pending):
    """dL/dweight from the prepared gradient: our kernel, or aten's (x as stored: no pending norm) where faster."""
    geometry = geometry or {}

    def triton():
        return _launch(gemms.weight_grad, dz)(dz, x, weight, **pending, **geometry)

    if _traced(dz) or pending.get("in_scale") is not None:
        return triton()
    return candidates.run(gemms.weight_grad.__name__, (dz, x, weight), dict(
        triton=triton, aten=lambda: _aten_backward(dz, x, weight, gemms, [False, True, False], **geometry)[1]))


def _one_source_backward(ctx, grad_y, gemms, prepared=False):
    """(dx, d in_scale, d in_shift, dweight, dbias, d in_slope) of a conv-like op whose inputs start (x, in_scale,
    in_shift, weight, bias) and whose saved tensors are (x, in_scale, in_shift, weight, out, in_slope); ``prepared``:
    and the prepared output gradient last."""
    (x, in_scale, in_shift, weight, out), (in_slope,) = _slopes(ctx)
    dz, grad_b = _prepared(ctx, grad_y, out, 4)
    grad_z = grad_w = None
    geometry = getattr(ctx, "geometry", {})
    if _needs(ctx, 0, 1, 2, len(ctx.needs_input_grad) - 1):  # the slopes are the last input
        grad_z = _input_grad(gemms, dz, x, weight, **geometry)
    if ctx.needs_input_grad[3]:
        in_activation, in_negative_slope = ctx.in_act
        grad_w = _weight_grad(gemms, dz, x, weight, geometry, in_scale=in_scale, in_shift=in_shift,
                              in_activation=in_activation, in_negative_slope=in_negative_slope, in_slope=in_slope)
    *grad_x, dslope = _through_pending_norm(ctx, grad_z, x, in_scale, in_shift, in_slope, 0)
    return (*grad_x, grad_w, grad_b, dslope) + ((dz,) if prepared else ())


class Conv2dBiasActPool(torch.autograd.Function):
    """(y, max_pool2d(y, 2)) of y = act(conv2d(x) + bias), one kernel. Saves x, weight, y (which is also what the
    skip connection keeps alive) and the pool's 1-byte argmax; backward scatters the pooled gradient into y's
    gradient while the conv's backward kernels load it."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation, negative_slope):
        y, pooled, argmax = _launch(conv.conv2d_pool_forward, x)(x, weight, bias, activation, negative_slope)
        _save(ctx, x, weight, argmax, y=y, activation=activation, negative_slope=negative_slope)
        return y, pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_pooled):
        x, weight, argmax, out = ctx.saved_tensors
        dz, grad_b = _prepared(ctx, grad_y, out, 2, grad_pooled, argmax)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(_CONV, dz, x, weight)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(_CONV, dz, x, weight)
        return grad_x, grad_w, grad_b, None, None


class ConcatConv2dBiasAct(torch.autograd.Function):
    """act(conv2d(cat([pad(upsample(up)), skip], 1)) + bias) (or [skip, up]) without the concatenation: saves
    up, skip (both exist anyway) and weight, plus the output with an activation. Either source may carry a
    pending norm (its scale and shift, and with a PReLU its slopes); ``stats`` as in Conv2dBiasAct."""

    @staticmethod
    def forward(ctx, up, up_scale, up_shift, skip, skip_scale, skip_shift, weight, bias, activation, negative_slope,
                up_mode, align_corners, up_first, in_activation, in_negative_slope, stats, up_slope=None,
                skip_slope=None):
        layout = (up_mode, align_corners, up_first)
        pending = (up_scale, up_shift, skip_scale, skip_shift, in_activation, in_negative_slope)
        slopes = dict(up_slope=up_slope, skip_slope=skip_slope)
        if stats:
            result = y, _ = _with_workspace(ctx, *_launch(conv.concat_conv2d_stats_forward, up)(
                up, skip, weight, bias, *layout, *pending, **slopes, per_image=stats == Statistics.IMAGE))
        else:
            y = result = _launch(conv.concat_conv2d_forward, up)(up, skip, weight, bias, activation, negative_slope,
                                                                 *layout, *pending, **slopes)
        _save(ctx, up, up_scale, up_shift, skip, skip_scale, skip_shift, weight, y=y, activation=activation,
              negative_slope=negative_slope, in_activation=in_activation, in_negative_slope=in_negative_slope,
              in_slopes=(up_slope, skip_slope))
        ctx.layout = layout
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_stats=None):
        if grad_y is None:
            return (None,) * len(ctx.needs_input_grad)
        (up, up_scale, up_shift, skip, skip_scale, skip_shift, weight, out), (up_slope, skip_slope) = _slopes(ctx)
        up_mode, align_corners, up_first = ctx.layout
        dz, grad_b = _prepared(ctx, grad_y, out, 7)
        grad_up = grad_skip = grad_w = None
        if _needs(ctx, 0, 1, 2, 3, 4, 5, 16, 17):
            grad_cat = _launch(conv.conv2d_input_grad, dz)(dz, weight)
            c_up, c_skip = up.shape[1], skip.shape[1] if skip is not None else 0
            if _needs(ctx, 3, 4, 5, 17):
                grad_skip = grad_cat[:, c_up:] if up_first else grad_cat[:, :c_skip]
            if _needs(ctx, 0, 1, 2, 16):
                up_channels = slice(0, c_up) if up_first else slice(c_skip, c_skip + c_up)
                factor = 1 if up_mode is None else 2
                h_up, w_up = factor * up.shape[2], factor * up.shape[3]
                top, left = (dz.shape[2] - h_up) // 2, (dz.shape[3] - w_up) // 2
                grad_up = grad_cat[:, up_channels, top:top + h_up, left:left + w_up]
                if up_mode is not None:
                    grad_up = _launch(upsample.upsample2x_backward, grad_up)(grad_up, list(up.shape), up_mode,
                                                                        align_corners)
        if ctx.needs_input_grad[6]:
            grad_w = _launch(conv.conv2d_weight_grad, dz)(dz, up, weight, skip, up_mode, align_corners, up_first,
                                                         up_scale, up_shift, skip_scale, skip_shift, *ctx.in_act,
                                                         in_slope=up_slope, skip_slope=skip_slope)
        *grad_up, grad_up_slope = _through_pending_norm(ctx, grad_up, up, up_scale, up_shift, up_slope, 0)
        *grad_skip, grad_skip_slope = _through_pending_norm(ctx, grad_skip, skip, skip_scale, skip_shift, skip_slope,
                                                            3)
        return (*grad_up, *grad_skip, grad_w, grad_b, *[None] * 8, grad_up_slope, grad_skip_slope)


class ConvTranspose2x2BiasAct(torch.autograd.Function):
    """2x2 stride-2 transposed conv + bias (+ activation), of x or of x's pending batch norm + activation."""

    @staticmethod
    def forward(ctx, x, in_scale, in_shift, weight, bias, activation, negative_slope, in_activation,
                in_negative_slope, in_slope=None):
        y = _launch(conv.conv_transpose2x2_forward, x)(x, weight, bias, activation, negative_slope, in_scale, in_shift,
                                                      in_activation, in_negative_slope, in_slope=in_slope)
        _save(ctx, x, in_scale, in_shift, weight, y=y, activation=activation, negative_slope=negative_slope,
              in_activation=in_activation, in_negative_slope=in_negative_slope, in_slopes=(in_slope,))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        *grads, dslope = _one_source_backward(ctx, grad_y, _CONV_TRANSPOSE)
        return (*grads, None, None, None, None, dslope)


class ConvTranspose2dBiasAct(torch.autograd.Function):
    """act(conv_transpose2d(x) + bias) of a square kernel and a stride up to its size, of x or of x's pending norm +
    activation: the phases of the conv it transposes (kernels.conv.conv_transpose2d_forward); with ``skip``, of
    cat([x, skip], 1) without the concatenation (each source may carry its pending norm). Saves x and skip (pre-norm),
    the norms' scale and shift, weight (and the output with an activation). Backward: dL/dx is that conv (its stride
    and padding) of the prepared gradient, split along the channels, then each pending norm's backward; dL/dweight
    its weight-grad with each source, normalised again by one kernel, in the place of the output gradient (each
    source its rows of the weight)."""

    @staticmethod
    def forward(ctx, x, in_scale, in_shift, weight, bias, activation, negative_slope, in_activation, in_negative_slope,
                stride, padding, output_padding, in_slope=None, skip=None, skip_scale=None, skip_shift=None,
                skip_slope=None):
        y = _launch(conv.conv_transpose2d_forward, x)(x, weight, bias, activation, negative_slope, in_scale, in_shift,
                                                     in_activation, in_negative_slope, stride, padding, output_padding,
                                                     in_slope=in_slope, skip=skip, skip_scale=skip_scale,
                                                     skip_shift=skip_shift, skip_slope=skip_slope)
        _save(ctx, x, in_scale, in_shift, skip, skip_scale, skip_shift, weight, y=y, activation=activation,
              negative_slope=negative_slope, in_activation=in_activation, in_negative_slope=in_negative_slope,
              in_slopes=(in_slope, skip_slope))
        ctx.geometry = dict(stride=stride, padding=padding)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (x, in_scale, in_shift, skip, skip_scale, skip_shift, weight, out), slopes = _slopes(ctx)
        dz, grad_b = _prepared(ctx, grad_y, out, 4)
        grad_cat = _launch(conv.conv2d_forward, dz)(dz, weight, None, None, 0.0, **ctx.geometry) \
            if _needs(ctx, 0, 1, 2, 12, 13, 14, 15, 16) else None
        # Each source: its channels of dL/dcat through its pending norm, and its rows of dL/dweight.
        grads, weight_grads, first = [], [], 0
        for source, scale, shift, slope, index in ((x, in_scale, in_shift, slopes[0], 0),
                                                   (skip, skip_scale, skip_shift, slopes[1], 13)):
            if source is None:
                grads.append((None,) * 4)
                continue
            rows = slice(first, first + source.shape[1])
            first = rows.stop
            if ctx.needs_input_grad[3]:
                z = source if scale is None else _launch(norm.pending_norm, source)(source, scale, shift, *ctx.in_act,
                                                                                    slope=slope)
                weight_grads.append(_launch(conv.conv2d_weight_grad, dz)(z, dz, weight[rows], **ctx.geometry))
            grads.append(_through_pending_norm(ctx, grad_cat[:, rows] if grad_cat is not None else None, source,
                                               scale, shift, slope, index))
        grad_w = torch.cat(weight_grads) if weight_grads else None
        (*grad_x, dslope), (*grad_skip, skip_dslope) = grads
        return (*grad_x, grad_w, grad_b) + (None,) * 7 + (dslope, *grad_skip, skip_dslope)


class MaxPool(torch.autograd.Function):
    """Stride-2 max-pool with ``window`` x ``window`` windows (2, or 3 with padding 1) of x or of x's pending norm +
    activation. Saves the 1-byte argmax per output (and, with a pending norm, x, scale, shift and a PReLU's slopes,
    which the pending norm's backward needs)."""

    @staticmethod
    def forward(ctx, x, in_scale, in_shift, in_activation, in_negative_slope, window, in_slope=None):
        y, argmax = _launch(pool.max_pool_forward, x)(x, window, in_scale, in_shift, in_activation,
                                                      in_negative_slope, in_slope=in_slope)
        pending = (x, in_scale, in_shift, in_slope) if in_scale is not None else (None,) * 4
        ctx.save_for_backward(argmax, *pending)
        ctx.input_shape, ctx.window = list(x.shape), window
        ctx.in_act = (in_activation, in_negative_slope)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        argmax, x, in_scale, in_shift, in_slope = ctx.saved_tensors
        grad_z = _launch(pool.max_pool_backward, grad_y)(grad_y, argmax, ctx.input_shape, ctx.window)
        *grad_x, dslope = _through_pending_norm(ctx, grad_z, x, in_scale, in_shift, in_slope, 0)
        return (*grad_x, None, None, None, dslope)


class PendingNorm(torch.autograd.Function):
    """``out_act(act(y * scale + shift) + residual)``: a pending norm made a tensor in one kernel, where no fused
    kernel reads it (``residual`` optional: a ResNet block's end, then ``out_act`` ReLU / LeakyReLU or none). Saves y
    (alive: the norm's statistics' backward needs it) and, with an ``out_act``, the output (its sign is the mask; the
    next layer's input, alive anyway) — never the residual: a projection's normalised output is freed after the add.
    ``slope``: a PReLU's slopes (``activation`` "prelu"). ``res_norm``: (scale, shift, activation, negative slope,
    PReLU slopes) of a pending residual (``residual`` its pre-norm y, saved: its statistics' backward holds it),
    normalised as it is read: the projection's normalised output is never stored. Backward is one kernel."""

    @staticmethod
    def forward(ctx, y, scale, shift, residual, activation, negative_slope, out_activation, out_negative_slope,
                slope=None, res_scale=None, res_shift=None, res_activation=None, res_negative_slope=0.0,
                res_slope=None):
        out = _launch(norm.pending_norm, y)(y, scale, shift, activation, negative_slope, residual, out_activation,
                                            out_negative_slope, slope=slope, res_scale=res_scale, res_shift=res_shift,
                                            res_activation=res_activation, res_negative_slope=res_negative_slope,
                                            res_slope=res_slope)
        ctx.save_for_backward(y, scale, shift, out if out_activation is not None else None, slope,
                              *((residual, res_scale, res_shift, res_slope) if res_scale is not None else ()))
        ctx.acts = (activation, negative_slope, out_activation, out_negative_slope, res_activation,
                    res_negative_slope)
        ctx.residual = residual is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        y, scale, shift, out, slope, *res_norm = ctx.saved_tensors
        activation, negative_slope, out_activation, out_negative_slope, res_activation, res_negative_slope = ctx.acts
        dres = dres_scale = dres_shift = dres_slope = None
        if not ctx.residual:
            dy, dscale, dshift, dslope = _launch(norm.batch_norm_act_input_grad, grad_out)(
                grad_out, y, scale, shift, activation, negative_slope, slope=slope)
        else:
            residual, res_scale, res_shift, res_slope = res_norm or (None,) * 4
            dy, dres, dscale, dshift, dslope, dres_scale, dres_shift, dres_slope = _launch(
                norm.residual_norm_act_input_grad, grad_out)(
                grad_out, y, scale, shift, out, activation, negative_slope, out_activation, out_negative_slope,
                slope=slope, residual=residual, res_scale=res_scale, res_shift=res_shift,
                res_activation=res_activation, res_negative_slope=res_negative_slope, res_slope=res_slope)
            dres_scale, dres_shift = (dres_scale, dres_shift) if res_norm else (None, None)
            dres_slope = dres_slope if res_norm and res_slope is not None else None
        return (dy, dscale, dshift, dres, None, None, None, None, (dslope if slope is not None else None),
                dres_scale, dres_shift, None, None, dres_slope)


def _scale_shift(ctx, y, gamma, beta, parts, groups, eps, per_channel, running=(None, None, 0.0), images=None):
    """(y, scale, shift) of a norm of y from its per-tile ``parts`` [N, tiles, 3, C] (or with
    ``images`` a conv epilogue's per-image workspace, kernels.norm.norm_statistics) (one launch
    combines them in float64 and finalises scale = gamma / sqrt(var + eps), shift = beta - mean * scale, fp32
    [N, C]; ``per_channel``: a batch norm's, N = 1, returned as [C]; and updates its ``running`` (mean, var,
    momentum) if given); saves what _scale_shift_backward needs. y comes back as it went in (autograd makes it a
    view): its consumers' gradient reaches this backward, which adds the statistics' part in the same kernel instead
    of autograd summing two y-sized tensors."""
    scale, shift, stats = _launch(norm.norm_statistics, y)(parts, groups, gamma, beta, eps, *running, images=images)
    if per_channel:
        scale, shift = scale.squeeze(0), shift.squeeze(0)
    ctx.save_for_backward(y, gamma, stats)
    images = 1 if per_channel else y.shape[0]  # a batch norm's statistic spans the batch
    ctx.count, ctx.per_channel = y.numel() // images // groups, per_channel
    return y, scale, shift


def _scale_shift_backward(ctx, grad_y, grad_scale, grad_shift):
    """(dL/dy, dL/dgamma, dL/dbeta) of scale = gamma * invstd, shift = beta - mean * scale, with mean and
    invstd = 1 / sqrt(var + eps) statistics of y, and ``grad_y`` the consumers' gradient of y: one kernel turns
    dL/dscale, dL/dshift into dL/dgamma, dL/dbeta and the coefficients of dL/dy through the statistics, a * y + b
    per statistic, which a second adds to grad_y (pending_norm's arithmetic)."""
    y, gamma, stats = ctx.saved_tensors
    a, b, grad_gamma, grad_beta = _launch(norm.norm_statistics_backward, y)(grad_scale, grad_shift, stats, gamma,
                                                                           ctx.count)
    if ctx.per_channel:
        a, b = a.squeeze(0), b.squeeze(0)
    return _launch(norm.pending_norm, y)(y, a, b, residual=grad_y), grad_gamma, grad_beta


class BatchNormScaleShift(torch.autograd.Function):
    """(y, per-channel scale, shift) of a training-mode batch norm of y, from the statistics its conv's epilogue
    wrote (None: the reduction kernel's per-image ones): scale = gamma / sqrt(var + eps), shift = beta - mean *
    scale (fp32); ``running_mean`` / ``running_var`` (optional) are updated in place by the
    same launch, ``momentum`` the weight of this batch; the consumers read the y returned. Backward
    turns dL/dscale, dL/dshift into dL/dgamma, dL/dbeta and adds the part of dL/dy that flows through the batch
    mean and variance (a per-channel a * y + b) to the consumers' dL/dy; saves y (already alive) and the statistics."""

    @staticmethod
    def forward(ctx, y, stats, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.0):
        if stats is None:  # y is not a conv's output: its per-image statistics are parts of the batch's
            stats = _launch(norm.channel_statistics, y)(y).flatten(0, 1)
        return _scale_shift(ctx, y, gamma, beta, stats.unsqueeze(0), y.shape[1], eps, per_channel=True,
                            running=(running_mean, running_var, momentum))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_scale, grad_shift):
        grad_y, grad_gamma, grad_beta = _scale_shift_backward(ctx, grad_y, grad_scale, grad_shift)
        return grad_y, None, grad_gamma, grad_beta, None, None, None, None


class GroupNormScaleShift(torch.autograd.Function):
    """(y, per (image, channel) scale, shift [N, C]) of a group norm of y (instance norm: ``groups`` = C), from y's
    statistics per (image, group): the ones its conv's epilogue wrote per image (``stats``), else one reduction
    kernel's (fused_unet.kernels.norm.channel_statistics); an instance norm's
    ``running_mean`` / ``running_var`` (optional) are updated in place by one more launch of the finalising kernel.
    Backward as BatchNormScaleShift's, per (image, group); saves y (already alive) and the statistics."""

    @staticmethod
    def forward(ctx, y, stats, gamma, beta, groups, eps, running_mean=None, running_var=None, momentum=0.0):
        parts = _launch(norm.channel_statistics, y)(y) if stats is None else stats
        return _scale_shift(ctx, y, gamma, beta, parts, groups, eps, per_channel=False,
                            running=(running_mean, running_var, momentum), images=[y.shape[0], y.shape[2] * y.shape[3]])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_scale, grad_shift):
        grad_y, grad_gamma, grad_beta = _scale_shift_backward(ctx, grad_y, grad_scale, grad_shift)
        return grad_y, None, grad_gamma, grad_beta, None, None, None, None, None
