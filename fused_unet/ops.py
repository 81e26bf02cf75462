"""The launchers as ``torch.library`` custom ops, so that ``torch.compile`` treats each kernel launch as one
opaque op with a known output (it cannot trace Triton's launch machinery, interpreted or autotuned). The
autograd Functions call these while torch.compile traces them (or on meta tensors), the launchers directly
otherwise. Each op's fake (shape-only) implementation is the allocation its launcher makes."""
import inspect

import torch

from fused_unet.kernels import conv, grad, norm, pool, upsample


_CUSTOM_OPS = {}


def _op(launcher, schema, fake, mutates=()):
    op = torch.library.custom_op(f"fused_unet::{launcher.__name__}", launcher, mutates_args=mutates, schema=schema)
    op.register_fake(fake)
    _CUSTOM_OPS[launcher] = op
    return op


def custom_op(launcher):
    """The custom op of a launcher (a fused_unet.kernels function)."""
    return _CUSTOM_OPS[launcher]


def _weight_grad_fake(grad_out, x, weight, *args, **kwargs):
    return conv.weight_grad_output(weight)


def _output_grad_fake(grad_out, out, activation, negative_slope, grad_pooled=None, argmax=None, bias_grad=False):
    return grad.conv_output_grad_output(grad_out, bias_grad)


_ACT = "str? activation, float negative_slope"
_PENDING = "Tensor? in_scale=None, Tensor? in_shift=None, str? in_activation=None, float in_negative_slope=0.0"
_CONCAT = ("str? up_mode, bool align_corners, bool up_first, Tensor? up_scale=None, Tensor? up_shift=None, "
           "Tensor? skip_scale=None, Tensor? skip_shift=None, str? in_activation=None, float in_negative_slope=0.0")

_CONCAT_SLOPES = "Tensor? up_slope=None, Tensor? skip_slope=None"
_GEOMETRY = "int stride=1, int? padding=None"
_SLOPE = "Tensor? in_slope=None"  # a pending PReLU's slopes, after the launcher's other arguments


