"""torch.autograd.Functions of the fused ops: what each saves for backward and which kernels run."""
import torch
from torch.autograd.function import once_differentiable

from fused_unet.kernels import conv, pool


def _conv_backward(ctx, grad_y, x, weight, out, input_grad, weight_grad):
    """Input-grad and weight/bias-grad of a conv-like Function whose inputs are (x, ..., weight, bias, relu)."""
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = input_grad(grad_y, weight, out)
    if ctx.needs_input_grad[-3] or ctx.needs_input_grad[-2]:
        grad_w, grad_b = weight_grad(grad_y, x, weight, out, bias_grad=ctx.needs_input_grad[-2])
    return grad_x, grad_w, grad_b


def _conv_function(name, doc, forward_launcher, input_grad, weight_grad):
    """A conv-like op (+ bias, + ReLU) as an autograd Function. It saves x, weight and, with ReLU, its own output,
    whose sign is the ReLU mask the backward kernels apply while loading the gradient."""

    class ConvFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, relu):
            y = forward_launcher(x, weight, bias, relu)
            ctx.save_for_backward(x, weight, y if relu else None)
            return y

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_y):
            x, weight, out = ctx.saved_tensors
            return (*_conv_backward(ctx, grad_y, x, weight, out, input_grad, weight_grad), None)

    ConvFunction.__name__ = ConvFunction.__qualname__ = name
    ConvFunction.__doc__ = doc
    return ConvFunction


Conv2dBiasReLU = _conv_function("Conv2dBiasReLU", "Stride-1 'same' conv + bias (+ ReLU).", conv.conv2d_forward,
                                conv.conv2d_input_grad, conv.conv2d_weight_grad)
ConvTranspose2x2 = _conv_function("ConvTranspose2x2", "2x2 stride-2 transposed conv + bias (+ ReLU).",
                                  conv.conv_transpose2x2_forward, conv.conv_transpose2x2_input_grad,
                                  conv.conv_transpose2x2_weight_grad)


class MaxPool2x2(torch.autograd.Function):
    """2x2 stride-2 max-pool. Saves only the 1-byte argmax per output."""

    @staticmethod
    def forward(ctx, x):
        y, argmax = pool.max_pool2x2_forward(x)
        ctx.save_for_backward(argmax)
        ctx.input_shape = x.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (argmax,) = ctx.saved_tensors
        return pool.max_pool2x2_backward(grad_y, argmax, ctx.input_shape)


class UpConcat(torch.autograd.Function):
    """cat([relu(conv_transpose2x2(x)), skip], dim=1) without torch.cat: the transposed conv stores into the
    first channel slice of one channels_last buffer and the skip is copied into the second."""

    @staticmethod
    def forward(ctx, x, skip, weight, bias, relu):
        batch, _, h, w = x.shape
        c_up = weight.shape[1]
        buf = torch.empty((batch, c_up + skip.shape[1], 2 * h, 2 * w), device=x.device, dtype=x.dtype,
                          memory_format=torch.channels_last)
        conv.conv_transpose2x2_forward(x, weight, bias, relu, out=buf[:, :c_up])
        buf[:, c_up:].copy_(skip)
        ctx.save_for_backward(x, weight, buf if relu else None)
        ctx.c_up = c_up
        return buf

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_buf):
        x, weight, buf = ctx.saved_tensors
        c_up = ctx.c_up
        out = buf[:, :c_up] if buf is not None else None
        grad_x, grad_w, grad_b = _conv_backward(ctx, grad_buf[:, :c_up], x, weight, out,
                                                conv.conv_transpose2x2_input_grad, conv.conv_transpose2x2_weight_grad)
        grad_skip = grad_buf[:, c_up:] if ctx.needs_input_grad[1] else None
        return grad_x, grad_skip, grad_w, grad_b, None
