"""``@triton.jit`` helpers shared by the kernels, the constexpr codes they compare flags with
(fused_unet.kernels.codes gives their names), and the launchers' shared host-side helpers."""
import functools

import torch
import triton
import triton.language as tl

from .codes import Act, NormTable, Statistics, UpMode, act_code, up_mode_code
from .configs import largest_pixel_block

ACT_NONE = tl.constexpr(int(Act.NONE))
ACT_RELU = tl.constexpr(int(Act.RELU))
ACT_LEAKY_RELU = tl.constexpr(int(Act.LEAKY_RELU))
ACT_SILU = tl.constexpr(int(Act.SILU))
ACT_GELU = tl.constexpr(int(Act.GELU))
ACT_GELU_TANH = tl.constexpr(int(Act.GELU_TANH))
ACT_PRELU = tl.constexpr(int(Act.PRELU))
_SQRT_HALF = tl.constexpr(0.7071067811865476)
_SQRT_TWO_OVER_PI = tl.constexpr(0.7978845608028654)
_INV_SQRT_TWO_PI = tl.constexpr(0.3989422804014327)
NORM_CHANNEL = tl.constexpr(int(NormTable.CHANNEL))
NORM_IMAGE_PAIR = tl.constexpr(int(NormTable.IMAGE_PAIR))
NORM_GATHER = tl.constexpr(int(NormTable.GATHER))
STATS_NONE = tl.constexpr(int(Statistics.NONE))
STATS_IMAGE = tl.constexpr(int(Statistics.IMAGE))
UP_NONE = tl.constexpr(int(UpMode.NONE))
UP_NEAREST = tl.constexpr(int(UpMode.NEAREST))
UP_BILINEAR_ALIGN_CORNERS = tl.constexpr(int(UpMode.BILINEAR_ALIGN_CORNERS))


@triton.jit
def _gelu_tanh_inner(v):
    """sqrt(2 / pi) (v + 0.044715 v^3): the argument of tanh in the tanh form of GELU."""
    return (v + 0.044715 * v * v * v) * _SQRT_TWO_OVER_PI  # tensor first: the interpreter's constexpr * tensor fails


@triton.jit
def _tanh(u):
    return 1.0 - 2.0 / (1.0 + tl.exp(2.0 * u))  # +-1 at +-inf, no tanh in tl


@triton.jit
def apply_activation(v, NEG_SLOPE, ACT: tl.constexpr):
    """The activation table (codes.Act) on fp32 ``v``, as torch defines each; PRELU's NEG_SLOPE is its loaded
    per-channel slopes (slope_of)."""
    if ACT == ACT_RELU:
        v = tl.where(v < 0.0, 0.0, v)  # keeps NaN, like torch.relu
    elif ACT == ACT_LEAKY_RELU or ACT == ACT_PRELU:
        v = tl.where(v < 0.0, v * NEG_SLOPE, v)
    elif ACT == ACT_SILU:
        v = v * tl.sigmoid(v)
    elif ACT == ACT_GELU:
        v = 0.5 * v * (1.0 + tl.erf(v * _SQRT_HALF))
    elif ACT == ACT_GELU_TANH:
        v = 0.5 * v * (1.0 + _tanh(_gelu_tanh_inner(v)))
    return v


@triton.jit
def activation_grad(g, out, NEG_SLOPE, ACT: tl.constexpr):
    """The backward of a conv epilogue's activation from its saved output (codes.EPILOGUE_ACTIVATIONS: the output
    has its input's sign for a slope >= 0)."""
    if ACT == ACT_RELU:
        g = tl.where(out <= 0.0, 0.0, g)  # threshold_backward's rule
    elif ACT == ACT_LEAKY_RELU:
        g = tl.where(out > 0.0, g, g * NEG_SLOPE)  # leaky_relu_backward's rule
    return g


@triton.jit
def slope_of(slope_ptr, channels, ok, NEG_SLOPE, ACT: tl.constexpr):
    """The negative slope apply_activation takes: with PRELU its table's (``slope_ptr``, [C]) entries at
    ``channels`` (any shape, loaded under ``ok``), else NEG_SLOPE."""
    slope = NEG_SLOPE
    if ACT == ACT_PRELU:  # one return: the compiler refuses two, even under a constexpr branch
        slope = tl.load(slope_ptr + channels, mask=ok, other=0.0)
    return slope


@triton.jit
def activation_input_grad(g, v, NEG_SLOPE, ACT: tl.constexpr):
    """The backward of the activation table from its fp32 input ``v`` (a pending norm's, recomputed), with
    torch's rules at 0."""
    if ACT == ACT_RELU:
        g = tl.where(v <= 0.0, 0.0, g)
    elif ACT == ACT_LEAKY_RELU or ACT == ACT_PRELU:
        g = tl.where(v > 0.0, g, g * NEG_SLOPE)
    elif ACT == ACT_SILU:
        s = tl.sigmoid(v)
        g = g * s * (1.0 + v * (1.0 - s))
    elif ACT == ACT_GELU:
        g = g * (0.5 * (1.0 + tl.erf(v * _SQRT_HALF)) + v * _INV_SQRT_TWO_PI * tl.exp(-0.5 * v * v))
    elif ACT == ACT_GELU_TANH:
        t = _tanh(_gelu_tanh_inner(v))
        g = g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * _SQRT_TWO_OVER_PI * (1.0 + 3 * 0.044715 * v * v))
    return g


