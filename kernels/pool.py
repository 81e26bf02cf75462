"""2x2 stride-2 max-pool (floor mode, NaN-propagating like nn.MaxPool2d) with a 1-byte argmax."""
import torch
import triton
import triton.language as tl

from .codes import act_code
from .common import apply_activation, norm_table, per_sample, take_larger
from .configs import configs
from .specs import MAX_POOL2X2, MAX_POOL2X2_BACKWARD


@triton.jit
def _pool_window(offs, C, H_OUT, W_OUT):
    # Channels innermost: neighbouring lanes read neighbouring addresses of channels_last tensors.
    c = offs % C
    ow = (offs // C) % W_OUT
    oh = (offs // (C * W_OUT)) % H_OUT
    img = offs // (C * W_OUT * H_OUT)
    return img, c, oh, ow


@triton.jit
def _window_value(base, q, sxh, sxw, valid, scale, shift, NEG_SLOPE, y_ptr, NORM: tl.constexpr, ACT: tl.constexpr):
    """Element q (= dy*2 + dx) of each window in fp32 (exact for every input dtype; the interpreter's bf16
    comparisons are unreliable). NORM: normalised, activated and rounded to y's dtype first, as the normalised
    tensor would be stored, so ties break the same."""
    v = tl.load(base + (q // 2) * sxh + (q % 2) * sxw, mask=valid, other=0.0).to(tl.float32)
    if NORM:
        v = apply_activation(v * scale + shift, NEG_SLOPE, ACT).to(y_ptr.dtype.element_ty).to(tl.float32)
    return v


@triton.autotune(configs=configs(MAX_POOL2X2.name), key=MAX_POOL2X2.autotune_key)
@triton.jit
def max_pool2x2_kernel(
    x_ptr,  # input [N, C, 2 H_OUT (+1), 2 W_OUT (+1)]
    in_norm,  # (scale, shift) fp32 of x's pending norm (NORM): [C], or [N, C] with PER_SAMPLE
    y_ptr,  # pooled output [N, C, H_OUT, W_OUT]
    argmax_ptr,  # uint8 argmax (dy * 2 + dx) of each window, y_strides
    TOTAL, C, H_OUT, W_OUT,  # output elements, and their shape
    NEG_SLOPE,  # ACT's leaky-ReLU slope
    x_strides, y_strides,  # (n, c, h, w) strides
    NORM: tl.constexpr,  # pool act(x * scale + shift): x is a conv's pre-norm output
    PER_SAMPLE: tl.constexpr,  # scale and shift per (image, channel): instance / group norm
    ACT: tl.constexpr,  # the pending norm's activation (codes.Act)
    BLOCK: tl.constexpr,  # output elements per program
):
    """Parameters: specs.MAX_POOL2X2."""
    sxn, sxc, sxh, sxw = x_strides
    syn, syc, syh, syw = y_strides
    scale_ptr, shift_ptr = in_norm
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < TOTAL
    img, c, oh, ow = _pool_window(offs, C, H_OUT, W_OUT)
    base = x_ptr + img * sxn + c * sxc + (2 * oh) * sxh + (2 * ow) * sxw
    if NORM:
        at = c
        if PER_SAMPLE:
            at += img * C
        scale = tl.load(scale_ptr + at, mask=valid, other=0.0)
        shift = tl.load(shift_ptr + at, mask=valid, other=0.0)
    else:
        scale = 1.0
        shift = 0.0
    best = _window_value(base, 0, sxh, sxw, valid, scale, shift, NEG_SLOPE, y_ptr, NORM, ACT)
    arg = tl.zeros((BLOCK,), dtype=tl.int32)
    for q in tl.static_range(1, 4):
        best, arg = take_larger(best, arg, _window_value(base, q, sxh, sxw, valid, scale, shift, NEG_SLOPE, y_ptr,
                                                          NORM, ACT), q)
    y_off = img * syn + c * syc + oh * syh + ow * syw
    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=valid)
    tl.store(argmax_ptr + y_off, arg.to(tl.uint8), mask=valid)


@triton.autotune(configs=configs(MAX_POOL2X2_BACKWARD.name), key=MAX_POOL2X2_BACKWARD.autotune_key)
@triton.jit
def max_pool2x2_backward_kernel(
    grad_y_ptr,  # dL/d pooled [N, C, H_OUT, W_OUT]
    argmax_ptr,  # the forward's uint8 argmax
    grad_x_ptr,  # dL/dx [N, C, 2 H_OUT (+1), 2 W_OUT (+1)]
    TOTAL, C, H_OUT, W_OUT,  # pooled elements, and their shape
    g_strides, argmax_strides, x_strides,  # (n, c, h, w) strides
    BLOCK: tl.constexpr,  # pooled elements per program
):
    """Parameters: specs.MAX_POOL2X2_BACKWARD."""
    sgn, sgc, sgh, sgw = g_strides
    san, sac, sah, saw = argmax_strides
    sxn, sxc, sxh, sxw = x_strides
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < TOTAL
    img, c, oh, ow = _pool_window(offs, C, H_OUT, W_OUT)
    g = tl.load(grad_y_ptr + img * sgn + c * sgc + oh * sgh + ow * sgw, mask=valid, other=0.0)
    arg = tl.load(argmax_ptr + img * san + c * sac + oh * sah + ow * saw, mask=valid, other=0).to(tl.int32)
    base = grad_x_ptr + img * sxn + c * sxc + (2 * oh) * sxh + (2 * ow) * sxw
    # Windows do not overlap: every input pixel of a window is written exactly once, no atomics.
    for q in tl.static_range(4):
        tl.store(base + (q // 2) * sxh + (q % 2) * sxw, tl.where(arg == q, g, 0.0).to(g.dtype), mask=valid)


def max_pool2x2_output(x):
    """(pooled, argmax) as max_pool2x2_forward returns them, unfilled; pooled keeps x's memory format."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = torch.empty((x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return y, torch.empty_like(y, dtype=torch.uint8)


def max_pool2x2_forward(x, in_scale=None, in_shift=None, in_activation=None, in_negative_slope=0.0):
    """(pooled, argmax uint8 in 0..3 = dy*2+dx); output keeps x's memory format, odd rows/cols are dropped.
    ``in_scale`` / ``in_shift``: x's pending norm ([C], or [N, C] for instance / group norm), applied with
    ``in_activation`` before pooling."""
    batch, c, h, w = x.shape
    y, argmax = max_pool2x2_output(x)
    total = y.numel()
    norm = (in_scale, in_shift) if in_scale is not None else None
    if total:
        MAX_POOL2X2.launch(
            max_pool2x2_kernel, lambda meta: (triton.cdiv(total, meta["BLOCK"]),), x_ptr=x,
            in_norm=norm_table(norm, batch, per_sample(norm)) or (x, x), y_ptr=y, argmax_ptr=argmax, TOTAL=total, C=c,
            H_OUT=h // 2, W_OUT=w // 2, NEG_SLOPE=float(in_negative_slope), x_strides=x.stride(),
            y_strides=y.stride(), NORM=norm is not None, PER_SAMPLE=per_sample(norm),
            ACT=act_code(in_activation if norm is not None else None))
    return y, argmax


def max_pool2x2_backward_output(grad_y, input_shape):
    return torch.empty(input_shape, device=grad_y.device, dtype=grad_y.dtype, memory_format=torch.channels_last)


def max_pool2x2_backward(grad_y, argmax, input_shape):
    """dL/dx of max_pool2x2_forward; the odd last row/column (never pooled) gets zero."""
    batch, c, h, w = input_shape
    grad_x = max_pool2x2_backward_output(grad_y, input_shape)
    if h % 2 or w % 2:
        grad_x.zero_()
    total = argmax.numel()
    if total:
        MAX_POOL2X2_BACKWARD.launch(
            max_pool2x2_backward_kernel, lambda meta: (triton.cdiv(total, meta["BLOCK"]),), grad_y_ptr=grad_y,
            argmax_ptr=argmax, grad_x_ptr=grad_x, TOTAL=total, C=c, H_OUT=h // 2, W_OUT=w // 2,
            g_strides=grad_y.stride(), argmax_strides=argmax.stride(), x_strides=grad_x.stride())
    return grad_x
