"""The launchers as ``torch.library`` custom ops, so that ``torch.compile`` treats each kernel launch as one
opaque op with a known output (it cannot trace Triton's launch machinery, interpreted or autotuned). The
autograd Functions call these while torch.compile traces them (or on meta tensors), the launchers directly
otherwise. Each op's fake (shape-only) implementation is the allocation its launcher makes."""
import torch

from fused_unet.kernels import conv, norm, pool


def _op(launcher, schema, fake):
    op = torch.library.custom_op(f"fused_unet::{launcher.__name__}", launcher, mutates_args=(), schema=schema)
    op.register_fake(fake)
    return op


def _weight_grad_fake(channel_dim):
    return lambda grad_out, x, weight, out, activation, negative_slope, bias_grad, *rest: conv.weight_grad_output(
        weight, weight.shape[channel_dim] if bias_grad else 0)


_ACT = "str? activation, float negative_slope"
_PENDING = "Tensor? in_scale=None, Tensor? in_shift=None, str? in_activation=None, float in_negative_slope=0.0"
_CONCAT = ("str? up_mode, bool align_corners, bool up_first, Tensor? up_scale=None, Tensor? up_shift=None, "
           "Tensor? skip_scale=None, Tensor? skip_shift=None, str? in_activation=None, float in_negative_slope=0.0")
_WEIGHT_GRAD = f"(Tensor grad_out, Tensor x, Tensor weight, Tensor? out, {_ACT}, bool bias_grad"

conv2d_forward = _op(conv.conv2d_forward, f"(Tensor x, Tensor weight, Tensor? bias, {_ACT}, {_PENDING}) -> Tensor",
                     lambda x, weight, *rest: conv.conv2d_output(x, weight))
conv2d_stats_forward = _op(conv.conv2d_stats_forward,
                           f"(Tensor x, Tensor weight, Tensor? bias, {_PENDING}) -> (Tensor, Tensor)",
                           lambda x, weight, *rest: conv.conv2d_stats_output(x, weight))
conv2d_pool_forward = _op(conv.conv2d_pool_forward,
                          f"(Tensor x, Tensor weight, Tensor? bias, {_ACT}) -> (Tensor, Tensor, Tensor)",
                          lambda x, weight, *rest: conv.conv2d_pool_output(x, weight))
concat_conv2d_forward = _op(
    conv.concat_conv2d_forward, f"(Tensor up, Tensor skip, Tensor weight, Tensor? bias, {_ACT}, {_CONCAT}) -> Tensor",
    lambda up, skip, weight, *rest: conv.conv2d_output(skip, weight))
concat_conv2d_stats_forward = _op(
    conv.concat_conv2d_stats_forward, f"(Tensor up, Tensor skip, Tensor weight, Tensor? bias, {_CONCAT}) -> "
    "(Tensor, Tensor)", lambda up, skip, weight, *rest: conv.conv2d_stats_output(skip, weight))
conv2d_input_grad = _op(
    conv.conv2d_input_grad, f"(Tensor grad_out, Tensor weight, Tensor? out, {_ACT}, Tensor? grad_pooled=None, "
    "Tensor? argmax=None) -> Tensor", lambda grad_out, weight, *rest: conv.conv2d_input_grad_output(grad_out, weight))
conv2d_weight_grad = _op(
    conv.conv2d_weight_grad, f"{_WEIGHT_GRAD}, Tensor? grad_pooled=None, Tensor? argmax=None, Tensor? skip=None, "
    "str? up_mode=None, bool align_corners=False, bool up_first=True, Tensor? in_scale=None, Tensor? in_shift=None, "
    "Tensor? skip_scale=None, Tensor? skip_shift=None, str? in_activation=None, float in_negative_slope=0.0) -> "
    "(Tensor, Tensor)", _weight_grad_fake(0))
conv_transpose2x2_forward = _op(conv.conv_transpose2x2_forward,
                                f"(Tensor x, Tensor weight, Tensor? bias, {_ACT}, {_PENDING}) -> Tensor",
                                lambda x, weight, *rest: conv.conv_transpose2x2_output(x, weight))
conv_transpose2x2_input_grad = _op(
    conv.conv_transpose2x2_input_grad, f"(Tensor grad_out, Tensor weight, Tensor? out, {_ACT}) -> Tensor",
    lambda grad_out, weight, *rest: conv.conv_transpose2x2_input_grad_output(grad_out, weight))
conv_transpose2x2_weight_grad = _op(conv.conv_transpose2x2_weight_grad,
                                    f"{_WEIGHT_GRAD}, {_PENDING}) -> (Tensor, Tensor)", _weight_grad_fake(1))
max_pool2x2_forward = _op(pool.max_pool2x2_forward, f"(Tensor x, {_PENDING}) -> (Tensor, Tensor)",
                          lambda x, *rest: pool.max_pool2x2_output(x))
max_pool2x2_backward = _op(pool.max_pool2x2_backward, "(Tensor grad_y, Tensor argmax, int[] input_shape) -> Tensor",
                           lambda grad_y, argmax, input_shape: pool.max_pool2x2_backward_output(grad_y, input_shape))
batch_norm_act_input_grad = _op(
    norm.batch_norm_act_input_grad, f"(Tensor grad, Tensor y, Tensor scale, Tensor shift, {_ACT}) -> "
    "(Tensor, Tensor, Tensor)", lambda grad, y, scale, *rest: norm.batch_norm_act_input_grad_output(grad, scale))