def _output_of(launcher, output, *names):
    """A fake that calls ``output`` with the arguments ``names`` of a call of ``launcher`` (by position or name)."""
    signature = inspect.signature(launcher)

    def fake(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return output(*(bound.arguments[name] for name in names))

    return fake


conv2d_forward = _op(conv.conv2d_forward,
                     f"(Tensor x, Tensor weight, Tensor? bias, {_ACT}, {_PENDING}, {_GEOMETRY}, "
                     f"Tensor? residual=None, {_SLOPE}, Tensor? proj_x=None, Tensor? proj_weight=None, "
                     "int proj_stride=1) -> Tensor",
                     _output_of(conv.conv2d_forward, conv.conv2d_output, "x", "weight", "stride", "padding"))
conv2d_stats_forward = _op(conv.conv2d_stats_forward,
                           f"(Tensor x, Tensor weight, Tensor? bias, {_PENDING}, {_GEOMETRY}, {_SLOPE}, "
                           "bool per_image=False) -> (Tensor, Tensor)",
                           _output_of(conv.conv2d_stats_forward, conv.conv2d_stats_output, "x", "weight", "stride",
                                      "padding", "per_image"))
conv2d_pool_forward = _op(conv.conv2d_pool_forward,
                          f"(Tensor x, Tensor weight, Tensor? bias, {_ACT}) -> (Tensor, Tensor, Tensor)",
                          lambda x, weight, *rest: conv.conv2d_pool_output(x, weight))
concat_conv2d_forward = _op(
    conv.concat_conv2d_forward, f"(Tensor up, Tensor? skip, Tensor weight, Tensor? bias, {_ACT}, {_CONCAT}, "
    f"{_CONCAT_SLOPES}) -> Tensor",
    lambda up, skip, weight, bias, activation, negative_slope, up_mode, *rest:
    conv.concat_conv2d_output(up, skip, weight, up_mode))
concat_conv2d_stats_forward = _op(
    conv.concat_conv2d_stats_forward, f"(Tensor up, Tensor? skip, Tensor weight, Tensor? bias, {_CONCAT}, "
    f"{_CONCAT_SLOPES}, bool per_image=False) -> (Tensor, Tensor)",
    _output_of(conv.concat_conv2d_stats_forward, conv.concat_conv2d_stats_output, "up", "skip", "weight", "up_mode",
               "per_image"))
conv_output_grad = _op(
    grad.conv_output_grad, f"(Tensor grad, Tensor? out, {_ACT}, Tensor? grad_pooled=None, Tensor? argmax=None, "
    "bool bias_grad=False) -> (Tensor, Tensor)", _output_grad_fake)
conv2d_input_grad = _op(conv.conv2d_input_grad, f"(Tensor grad, Tensor weight, {_GEOMETRY}, int[]? input_size=None) "
                        "-> Tensor", conv.conv2d_input_grad_output)
conv2d_weight_grad = _op(
    conv.conv2d_weight_grad, "(Tensor grad, Tensor x, Tensor weight, Tensor? skip=None, str? up_mode=None, "
    "bool align_corners=False, bool up_first=True, Tensor? in_scale=None, Tensor? in_shift=None, "
    "Tensor? skip_scale=None, Tensor? skip_shift=None, str? in_activation=None, float in_negative_slope=0.0, "
    f"{_GEOMETRY}, {_SLOPE}, Tensor? skip_slope=None) -> Tensor", _weight_grad_fake)
conv_transpose2x2_forward = _op(conv.conv_transpose2x2_forward,
                                f"(Tensor x, Tensor weight, Tensor? bias, {_ACT}, {_PENDING}, {_SLOPE}) -> Tensor",
                                lambda x, weight, *rest: conv.conv_transpose2x2_output(x, weight))
conv_transpose2x2_input_grad = _op(conv.conv_transpose2x2_input_grad, "(Tensor grad, Tensor weight) -> Tensor",
                                   lambda g, weight: conv.conv_transpose2x2_input_grad_output(g, weight))
conv_transpose2x2_weight_grad = _op(conv.conv_transpose2x2_weight_grad,
                                    f"(Tensor grad, Tensor x, Tensor weight, {_PENDING}, {_SLOPE}) -> Tensor",
                                    _weight_grad_fake)
conv_transpose2d_forward = _op(
    conv.conv_transpose2d_forward, f"(Tensor x, Tensor weight, Tensor? bias, {_ACT}, {_PENDING}, int stride=2, "
    f"int padding=0, int output_padding=0, {_SLOPE}, Tensor? skip=None, Tensor? skip_scale=None, "
    "Tensor? skip_shift=None, Tensor? skip_slope=None) -> Tensor",
    _output_of(conv.conv_transpose2d_forward, conv.conv_transpose2d_output, "x", "weight", "stride", "padding",
               "output_padding"))
max_pool_forward = _op(pool.max_pool_forward, f"(Tensor x, int window, {_PENDING}, {_SLOPE}) -> (Tensor, Tensor)",
                       lambda x, window, *rest: pool.max_pool_output(x, window))
max_pool_backward = _op(pool.max_pool_backward, "(Tensor grad_y, Tensor argmax, int[] input_shape, int window) -> "
                        "Tensor", lambda grad_y, argmax, input_shape, window:
                        pool.max_pool_backward_output(grad_y, input_shape))
batch_norm_act_input_grad = _op(
    norm.batch_norm_act_input_grad, f"(Tensor grad, Tensor y, Tensor scale, Tensor shift, {_ACT}, "
    "Tensor? slope=None) -> (Tensor, Tensor, Tensor, Tensor)",
    _output_of(norm.batch_norm_act_input_grad, norm.batch_norm_act_input_grad_output, "grad", "scale", "activation"))
_RESIDUAL_NORM = ("Tensor? res_scale=None, Tensor? res_shift=None, str? res_activation=None, "
                  "float res_negative_slope=0.0, Tensor? res_slope=None")  # a pending residual's norm
pending_norm = _op(
    norm.pending_norm, "(Tensor y, Tensor scale, Tensor shift, str? activation=None, float negative_slope=0.0, "
    "Tensor? residual=None, str? out_activation=None, float out_negative_slope=0.0, Tensor? slope=None, "
    f"{_RESIDUAL_NORM}) -> Tensor", lambda y, *rest, **kwargs: norm.pending_norm_output(y))
residual_norm_act_input_grad = _op(
    norm.residual_norm_act_input_grad, "(Tensor grad, Tensor y, Tensor scale, Tensor shift, Tensor? out=None, "
    "str? activation=None, float negative_slope=0.0, str? out_activation=None, float out_negative_slope=0.0, "
    f"Tensor? slope=None, Tensor? residual=None, {_RESIDUAL_NORM}) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
    "Tensor, Tensor, Tensor)",
    _output_of(norm.residual_norm_act_input_grad, norm.residual_norm_act_input_grad_output, "grad", "scale",
               "activation", "res_scale", "res_activation"))
upsample2x_backward = _op(
    upsample.upsample2x_backward, "(Tensor grad, int[] input_shape, str up_mode, bool align_corners=False) -> Tensor",
    lambda grad, input_shape, up_mode, align_corners=False: upsample.upsample2x_backward_output(grad, input_shape))
channel_statistics = _op(norm.channel_statistics, "(Tensor y) -> Tensor", norm.channel_statistics_output)
norm_statistics = _op(norm.norm_statistics, "(Tensor parts, int groups, Tensor gamma, Tensor beta, float eps, "
                      "Tensor(a!)? running_mean=None, Tensor(b!)? running_var=None, float momentum=0.0, "
                      "int[]? images=None) -> (Tensor, Tensor, Tensor)",
                      _output_of(norm.norm_statistics, norm.norm_statistics_output, "parts", "groups", "images"),
                      mutates=("running_mean", "running_var"))
norm_statistics_backward = _op(
    norm.norm_statistics_backward, "(Tensor grad_scale, Tensor grad_shift, Tensor stats, Tensor gamma, int count) -> "
    "(Tensor, Tensor, Tensor, Tensor)", lambda grad_scale, grad_shift, stats, gamma, count:
    norm.norm_statistics_backward_output(stats, gamma))
