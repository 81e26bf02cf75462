"""Gradient preparation: the backward of a conv's epilogue, applied once before the backward GEMMs.

A conv(+act)(+2x2 max-pool) returns y (and the pooled y). Its backward GEMMs need the pre-activation gradient
dz = act'(y) * (dL/dy + the pooled gradient routed back through the 1-byte argmax). One elementwise pass computes
dz (channels_last, contiguous) and the bias-grad partial sums per pixel tile, so the input-grad is the forward
conv with flipped weights and the weight-grad a plain GEMM: no activation or pool decoding in a main loop.
"""
import torch
import triton
import triton.language as tl

from .codes import act_code
from .common import activation_grad, pixel_channel_grid, pixel_channel_tile, strides_of
from .configs import configs
from .specs import CONV_OUTPUT_GRAD


@triton.autotune(configs=configs(CONV_OUTPUT_GRAD.name), key=CONV_OUTPUT_GRAD.autotune_key)
@triton.jit
def conv_output_grad_kernel(
    g_ptr,  # dL/dy [N, C, H, W]
    out_ptr,  # the saved output y (ACT)
    pool_grad_ptr,  # dL/d pooled y [N, C, H // 2, W // 2] (POOL_GRAD)
    argmax_ptr,  # the pool's uint8 argmax (POOL_GRAD)
    dz_ptr,  # dz, contiguous [PIXELS, C]
    partial_ptr,  # fp32 [programs along pixels, C]: per-program column sums of dz (BIAS_GRAD)
    PIXELS, C, H, W,  # N * H * W, and y's shape
    NEG_SLOPE,  # ACT's leaky-ReLU slope
    g_strides, out_strides, pool_grad_strides, argmax_strides,  # (n, c, h, w) strides
    ACT: tl.constexpr,  # the forward's activation (codes.Act)
    POOL_GRAD: tl.constexpr,  # add the pooled gradient at each window's argmax
    BIAS_GRAD: tl.constexpr,  # write the bias-grad partial sums
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,  # pixels x channels per program
):
    """Parameters: specs.CONV_OUTPUT_GRAD. dz[p, c] and, with BIAS_GRAD, this program's column sums of dz into its
    own workspace row (summed in a fixed order afterwards: no atomics)."""
    sgn, sgc, sgh, sgw = g_strides
    son, soc, soh, sow = out_strides
    spn, spc, sph, spw = pool_grad_strides
    san, sac, sah, saw = argmax_strides
    pid_p, offs_p, offs_c, c_ok, mask, img, h, w = pixel_channel_tile(PIXELS, C, H, W, BLOCK_P, BLOCK_C)
    # int64: an output's images may pass 2^31 elements.
    h64 = h.to(tl.int64)
    g = tl.load(g_ptr + (img * sgn + h64 * sgh + w * sgw)[:, None] + offs_c[None, :] * sgc, mask=mask,
                other=0.0).to(tl.float32)
    if POOL_GRAD:
        ph = h // 2
        pw = w // 2
        win = mask & ((ph < H // 2) & (pw < W // 2))[:, None]
        pooled = (img * san + ph * sah + pw * saw)[:, None] + offs_c[None, :] * sac
        arg = tl.load(argmax_ptr + pooled, mask=win, other=4)
        gp = tl.load(pool_grad_ptr + (img * spn + ph * sph + pw * spw)[:, None] + offs_c[None, :] * spc, mask=win,
                     other=0.0)
        g += tl.where(arg.to(tl.int32) == ((h % 2) * 2 + (w % 2))[:, None], gp.to(tl.float32), 0.0)
    if ACT != 0:
        out = tl.load(out_ptr + (img * son + h64 * soh + w * sow)[:, None] + offs_c[None, :] * soc, mask=mask,
                      other=0.0)
        g = activation_grad(g, out.to(tl.float32), NEG_SLOPE, ACT)
    tl.store(dz_ptr + offs_p.to(tl.int64)[:, None] * C + offs_c[None, :], g.to(dz_ptr.dtype.element_ty), mask=mask)
    if BIAS_GRAD:
        tl.store(partial_ptr + pid_p.to(tl.int64) * C + offs_c, tl.sum(tl.where(mask, g, 0.0), axis=0), mask=c_ok)


def conv_output_grad_output(grad, bias_grad):
    dz = torch.empty(grad.shape, device=grad.device, dtype=grad.dtype, memory_format=torch.channels_last)
    return dz, grad.new_empty((grad.shape[1] if bias_grad else 0,))


def conv_output_grad(grad, out=None, activation=None, negative_slope=0.0, grad_pooled=None, argmax=None,
                     bias_grad=False):
    """(dz, dL/dbias) of a conv whose output y = act(z) was also 2x2 max-pooled when ``grad_pooled`` / ``argmax``
    are given: dz = act'(y) * (grad + the pooled gradient at each window's argmax), channels_last. ``out``: the
    saved y (None without activation). dL/dbias is the column sum of dz (in grad's dtype), empty unless
    ``bias_grad``."""
    batch, c, h, w = grad.shape
    dz, db = conv_output_grad_output(grad, bias_grad)
    pixels = batch * h * w
    block_p = configs(CONV_OUTPUT_GRAD.name)[0].kwargs["BLOCK_P"]
    rows = max(1, triton.cdiv(pixels, block_p)) if bias_grad else 1
    partial = torch.zeros((rows, c), device=grad.device, dtype=torch.float32)
    if pixels:
        act = act_code(activation if out is not None else None)
        CONV_OUTPUT_GRAD.launch(
            conv_output_grad_kernel, pixel_channel_grid(pixels, c), g_ptr=grad,
            out_ptr=out if out is not None else grad, pool_grad_ptr=grad_pooled if grad_pooled is not None else grad,
            argmax_ptr=argmax if argmax is not None else grad, dz_ptr=dz, partial_ptr=partial, PIXELS=pixels, C=c,
            H=h, W=w, NEG_SLOPE=float(negative_slope), g_strides=grad.stride(), out_strides=strides_of(out),
            pool_grad_strides=strides_of(grad_pooled), argmax_strides=strides_of(argmax), ACT=act,
            POOL_GRAD=grad_pooled is not None, BIAS_GRAD=bias_grad)
    if bias_grad:
        db.copy_(partial.sum(0))
    return dz, db
