"""``@triton.jit`` helpers shared by the kernels, and the constexpr codes they compare flags with
(fused_unet.kernels.codes gives their names)."""
import triton
import triton.language as tl

from .codes import Act, UpMode

ACT_RELU = tl.constexpr(int(Act.RELU))
ACT_LEAKY_RELU = tl.constexpr(int(Act.LEAKY_RELU))
UP_NONE = tl.constexpr(int(UpMode.NONE))
UP_NEAREST = tl.constexpr(int(UpMode.NEAREST))
UP_BILINEAR_ALIGN_CORNERS = tl.constexpr(int(UpMode.BILINEAR_ALIGN_CORNERS))


@triton.jit
def apply_activation(v, NEG_SLOPE, ACT: tl.constexpr):
    if ACT == ACT_RELU:
        v = tl.where(v < 0.0, 0.0, v)  # keeps NaN, like torch.relu
    elif ACT == ACT_LEAKY_RELU:
        v = tl.where(v < 0.0, v * NEG_SLOPE, v)
    return v


@triton.jit
def activation_grad(g, out, NEG_SLOPE, ACT: tl.constexpr):
    """The activation's backward from its saved output (same sign as its input for a slope >= 0)."""
    if ACT == ACT_RELU:
        g = tl.where(out <= 0.0, 0.0, g)  # threshold_backward's rule
    elif ACT == ACT_LEAKY_RELU:
        g = tl.where(out > 0.0, g, g * NEG_SLOPE)  # leaky_relu_backward's rule
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


def pixel_channel_grid(pixels, channels):
    """The launch grid of a pixel_channel_tile kernel."""
    return lambda meta: (triton.cdiv(pixels, meta["BLOCK_P"]), triton.cdiv(channels, meta["BLOCK_C"]))


@triton.jit
def fast_div(n, magic, shift):
    """n // d for 0 <= n < 2**31, from the host's ``fast_divisor(d)``: a multiply-high and a shift instead of the
    ~20-instruction integer division (Granlund & Montgomery; CUTLASS's FastDivmod)."""
    n = n.to(tl.uint32)
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
