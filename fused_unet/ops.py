"""The launchers as ``torch.library`` custom ops, so that ``torch.compile`` treats each kernel launch as one
opaque op with a known output (it cannot trace Triton's launch machinery, interpreted or autotuned). The
autograd Functions call these while torch.compile traces them, and the launchers directly otherwise.
Each op's fake (shape-only) implementation is the allocation its launcher makes."""
import torch

from fused_unet.kernels import conv, pool


def _op(launcher, schema, fake):
    op = torch.library.custom_op(f"fused_unet::{launcher.__name__}", launcher, mutates_args=(), schema=schema)
    op.register_fake(fake)
    return op


def _weight_grad_fake(channel_dim):
    return lambda grad_out, x, weight, out, bias_grad: conv.weight_grad_output(
        weight, weight.shape[channel_dim] if bias_grad else 0)


_CONV = "(Tensor x, Tensor weight, Tensor? bias, bool relu) -> Tensor"
_INPUT_GRAD = "(Tensor grad_out, Tensor weight, Tensor? out) -> Tensor"
_WEIGHT_GRAD = "(Tensor grad_out, Tensor x, Tensor weight, Tensor? out, bool bias_grad) -> (Tensor, Tensor)"

conv2d_forward = _op(conv.conv2d_forward, _CONV, lambda x, weight, bias, relu: conv.conv2d_output(x, weight))
conv2d_input_grad = _op(conv.conv2d_input_grad, _INPUT_GRAD,
                        lambda grad_out, weight, out: conv.conv2d_input_grad_output(grad_out, weight))
conv2d_weight_grad = _op(conv.conv2d_weight_grad, _WEIGHT_GRAD, _weight_grad_fake(0))
conv_transpose2x2_forward = _op(conv.conv_transpose2x2_forward, _CONV,
                                lambda x, weight, bias, relu: conv.conv_transpose2x2_output(x, weight))
conv_transpose2x2_input_grad = _op(
    conv.conv_transpose2x2_input_grad, _INPUT_GRAD,
    lambda grad_out, weight, out: conv.conv_transpose2x2_input_grad_output(grad_out, weight))
conv_transpose2x2_weight_grad = _op(conv.conv_transpose2x2_weight_grad, _WEIGHT_GRAD, _weight_grad_fake(1))
up_concat_forward = _op(conv.up_concat_forward,
                        "(Tensor x, Tensor skip, Tensor weight, Tensor? bias, bool relu) -> Tensor",
                        lambda x, skip, weight, bias, relu: conv.up_concat_output(x, skip, weight))
max_pool2x2_forward = _op(pool.max_pool2x2_forward, "(Tensor x) -> (Tensor, Tensor)", pool.max_pool2x2_output)
max_pool2x2_backward = _op(pool.max_pool2x2_backward, "(Tensor grad_y, Tensor argmax, int[] input_shape) -> Tensor",
                           lambda grad_y, argmax, input_shape: pool.max_pool2x2_backward_output(grad_y, input_shape))
