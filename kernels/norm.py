"""Batch norm around the fused convs: the statistics the conv epilogue wrote, and the backward of a pending
batch norm + activation that a consumer kernel applied while reading its input.

A conv followed by ``nn.BatchNorm2d`` and an activation stores only its pre-norm output ``y`` (plus per-tile
statistics); every consumer reads ``z = act(y * scale + shift)`` on the fly. Backward splits the batch norm
in two: each consumer returns dL/dy through ``z`` (``scale`` held fixed) and dL/dscale, dL/dshift; the
statistics' own backward (how scale and shift depend on y's mean and variance) is per-channel arithmetic.
"""
import torch
import triton
import triton.language as tl

from .codes import act_code
from .common import activation_grad, apply_activation, pixel_channel_grid, pixel_channel_tile
from .configs import configs
from .specs import BATCH_NORM_ACT_BACKWARD


def batch_statistics(stats):
    """(mean, biased variance, count) per channel from a stats workspace [tiles, 3 (count, mean, M2), C],
    combined in a fixed order in float64 (Chan et al.'s parallel variance: no cancellation)."""
    stats = stats.double()
    count, mean_t, m2_t = stats[:, 0], stats[:, 1], stats[:, 2]
    n = count.sum(0)
    mean = (count * mean_t).sum(0) / n
    m2 = (m2_t + count * (mean_t - mean) ** 2).sum(0)
    return mean, m2 / n, n


@triton.autotune(configs=configs(BATCH_NORM_ACT_BACKWARD.name), key=BATCH_NORM_ACT_BACKWARD.autotune_key)
@triton.jit
def batch_norm_act_backward_kernel(
    g_ptr,  # dL/dz of z = act(y * scale + shift) [N, C, H, W]
    y_ptr,  # the pre-norm y
    norm,  # (scale, shift) fp32 per channel
    dy_ptr,  # dL/dy
    partial_ptr,  # fp32 [programs along pixels, 2, C]: per-program sums for dL/dscale, dL/dshift
    PIXELS, C, H, W,  # N * H * W, and y's shape
    NEG_SLOPE,  # ACT's leaky-ReLU slope
    g_strides, y_strides, dy_strides,  # (n, c, h, w) strides
    ACT: tl.constexpr,  # the activation (codes.Act)
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,  # pixels x channels per program
):
    """Parameters: specs.BATCH_NORM_ACT_BACKWARD. With u = y * scale + shift and g = dL/d act(u):
    dy = act'(u) g scale, and per program the partial sums of act'(u) g y (-> dL/dscale) and act'(u) g
    (-> dL/dshift) into its own workspace row (no atomics)."""
    sgn, sgc, sgh, sgw = g_strides
    syn, syc, syh, syw = y_strides
    sdn, sdc, sdh, sdw = dy_strides
    scale_ptr, shift_ptr = norm
    pid_p, offs_p, offs_c, c_ok, mask, img, h, w = pixel_channel_tile(PIXELS, C, H, W, BLOCK_P, BLOCK_C)
    g = tl.load(g_ptr + (img * sgn + h * sgh + w * sgw)[:, None] + offs_c[None, :] * sgc, mask=mask, other=0.0)
    y = tl.load(y_ptr + (img * syn + h * syh + w * syw)[:, None] + offs_c[None, :] * syc, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
    shift = tl.load(shift_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
    y = y.to(tl.float32)
    out = apply_activation(y * scale + shift, NEG_SLOPE, ACT)
    g = tl.where(mask, activation_grad(g.to(tl.float32), out, NEG_SLOPE, ACT), 0.0)
    tl.store(dy_ptr + (img * sdn + h * sdh + w * sdw)[:, None] + offs_c[None, :] * sdc,
             (g * scale).to(dy_ptr.dtype.element_ty), mask=mask)
    row = partial_ptr + pid_p.to(tl.int64) * 2 * C + offs_c
    tl.store(row, tl.sum(g * y, axis=0), mask=c_ok)
    tl.store(row + C, tl.sum(g, axis=0), mask=c_ok)


def batch_norm_act_input_grad_output(grad, scale):
    dy = torch.empty(grad.shape, device=grad.device, dtype=grad.dtype, memory_format=torch.channels_last)
    return dy, torch.empty_like(scale), torch.empty_like(scale)


def batch_norm_act_input_grad(grad, y, scale, shift, activation=None, negative_slope=0.0):
    """(dL/dy, dL/dscale, dL/dshift) for z = act(y * scale + shift) read by a consumer, from dL/dz ``grad``
    (any strides). dL/dscale and dL/dshift are fp32, summed over per-tile partials in a fixed order."""
    batch, c, h, w = y.shape
    dy, _, _ = batch_norm_act_input_grad_output(grad, scale)
    pixels = batch * h * w
    block_p = configs(BATCH_NORM_ACT_BACKWARD.name)[0].kwargs["BLOCK_P"]
    partial = torch.zeros((max(1, triton.cdiv(pixels, block_p)), 2, c), device=y.device, dtype=torch.float32)
    if pixels:
        BATCH_NORM_ACT_BACKWARD.launch(
            batch_norm_act_backward_kernel, pixel_channel_grid(pixels, c), g_ptr=grad, y_ptr=y, norm=(scale, shift),
            dy_ptr=dy, partial_ptr=partial, PIXELS=pixels, C=c, H=h, W=w, NEG_SLOPE=float(negative_slope),
            g_strides=grad.stride(), y_strides=y.stride(), dy_strides=dy.stride(), ACT=act_code(activation))
    return dy, partial[:, 0].sum(0), partial[:, 1].sum(0)
