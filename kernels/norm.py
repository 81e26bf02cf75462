"""Norms around the fused convs: the statistics the conv epilogue wrote (batch norm) or one reduction kernel
computes per (image, channel) (instance / group norm), and the backward of a pending norm + activation that a
consumer kernel applied while reading its input.

A conv followed by ``nn.BatchNorm2d`` and an activation stores only its pre-norm output ``y`` (plus per-tile
statistics); every consumer reads ``z = act(y * scale + shift)`` on the fly. Backward splits the batch norm
in two: each consumer returns dL/dy through ``z`` (``scale`` held fixed) and dL/dscale, dL/dshift; the
statistics' own backward (how scale and shift depend on y's mean and variance) is per-channel arithmetic.
"""
import torch
import triton
import triton.language as tl

from .codes import act_code
from .common import activation_input_grad, norm_table, per_sample, pixel_channel_grid, pixel_channel_tile
from .configs import configs
from .specs import BATCH_NORM_ACT_BACKWARD, CHANNEL_STATISTICS


def _combined(count, mean_t, m2_t, dims):
    """(mean, biased variance, count) of the parts (count, mean, M2) combined over ``dims`` in a fixed order in
    float64 (Chan et al.'s parallel variance: no cancellation)."""
    n = count.sum(dims, keepdim=True)
    mean = (count * mean_t).sum(dims, keepdim=True) / n
    m2 = (m2_t + count * (mean_t - mean) ** 2).sum(dims, keepdim=True)
    return tuple(t.squeeze(dims) for t in (mean, m2 / n, n))


def batch_statistics(stats):
    """(mean, biased variance, count) per channel from a stats workspace [tiles, 3 (count, mean, M2), C]."""
    stats = stats.double()
    return _combined(stats[:, 0], stats[:, 1], stats[:, 2], (0,))


