"""Stride-2 max-pools (floor mode, NaN-propagating like nn.MaxPool2d) with a 1-byte argmax: the U-Net's 2x2 and the
ResNet stem's 3x3 with padding 1."""
import torch
import triton
import triton.language as tl

from .codes import POOL_PADDING, act_code
from .common import apply_activation, norm_table, per_sample, slope_of, take_larger
from .configs import configs
from .specs import MAX_POOL, MAX_POOL_BACKWARD


def _padding(window):
    """The padding of the stride-2 max-pool of ``window``; a ValueError for a window the kernels do not run."""
    if window not in POOL_PADDING:
        raise ValueError(f"window must be one of {sorted(POOL_PADDING)}, got {window!r}")
    return POOL_PADDING[window]


def pooled_size(size, window):
    """The output height or width of a stride-2 max-pool of ``window`` (and its padding), floor mode."""
    return (size + 2 * _padding(window) - window) // 2 + 1


@triton.jit
def _pool_position(offs, C, H, W):
    # Channels innermost: neighbouring lanes read neighbouring addresses of channels_last tensors.
    c = offs % C
    w = (offs // C) % W
    h = (offs // (C * W)) % H
    img = offs // (C * W * H)
    return img, c, h, w


@triton.autotune(configs=configs(MAX_POOL.name), key=MAX_POOL.autotune_key)
@triton.jit
def max_pool_kernel(
    x_ptr,  # input [N, C, H, W]
    in_norm,  # (scale, shift, PReLU slopes [C]) fp32 of x's pending norm (NORM): [C], or [N, C] with PER_SAMPLE
    y_ptr,  # pooled output [N, C, H_OUT, W_OUT]
    argmax_ptr,  # uint8 argmax (dy * WINDOW + dx) of each window, y_strides
    TOTAL, C, H, W, H_OUT, W_OUT,  # output elements, the input's and the output's shape
    NEG_SLOPE,  # ACT's leaky-ReLU slope (PRELU: in_norm's slopes)
    x_strides, y_strides,  # (n, c, h, w) strides
    NORM: tl.constexpr,  # pool act(x * scale + shift): x is a conv's pre-norm output
    PER_SAMPLE: tl.constexpr,  # scale and shift per (image, channel): instance / group norm
    ACT: tl.constexpr,  # the pending norm's activation (codes.Act)
    WINDOW: tl.constexpr,  # 2: 2x2 windows; 3: 3x3 windows, padding 1 (the padding is -inf, never the max)
    BLOCK: tl.constexpr,  # output elements per program
):
    """Parameters: specs.MAX_POOL. Each window's elements in fp32 (exact for every input dtype; the interpreter's
    bf16 comparisons are unreliable); with NORM normalised, activated and rounded to y's dtype first, as the
    normalised tensor would be stored, so ties break the same. PyTorch's scan: the first element inside the input
    holds the window until a strictly larger value or a NaN takes it."""
    sxn, sxc, sxh, sxw = x_strides
    syn, syc, syh, syw = y_strides
    scale_ptr, shift_ptr, slope_ptr = in_norm
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < TOTAL
    img, c, oh, ow = _pool_position(offs, C, H_OUT, W_OUT)
    top = 2 * oh - (WINDOW - 2)  # the padding, codes.POOL_PADDING: 0 or 1
    left = 2 * ow - (WINDOW - 2)
    if NORM:
        at = c
        if PER_SAMPLE:
            at += img * C
        scale = tl.load(scale_ptr + at, mask=valid, other=0.0)
        shift = tl.load(shift_ptr + at, mask=valid, other=0.0)
        slope = slope_of(slope_ptr, c, valid, NEG_SLOPE, ACT)
    best = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    arg = (top < 0).to(tl.int32) * WINDOW + (left < 0).to(tl.int32)  # the window's first element inside x
    for q in tl.static_range(WINDOW * WINDOW):
        h = top + q // WINDOW
        w = left + q % WINDOW
        inside = valid
        if WINDOW == 3:
            inside = inside & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        v = tl.load(x_ptr + img * sxn + c * sxc + h * sxh + w * sxw, mask=inside, other=0.0).to(tl.float32)
        if NORM:
            v = apply_activation(v * scale + shift, slope, ACT).to(y_ptr.dtype.element_ty).to(tl.float32)
        best, arg = take_larger(best, arg, tl.where(inside, v, float("-inf")), q)
    y_off = img * syn + c * syc + oh * syh + ow * syw
    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=valid)
    tl.store(argmax_ptr + y_off, arg.to(tl.uint8), mask=valid)


@triton.autotune(configs=configs(MAX_POOL_BACKWARD.name), key=MAX_POOL_BACKWARD.autotune_key)
@triton.jit
def max_pool_backward_kernel(
    grad_y_ptr,  # dL/d pooled [N, C, H_OUT, W_OUT]
    argmax_ptr,  # the forward's uint8 argmax
    grad_x_ptr,  # dL/dx [N, C, H, W]
    TOTAL, C, H, W, H_OUT, W_OUT,  # elements of the iteration space (WINDOW 2: pooled; 3: x's), and both shapes
    g_strides, argmax_strides, x_strides,  # (n, c, h, w) strides
    WINDOW: tl.constexpr,  # as the forward's
    BLOCK: tl.constexpr,  # elements per program
):
    """Parameters: specs.MAX_POOL_BACKWARD. No atomics: 2x2 windows do not overlap, so each pooled element writes
    its window (every input pixel written once); 3x3 windows do, so each input element gathers, in a fixed order
    and in fp32, the gradients of the (at most 2x2) windows whose argmax it is."""
    sgn, sgc, sgh, sgw = g_strides
    san, sac, sah, saw = argmax_strides
    sxn, sxc, sxh, sxw = x_strides
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < TOTAL
    if WINDOW == 2:
        img, c, oh, ow = _pool_position(offs, C, H_OUT, W_OUT)
        g = tl.load(grad_y_ptr + img * sgn + c * sgc + oh * sgh + ow * sgw, mask=valid, other=0.0)
        arg = tl.load(argmax_ptr + img * san + c * sac + oh * sah + ow * saw, mask=valid, other=0).to(tl.int32)
        base = grad_x_ptr + img * sxn + c * sxc + (2 * oh) * sxh + (2 * ow) * sxw
        for q in tl.static_range(4):
            tl.store(base + (q // 2) * sxh + (q % 2) * sxw, tl.where(arg == q, g, 0.0).to(g.dtype), mask=valid)
    else:
        img, c, h, w = _pool_position(offs, C, H, W)
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        for j in tl.static_range(4):  # windows (oh, ow) with 2 oh - 1 <= h <= 2 oh + 1, likewise for w
            oh = (h + 1) // 2 - j // 2
            ow = (w + 1) // 2 - j % 2
            dy = h - (2 * oh - 1)
            dx = w - (2 * ow - 1)
            hit = valid & (oh >= 0) & (oh < H_OUT) & (ow >= 0) & (ow < W_OUT) & (dy <= 2) & (dx <= 2)
            arg = tl.load(argmax_ptr + img * san + c * sac + oh * sah + ow * saw, mask=hit, other=0).to(tl.int32)
            hit = hit & (arg == dy * 3 + dx)
            total += tl.load(grad_y_ptr + img * sgn + c * sgc + oh * sgh + ow * sgw, mask=hit, other=0.0).to(
                tl.float32)
        tl.store(grad_x_ptr + img * sxn + c * sxc + h * sxh + w * sxw, total.to(grad_x_ptr.dtype.element_ty),
                 mask=valid)


def max_pool_output(x, window):
    """(pooled, argmax) as max_pool_forward returns them, unfilled; pooled keeps x's memory format."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = torch.empty((x.shape[0], x.shape[1], pooled_size(x.shape[2], window), pooled_size(x.shape[3], window)),
                    device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return y, torch.empty_like(y, dtype=torch.uint8)


def max_pool_forward(x, window, in_scale=None, in_shift=None, in_activation=None, in_negative_slope=0.0,
                     in_slope=None):
    """(pooled, argmax uint8 = dy * window + dx) of a stride-2 max-pool with ``window`` x ``window`` windows (2, or 3
    with padding 1); output keeps x's memory format, floor mode (a 2x2 pool drops an odd last row/column).
    ``in_scale`` / ``in_shift``: x's pending norm ([C], or [N, C] for instance / group norm), applied with
    ``in_activation`` (a PReLU's slopes ``in_slope``) before pooling."""
    batch, c, h, w = x.shape
    y, argmax = max_pool_output(x, window)
    total = y.numel()
    norm = (in_scale, in_shift, in_slope) if in_scale is not None else None
    if total:
        MAX_POOL.launch(
            max_pool_kernel, lambda meta: (triton.cdiv(total, meta["BLOCK"]),), x_ptr=x,
            in_norm=norm_table(norm, batch, per_sample(norm)) or (x, x, x), y_ptr=y, argmax_ptr=argmax,
            TOTAL=total, C=c, H=h, W=w, H_OUT=y.shape[2], W_OUT=y.shape[3], NEG_SLOPE=float(in_negative_slope),
            x_strides=x.stride(), y_strides=y.stride(), NORM=norm is not None, PER_SAMPLE=per_sample(norm),
            ACT=act_code(in_activation if norm is not None else None), WINDOW=window)
    return y, argmax


def max_pool_backward_output(grad_y, input_shape):
    return torch.empty(input_shape, device=grad_y.device, dtype=grad_y.dtype, memory_format=torch.channels_last)


def max_pool_backward(grad_y, argmax, input_shape, window):
    """dL/dx of max_pool_forward; the elements no window's argmax points at (a 2x2 pool's odd last row/column
    among them) get zero."""
    _padding(window)
    batch, c, h, w = input_shape
    grad_x = max_pool_backward_output(grad_y, input_shape)
    if window == 2 and (h % 2 or w % 2):
        grad_x.zero_()
    total = argmax.numel() if window == 2 else grad_x.numel()
    if total:
        MAX_POOL_BACKWARD.launch(
            max_pool_backward_kernel, lambda meta: (triton.cdiv(total, meta["BLOCK"]),), grad_y_ptr=grad_y,
            argmax_ptr=argmax, grad_x_ptr=grad_x, TOTAL=total, C=c, H=h, W=w, H_OUT=argmax.shape[2],
            W_OUT=argmax.shape[3], g_strides=grad_y.stride(), argmax_strides=argmax.stride(),
            x_strides=grad_x.stride(), WINDOW=window)
    return grad_x
