"""The launchers as ``torch.library`` custom ops, so that ``torch.compile`` treats each kernel launch as one
opaque op with a known output (it cannot trace Triton's launch machinery, interpreted or autotuned). The
autograd Functions call these while torch.compile traces them, and the launchers directly otherwise."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from fused_unet.kernels import conv, pool


def _weight_grad_fake(grad_out, x, weight, out, bias_grad, channel_dim):
    return conv.weight_grad_output(weight, weight.shape[channel_dim] if bias_grad else 0)


@torch.library.custom_op("fused_unet::conv2d_forward", mutates_args=())
def conv2d_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    return conv.conv2d_forward(x, weight, bias, relu)


@torch.library.custom_op("fused_unet::conv2d_input_grad", mutates_args=())
def conv2d_input_grad(grad_out: Tensor, weight: Tensor, out: Optional[Tensor]) -> Tensor:
    return conv.conv2d_input_grad(grad_out, weight, out)


@torch.library.custom_op("fused_unet::conv2d_weight_grad", mutates_args=())
def conv2d_weight_grad(grad_out: Tensor, x: Tensor, weight: Tensor, out: Optional[Tensor],
                       bias_grad: bool) -> Tuple[Tensor, Tensor]:
    return conv.conv2d_weight_grad(grad_out, x, weight, out, bias_grad)


@torch.library.custom_op("fused_unet::conv_transpose2x2_forward", mutates_args=())
def conv_transpose2x2_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    return conv.conv_transpose2x2_forward(x, weight, bias, relu)


@torch.library.custom_op("fused_unet::conv_transpose2x2_input_grad", mutates_args=())
def conv_transpose2x2_input_grad(grad_out: Tensor, weight: Tensor, out: Optional[Tensor]) -> Tensor:
    return conv.conv_transpose2x2_input_grad(grad_out, weight, out)


@torch.library.custom_op("fused_unet::conv_transpose2x2_weight_grad", mutates_args=())
def conv_transpose2x2_weight_grad(grad_out: Tensor, x: Tensor, weight: Tensor, out: Optional[Tensor],
                                  bias_grad: bool) -> Tuple[Tensor, Tensor]:
    return conv.conv_transpose2x2_weight_grad(grad_out, x, weight, out, bias_grad)


@torch.library.custom_op("fused_unet::up_concat_forward", mutates_args=())
def up_concat_forward(x: Tensor, skip: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    return conv.up_concat_forward(x, skip, weight, bias, relu)


@torch.library.custom_op("fused_unet::max_pool2x2_forward", mutates_args=())
def max_pool2x2_forward(x: Tensor) -> Tuple[Tensor, Tensor]:
    return pool.max_pool2x2_forward(x)


@torch.library.custom_op("fused_unet::max_pool2x2_backward", mutates_args=())
def max_pool2x2_backward(grad_y: Tensor, argmax: Tensor, input_shape: List[int]) -> Tensor:
    return pool.max_pool2x2_backward(grad_y, argmax, input_shape)


conv2d_forward.register_fake(lambda x, weight, bias, relu: conv.conv2d_output(x, weight))
conv2d_input_grad.register_fake(lambda grad_out, weight, out: conv.conv2d_input_grad_output(grad_out, weight))
conv2d_weight_grad.register_fake(lambda *args: _weight_grad_fake(*args, channel_dim=0))
conv_transpose2x2_forward.register_fake(lambda x, weight, bias, relu: conv.conv_transpose2x2_output(x, weight))
conv_transpose2x2_input_grad.register_fake(
    lambda grad_out, weight, out: conv.conv_transpose2x2_input_grad_output(grad_out, weight))
conv_transpose2x2_weight_grad.register_fake(lambda *args: _weight_grad_fake(*args, channel_dim=1))
up_concat_forward.register_fake(lambda x, skip, weight, bias, relu: conv.up_concat_output(x, skip, weight))
max_pool2x2_forward.register_fake(pool.max_pool2x2_output)
max_pool2x2_backward.register_fake(
    lambda grad_y, argmax, input_shape: pool.max_pool2x2_backward_output(grad_y, input_shape))