def group_statistics(stats, groups):
    """(mean, biased variance, count) per (image, group of channels) [N, groups] from a channel_statistics
    workspace [N, tiles, 3, C]: instance norm is ``groups`` = C."""
    batch, tiles, _, c = stats.shape
    stats = stats.double().view(batch, tiles, 3, groups, c // groups)
    return _combined(stats[:, :, 0], stats[:, :, 1], stats[:, :, 2], (1, 3))


@triton.autotune(configs=configs(CHANNEL_STATISTICS.name), key=CHANNEL_STATISTICS.autotune_key)
@triton.jit
def channel_statistics_kernel(
    y_ptr,  # [N, C, H, W], any strides
    stats_ptr,  # fp32 [N, programs along pixels, 3 (count, mean, M2), C]
    PIXELS, C, H, W,  # H * W (the grid's third axis walks the images), and y's shape
    y_strides,  # (n, c, h, w) strides
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,  # pixels of one image x channels per program
):
    """Parameters: specs.CHANNEL_STATISTICS. Each program's (count, mean, sum of squared deviations) per channel
    of its pixels of one image, into its own workspace row: combined in a fixed order afterwards (group_statistics;
    no float atomics, the same bits on every run)."""
    syn, syc, syh, syw = y_strides
    pid_p, offs_p, offs_c, c_ok, mask, img, h, w = pixel_channel_tile(PIXELS, C, H, W, BLOCK_P, BLOCK_C)
    img += tl.program_id(2)
    v = tl.load(y_ptr + (img * syn + h * syh + w * syw)[:, None] + offs_c[None, :] * syc, mask=mask,
                other=0.0).to(tl.float32)
    count = tl.minimum(PIXELS - pid_p * BLOCK_P, BLOCK_P).to(tl.float32)
    mean = tl.sum(v, axis=0) / count
    dev = tl.where(mask, v - mean[None, :], 0.0)
    row = stats_ptr + (tl.program_id(2) * tl.num_programs(0) + pid_p).to(tl.int64) * 3 * C + offs_c
    tl.store(row, tl.zeros_like(mean) + count, mask=c_ok)
    tl.store(row + C, mean, mask=c_ok)
    tl.store(row + 2 * C, tl.sum(dev * dev, axis=0), mask=c_ok)


def channel_statistics_output(y):
    block_p = configs(CHANNEL_STATISTICS.name)[0].kwargs["BLOCK_P"]
    tiles = max(1, triton.cdiv(y.shape[2] * y.shape[3], block_p))
    return torch.empty((y.shape[0], tiles, 3, y.shape[1]), device=y.device, dtype=torch.float32)


def channel_statistics(y):
    """Per (image, channel) statistics of y [N, C, H, W] (any strides, H * W >= 1) for instance and group norm: a
    workspace [N, tiles, 3 (count, mean, M2), C] of per-tile parts for ``group_statistics``."""
    batch, c, h, w = y.shape
    stats = channel_statistics_output(y)
    if y.numel():
        CHANNEL_STATISTICS.launch(
            channel_statistics_kernel, lambda meta: (*pixel_channel_grid(h * w, c)(meta), batch), y_ptr=y,
            stats_ptr=stats, PIXELS=h * w, C=c, H=h, W=w, y_strides=y.stride())
    return stats


@triton.autotune(configs=configs(BATCH_NORM_ACT_BACKWARD.name), key=BATCH_NORM_ACT_BACKWARD.autotune_key)
@triton.jit
def batch_norm_act_backward_kernel(
    g_ptr,  # dL/dz of z = act(y * scale + shift) [N, C, H, W]
    y_ptr,  # the pre-norm y
    norm,  # (scale, shift) fp32 per channel [C], or per (image, channel) [N, C] (PER_SAMPLE)
    dy_ptr,  # dL/dy
    partial_ptr,  # fp32 [programs along pixels (per image with PER_SAMPLE), 2, C]: sums for dL/dscale, dL/dshift
    PIXELS, C, H, W,  # N * H * W (H * W with PER_SAMPLE: the grid's third axis walks the images), and y's shape
    NEG_SLOPE,  # ACT's leaky-ReLU slope
    g_strides, y_strides, dy_strides,  # (n, c, h, w) strides
    ACT: tl.constexpr,  # the activation (codes.Act)
    PER_SAMPLE: tl.constexpr,  # instance / group norm: scale, shift and the partial sums per (image, channel)
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
    if PER_SAMPLE:
        img += tl.program_id(2)
        at = img[:, None] * C + offs_c[None, :]
        scale = tl.load(scale_ptr + at, mask=mask, other=0.0)
        shift = tl.load(shift_ptr + at, mask=mask, other=0.0)
        pid_p += tl.program_id(2) * tl.num_programs(0)
    else:
        scale = tl.load(scale_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
        shift = tl.load(shift_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
    g = tl.load(g_ptr + (img * sgn + h * sgh + w * sgw)[:, None] + offs_c[None, :] * sgc, mask=mask, other=0.0)
    y = tl.load(y_ptr + (img * syn + h * syh + w * syw)[:, None] + offs_c[None, :] * syc, mask=mask, other=0.0)
    y = y.to(tl.float32)
    g = tl.where(mask, activation_input_grad(g.to(tl.float32), y * scale + shift, NEG_SLOPE, ACT), 0.0)
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
    (any strides). dL/dscale and dL/dshift are fp32, shaped like ``scale`` ([C], or [N, C] for instance / group
    norm), summed over per-tile partials in a fixed order."""
    batch, c, h, w = y.shape
    dy, _, _ = batch_norm_act_input_grad_output(grad, scale)
    per_image = per_sample((scale, shift))
    # Per sample, the tiles walk one image each (the grid's third axis): their sums are per (image, channel).
    images, pixels = (batch, h * w) if per_image else (1, batch * h * w)
    block_p = configs(BATCH_NORM_ACT_BACKWARD.name)[0].kwargs["BLOCK_P"]
    tiles = max(1, triton.cdiv(pixels, block_p))
    partial = torch.zeros((images, tiles, 2, c), device=y.device, dtype=torch.float32)
    if pixels and batch:
        BATCH_NORM_ACT_BACKWARD.launch(
            batch_norm_act_backward_kernel, lambda meta: (*pixel_channel_grid(pixels, c)(meta), images), g_ptr=grad,
            y_ptr=y, norm=norm_table((scale, shift), batch, per_image), dy_ptr=dy, partial_ptr=partial,
            PIXELS=pixels, C=c, H=h, W=w, NEG_SLOPE=float(negative_slope), g_strides=grad.stride(),
            y_strides=y.stride(), dy_strides=dy.stride(), ACT=act_code(activation), PER_SAMPLE=per_image)
    parts = partial if per_image else partial[0]  # summed over the tiles of each image, or of the batch
    return dy, parts[..., 0, :].sum(-2), parts[..., 1, :].sum(-2)
