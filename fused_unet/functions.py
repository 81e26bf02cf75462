"""torch.autograd.Functions of the fused ops: what each saves for backward and which kernels run."""
import torch
from torch.autograd.function import once_differentiable

from fused_unet import ops
from fused_unet.kernels import conv, pool


def _launcher(name):
    """The launcher ``name``; while torch.compile traces, its opaque custom-op twin in fused_unet.ops."""
    if torch.compiler.is_compiling():
        return getattr(ops, name)
    return getattr(conv, name, None) or getattr(pool, name)


def _conv_backward(ctx, grad_y, x, weight, out, prefix):
    """Input-grad and weight/bias-grad of a conv-like Function whose inputs are (x, ..., weight, bias, relu)."""
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = _launcher(f"{prefix}_input_grad")(grad_y, weight, out)
    if ctx.needs_input_grad[-3] or ctx.needs_input_grad[-2]:
        grad_w, grad_b = _launcher(f"{prefix}_weight_grad")(grad_y, x, weight, out, ctx.needs_input_grad[-2])
    return grad_x, grad_w, grad_b if ctx.needs_input_grad[-2] else None


def _conv_function(name, doc, prefix):
    """A conv-like op (+ bias, + ReLU) as an autograd Function. It saves x, weight and, with ReLU, its own output,
    whose sign is the ReLU mask the backward kernels apply while loading the gradient."""

    class ConvFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, relu):
            y = _launcher(f"{prefix}_forward")(x, weight, bias, relu)
            ctx.save_for_backward(x, weight, y if relu else None)
            return y

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_y):
            x, weight, out = ctx.saved_tensors
            return (*_conv_backward(ctx, grad_y, x, weight, out, prefix), None)

    ConvFunction.__name__ = ConvFunction.__qualname__ = name
    ConvFunction.__doc__ = doc
    return ConvFunction


Conv2dBiasReLU = _conv_function("Conv2dBiasReLU", "Stride-1 'same' conv + bias (+ ReLU).", "conv2d")
ConvTranspose2x2 = _conv_function("ConvTranspose2x2", "2x2 stride-2 transposed conv + bias (+ ReLU).",
                                  "conv_transpose2x2")


class MaxPool2x2(torch.autograd.Function):
    """2x2 stride-2 max-pool. Saves only the 1-byte argmax per output."""

    @staticmethod
    def forward(ctx, x):
        y, argmax = _launcher("max_pool2x2_forward")(x)
        ctx.save_for_backward(argmax)
        ctx.input_shape = list(x.shape)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (argmax,) = ctx.saved_tensors
        return _launcher("max_pool2x2_backward")(grad_y, argmax, ctx.input_shape)


class UpConcat(torch.autograd.Function):
    """cat([relu(conv_transpose2x2(x)), skip], dim=1) in one channels_last buffer, without torch.cat. Saves x,
    weight and, with ReLU, the buffer (its first channels are the ReLU output); the skip's gradient is a view."""

    @staticmethod
    def forward(ctx, x, skip, weight, bias, relu):
        buf = _launcher("up_concat_forward")(x, skip, weight, bias, relu)
        ctx.save_for_backward(x, weight, buf if relu else None)
        ctx.c_up = weight.shape[1]
        return buf

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_buf):
        x, weight, buf = ctx.saved_tensors
        c_up = ctx.c_up
        out = buf[:, :c_up] if buf is not None else None
        grad_x, grad_w, grad_b = _conv_backward(ctx, grad_buf[:, :c_up], x, weight, out, "conv_transpose2x2")
        grad_skip = grad_buf[:, c_up:] if ctx.needs_input_grad[1] else None
        return grad_x, grad_skip, grad_w, grad_b, None