@triton.jit
def pixel_channel_tile(PIXELS, C, H, W, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The [BLOCK_P pixels, BLOCK_C channels] tile of an elementwise program: (pid_p, pixel offsets, channel
    offsets, channel mask, tile mask, image, row, column)."""
    pid_p = tl.program_id(0)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mask = (offs_p < PIXELS)[:, None] & c_ok[None, :]
    w = offs_p % W
    h = (offs_p // W) % H
    return pid_p, offs_p, offs_c, c_ok, mask, (offs_p // (W * H)).to(tl.int64), h, w


def source_placement(src, height, width, up_mode=None, align_corners=False):
    """How ``src`` is read onto a [height, width] grid: up-sampled x2 (``up_mode`` nearest / bilinear) or as is,
    then zero-padded centred (the ``F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])`` of popular
    U-Nets). Returns UP_MODE and the kernels' (H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP, SCALE_H, SCALE_W)."""
    h_src, w_src = src.shape[2], src.shape[3]
    factor = 1 if up_mode is None else 2
    h_up, w_up = factor * h_src, factor * w_src
    mode = up_mode_code(up_mode, align_corners)

    def scale(n_src, n_up):
        # PyTorch's source-index scale for a x2 resize (1 / scale_factor without align_corners).
        if mode == UpMode.BILINEAR_ALIGN_CORNERS:
            return (n_src - 1) / (n_up - 1) if n_up > 1 else 0.0
        return 0.5

    return mode, (h_src, w_src, (height - h_up) // 2, (width - w_up) // 2, h_up, w_up, scale(h_src, h_up),
                  scale(w_src, w_up))


def per_sample(norm):
    """Whether a pending norm's (scale, shift) are per (image, channel) [N, C] (instance / group norm), not [C]."""
    return norm is not None and norm[0].dim() == 2


def norm_table(norm, batch, per_image):
    """A pending norm (scale, shift[, slope]) as the kernels index it, contiguous: scale and shift [C], or [N, C]
    when ``per_image`` (a per-channel one read beside a per-sample one is expanded to it); a PReLU's fp32 slopes
    [C] third, else scale again (a placeholder the kernels never read). None stays None."""
    if norm is None:
        return None
    scale, shift, *slope = norm
    scale, shift = ((t.expand(batch, t.shape[-1]) if per_image else t).contiguous() for t in (scale, shift))
    slope = slope[0] if slope and slope[0] is not None else None
    return scale, shift, (slope.float().contiguous() if slope is not None else scale)


def norm_table_code(per_image, pixels_per_image, kernel, gather=False):
    """NORM_TABLE of a GEMM ``kernel``'s launch reading pending norms (``per_image``: [N, C] tables) over images of
    ``pixels_per_image`` GEMM rows (K pixels for the weight-grad): two [C] rows per step where no config's tile can
    span three images, else gathered (also when ``gather``: a few-channel source's taps share its K range)."""
    if not per_image:
        return int(NormTable.CHANNEL)
    if gather or pixels_per_image < largest_pixel_block(kernel):
        return int(NormTable.GATHER)
    return int(NormTable.IMAGE_PAIR)


def pending_activation(activation, negative_slope, pending):
    """(IN_ACT, IN_NEG_SLOPE) of a GEMM launch reading a pending norm (``pending``). The slope is a constexpr (a
    run-time scalar in the A tile's prologue keeps Triton from feeding the MMA from registers), 0.0 unless the
    activation is leaky, so the others share one compile."""
    code = act_code(activation if pending else None)
    return dict(IN_ACT=code, IN_NEG_SLOPE=float(negative_slope) if code == Act.LEAKY_RELU else 0.0)


@functools.lru_cache(maxsize=None)
def float_one(device):
    """A float32 1.0 on ``device`` (made once): the GEMM kernels load it under each row's tap mask to gate a
    per-channel pending norm's shift (kernels.conv._norm_affine)."""
    return torch.ones(1, dtype=torch.float32, device=device)


_NO_STRIDES = (0, 0, 0, 0)


def strides_of(t):
    """A tensor's strides, or zeros for an absent one (its pointer is a placeholder)."""
    return t.stride() if t is not None else _NO_STRIDES


def pixel_channel_grid(pixels, channels):
    """The launch grid of a pixel_channel_tile kernel."""
    return lambda meta: (triton.cdiv(pixels, meta["BLOCK_P"]), triton.cdiv(channels, meta["BLOCK_C"]))


@triton.jit
def fast_div(n, magic, shift):
    """n // d for 0 <= n < 2**31, from the host's ``fast_divisor(d)``: a multiply-high and a shift instead of the
    ~20-instruction integer division (Granlund & Montgomery; CUTLASS's FastDivmod)."""
    n = tl.cast(n, tl.uint32)  # also a Python int: an interpreted loop counter
    return ((tl.umulhi(n, magic.to(tl.uint32, bitcast=True)) + n) >> shift).to(tl.int32)


@triton.jit
def linear_source(u, N_SRC, SCALE, ALIGN_CORNERS: tl.constexpr):
    """PyTorch's bilinear source index for destination index u: (i0, i1, weight of i1)."""
    uf = u.to(tl.float32)
    if ALIGN_CORNERS:
        src = uf * SCALE
    else:
        src = tl.maximum((uf + 0.5) * SCALE - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), N_SRC - 1)
    return i0, tl.minimum(i0 + 1, N_SRC - 1), src - i0.to(tl.float32)


@triton.jit
def take_larger(best, arg, v, q):
    # PyTorch's max-pool scan: a strictly larger value or a NaN takes the window.
    take = (v > best) | (v != v)
    return tl.where(take, v, best), tl.where(take, q, arg)
