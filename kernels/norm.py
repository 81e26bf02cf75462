"""Norms around the fused convs: the statistics the conv epilogue wrote (batch norm) or one reduction kernel
computes per (image, channel) (instance / group norm), the backward of a pending norm + activation that a
consumer kernel applied while reading its input, and the pending norm made a tensor where no fused kernel reads it
(with a residual added and a second activation: a ResNet block's end, ``pending_norm``).

A conv followed by ``nn.BatchNorm2d`` and an activation stores only its pre-norm output ``y`` (plus per-tile
statistics); every consumer reads ``z = act(y * scale + shift)`` on the fly. Backward splits the batch norm
in two: each consumer returns dL/dy through ``z`` (``scale`` held fixed) and dL/dscale, dL/dshift; the
statistics' own backward (how scale and shift depend on y's mean and variance) is per-channel arithmetic.
"""
import torch
import triton
import triton.language as tl

from .codes import act_code
from .common import (ACT_NONE, ACT_PRELU, activation_grad, activation_input_grad, apply_activation, norm_table,
                     per_sample, pixel_channel_grid, pixel_channel_tile, slope_of, strides_of)
from .configs import STATS_ROWS, TILES_PER_SPLIT, configs
from .specs import (BATCH_NORM_ACT_BACKWARD, CHANNEL_STATISTICS, NORM_STATISTICS, NORM_STATISTICS_BACKWARD,
                    PENDING_NORM)

_STATS_ROWS = tl.constexpr(STATS_ROWS)


@triton.jit
def _merged(n, mean, m2, part_n, part_mean, part_m2):
    """Chan et al.'s parallel combine of two (count, mean, M2) summaries (no cancellation); an empty part changes
    nothing."""
    total = n + part_n
    delta = part_mean - mean
    weight = tl.where(total > 0, part_n / tl.where(total > 0, total, 1.0), 0.0)
    return total, mean + delta * weight, m2 + part_m2 + delta * delta * n * weight


@triton.jit
def _update_running(running, offs_s, s_ok, mean, unbiased, MOMENTUM):
    """running = (1 - MOMENTUM) * running + MOMENTUM * this batch's, for the mean and the unbiased variance."""
    mean_ptr, var_ptr = running
    old_mean = tl.load(mean_ptr + offs_s, mask=s_ok, other=0.0).to(tl.float64)
    old_var = tl.load(var_ptr + offs_s, mask=s_ok, other=0.0).to(tl.float64)
    tl.store(mean_ptr + offs_s, (old_mean * (1.0 - MOMENTUM) + mean * MOMENTUM).to(mean_ptr.dtype.element_ty),
             mask=s_ok)
    tl.store(var_ptr + offs_s, (old_var * (1.0 - MOMENTUM) + unbiased * MOMENTUM).to(var_ptr.dtype.element_ty),
             mask=s_ok)


@triton.autotune(configs=configs(NORM_STATISTICS.name), key=NORM_STATISTICS.autotune_key)
@triton.jit
def norm_statistics_kernel(
    parts_ptr,  # fp32 [N, TILES, 3 (count, mean, M2), C] of per-tile parts, or ROW_PARTS a conv epilogue's rows
    partial_ptr,  # fp64 [N, SPLITS, 3, G]: STAGE 1 writes each split's combine of its tiles, STAGE 2 reads them
    affine,  # (gamma, beta) [C]: the norm's weight and bias
    norm,  # (scale, shift) fp32 [N, C] out: scale = gamma / sqrt(var + eps), shift = beta - mean * scale
    stat_ptr,  # fp64 [N, 3 (mean, biased var, 1 / sqrt(var + eps)), G] out
    running,  # (running mean, running var) [G] of a batch or instance norm, updated in place with RUNNING
    TILES, C, G, WIDTH, TILES_PER_SPLIT,  # tiles per image (STAGE 3: images), channels, statistics per image,
    # channels per statistic, tiles per split
    IMAGE_PIXELS,  # ROW_PARTS and STAGE 3: pixels per image
    GROUP_ROWS,  # ROW_PARTS: the rows of STATS_ROWS pixels before the images'
    EPS,  # the norm's epsilon
    MOMENTUM,  # RUNNING: the weight of this batch's statistics
    STAGE: tl.constexpr,  # 0: parts -> outputs; 1: parts -> per-split partials; 2: partials -> outputs; 3: outputs
    # of TILES images -> running statistics (an instance norm's: the images' average mean and unbiased variance)
    RUNNING: tl.constexpr,  # update running statistics as torch.nn's BatchNorm2d does (the variance unbiased)
    ROW_PARTS: tl.constexpr,  # parts are a conv epilogue's per-image statistics (codes.Statistics.IMAGE)
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr,  # tiles x statistics per step
):
    """Parameters: specs.NORM_STATISTICS. A norm's statistics finalised: each statistic's parts (its tiles x its
    WIDTH channels: one per channel for batch / instance norm, C / G for group norm) combined in a fixed order in
    float64, then scale and shift. Many tiles (a batch norm of a large batch) split over programs first (STAGE 1)
    and their partials are combined by a second launch (STAGE 2): deterministic, no atomics. ROW_PARTS: image n's
    tiles are its row after the groups' (the part of a group that began in image n - 1; empty where n's first pixel
    starts a group) then the groups of STATS_ROWS pixels that begin in it."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < G
    if STAGE == 3:
        mean = tl.zeros([BLOCK_S], dtype=tl.float64)
        var = tl.zeros([BLOCK_S], dtype=tl.float64)
        for i in range(0, TILES):  # in image order: deterministic
            stats = stat_ptr + i * 3 * G + offs_s
            mean += tl.load(stats, mask=s_ok, other=0.0)
            var += tl.load(stats + G, mask=s_ok, other=0.0)
        count = tl.zeros([BLOCK_S], dtype=tl.float64) + IMAGE_PIXELS * WIDTH  # elements per statistic
        _update_running(running, offs_s, s_ok, mean / TILES, var / TILES * count / tl.maximum(count - 1.0, 1.0),
                        MOMENTUM)
    else:
        img = tl.program_id(2).to(tl.int64)
        n = tl.zeros([BLOCK_S], dtype=tl.float64)
        mean = tl.zeros([BLOCK_S], dtype=tl.float64)
        m2 = tl.zeros([BLOCK_S], dtype=tl.float64)
        if STAGE == 2:
            rows, width, row_width = TILES, 1, G
            base = partial_ptr + img * TILES * 3 * G
            first = 0
        else:
            rows, width, row_width = TILES, WIDTH, C
            base = parts_ptr if ROW_PARTS else parts_ptr + img * TILES * 3 * C
            first = tl.program_id(1) * TILES_PER_SPLIT if STAGE == 1 else 0
        last = tl.minimum(first + TILES_PER_SPLIT, rows) if STAGE == 1 else rows
        for t0 in range(first, last, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            row = offs_t.to(tl.int64)
            ok = offs_t < last
            if ROW_PARTS and STAGE != 2:
                group = tl.cdiv(img * IMAGE_PIXELS, _STATS_ROWS) + offs_t - 1
                row = tl.where(offs_t == 0, GROUP_ROWS + img, group)
                ok &= (offs_t == 0) | (group < tl.cdiv((img + 1) * IMAGE_PIXELS, _STATS_ROWS))
            mask = ok[:, None] & s_ok[None, :]
            for w in range(0, width):
                at = row[:, None] * 3 * row_width + (offs_s * width + w)[None, :]
                part_n = tl.load(base + at, mask=mask, other=0.0).to(tl.float64)
                part_mean = tl.load(base + at + row_width, mask=mask, other=0.0).to(tl.float64)
                part_m2 = tl.load(base + at + 2 * row_width, mask=mask, other=0.0).to(tl.float64)
                block_n = tl.sum(part_n, axis=0)
                block_mean = tl.sum(part_n * part_mean, axis=0) / tl.where(block_n > 0, block_n, 1.0)
                deviation = tl.where(mask, part_mean - block_mean[None, :], 0.0)
                block_m2 = tl.sum(part_m2 + part_n * deviation * deviation, axis=0)
                n, mean, m2 = _merged(n, mean, m2, block_n, block_mean, block_m2)
        if STAGE == 1:
            out = partial_ptr + (img * tl.num_programs(1) + tl.program_id(1)) * 3 * G + offs_s
            tl.store(out, n, mask=s_ok)
            tl.store(out + G, mean, mask=s_ok)
            tl.store(out + 2 * G, m2, mask=s_ok)
        else:
            var = m2 / tl.where(n > 0, n, 1.0)
            invstd = 1.0 / tl.sqrt(var + EPS)
            stats = stat_ptr + img * 3 * G + offs_s
            tl.store(stats, mean, mask=s_ok)
            tl.store(stats + G, var, mask=s_ok)
            tl.store(stats + 2 * G, invstd, mask=s_ok)
            if RUNNING:  # a batch norm's (one image row): in the same launch
                _update_running(running, offs_s, s_ok, mean, m2 / tl.maximum(n - 1.0, 1.0), MOMENTUM)
            gamma_ptr, beta_ptr = affine
            scale_ptr, shift_ptr = norm
            for w in range(0, WIDTH):
                channel = offs_s * WIDTH + w
                gamma = tl.load(gamma_ptr + channel, mask=s_ok, other=0.0).to(tl.float64)
                beta = tl.load(beta_ptr + channel, mask=s_ok, other=0.0).to(tl.float64)
                scale = gamma * invstd
                tl.store(scale_ptr + img * C + channel, scale.to(tl.float32), mask=s_ok)
                tl.store(shift_ptr + img * C + channel, (beta - mean * scale).to(tl.float32), mask=s_ok)


def norm_statistics_output(parts, groups, images=None):
    """(scale, shift) fp32 [N, C] and the statistics fp64 [N, 3 (mean, biased var, 1 / std), groups]."""
    batch = images[0] if images is not None else parts.shape[0]
    scale = torch.empty((batch, parts.shape[-1]), device=parts.device, dtype=torch.float32)
    return scale, torch.empty_like(scale), torch.empty((batch, 3, groups), device=parts.device, dtype=torch.float64)


def norm_statistics(parts, groups, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.0, images=None):
    """A norm's (scale, shift) fp32 [N, C] and statistics fp64 [N, 3 (mean, biased variance, 1 / sqrt(var + eps)),
    groups] from per-tile ``parts`` [N, tiles, 3 (count, mean, M2), C] (a batch norm's: N = 1), each statistic
    over ``C / groups`` adjacent channels of every tile of its image, or from a conv epilogue's per-image workspace
    [rows, 3, C] (kernels.conv.conv2d_stats_forward's with ``per_image``); ``gamma``, ``beta`` [C]; ``images``
    (N, pixels per image): the images of a per-image norm (the workspace needs them). ``running_mean`` /
    ``running_var`` ([groups], contiguous) are updated in place, ``momentum`` the weight of this batch (the variance
    unbiased): a batch norm's in the same launch, an instance norm's (``images`` given, groups = C) by one more
    launch averaging its images' statistics. Over TILES_PER_SPLIT tiles, two launches (split, then combine): the
    result does not depend on the config."""
    c, row_parts = parts.shape[-1], parts.dim() == 3
    if row_parts and images is None:
        raise ValueError("a conv epilogue's per-image workspace [rows, 3, C] needs images=(N, pixels per image)")
    batch, image_pixels = images if images is not None else (parts.shape[0], 0)
    if row_parts:
        tiles, group_rows = triton.cdiv(image_pixels, STATS_ROWS) + 1, parts.shape[0] - batch
    else:
        tiles, group_rows = parts.shape[1], 0
    scale, shift, stats = norm_statistics_output(parts, groups, images)
    running = (running_mean, running_var) if running_mean is not None or running_var is not None else None
    if running is not None:
        _check_running(running, batch, groups, c, images)
    if not (batch and c):
        return scale, shift, stats
    splits = triton.cdiv(tiles, TILES_PER_SPLIT)
    partial = torch.empty((batch, splits, 3, groups), device=parts.device, dtype=torch.float64) if splits > 1 \
        else stats
    common = dict(parts_ptr=parts.contiguous(), partial_ptr=partial, affine=(gamma, beta), norm=(scale, shift),
                  stat_ptr=stats, running=running or (gamma, beta), C=c, G=groups, WIDTH=c // groups,
                  TILES_PER_SPLIT=TILES_PER_SPLIT, IMAGE_PIXELS=image_pixels, GROUP_ROWS=group_rows,
                  EPS=float(eps), MOMENTUM=float(momentum), ROW_PARTS=row_parts)

    def grid(split_programs, images):
        return lambda meta: (triton.cdiv(groups, meta["BLOCK_S"]), split_programs, images)

    if splits > 1:
        NORM_STATISTICS.launch(norm_statistics_kernel, grid(splits, batch), TILES=tiles, STAGE=1, RUNNING=False,
                               **common)
    per_image_running = running is not None and images is not None
    NORM_STATISTICS.launch(norm_statistics_kernel, grid(1, batch), TILES=splits if splits > 1 else tiles,
                           STAGE=2 if splits > 1 else 0, RUNNING=running is not None and not per_image_running,
                           **common)
    if per_image_running:  # after every image's statistics exist
        NORM_STATISTICS.launch(norm_statistics_kernel, grid(1, 1), TILES=batch, STAGE=3, RUNNING=True, **common)
    return scale, shift, stats


def _check_running(running, batch, groups, channels, images):
    """Running statistics the kernel may update in place: a batch norm's (one row of statistics) or an instance
    norm's (``images`` given, one statistic per channel), both given, contiguous floating [groups] tensors."""
    if images is None and batch != 1:
        raise ValueError(f"a batch norm's running statistics need one row of statistics, got {batch}")
    if images is not None and groups != channels:
        raise ValueError(f"running statistics of a per-image norm are an instance norm's: groups must be the "
                         f"{channels} channels, got {groups}")
    for name, t in zip(("running_mean", "running_var"), running):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if tuple(t.shape) != (groups,) or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous tensor of shape [{groups}] (one per channel), got "
                             f"{tuple(t.shape)}{'' if t.is_contiguous() else ' (not contiguous)'}")


@triton.autotune(configs=configs(NORM_STATISTICS_BACKWARD.name), key=NORM_STATISTICS_BACKWARD.autotune_key)
@triton.jit
def norm_statistics_backward_kernel(
    grad,  # (dL/dscale, dL/dshift) fp32 [N, C]
    stat_ptr,  # fp64 [N, 3 (mean, biased var, 1 / sqrt(var + eps)), G]: norm_statistics' statistics
    gamma_ptr,  # the norm's weight [C]
    coefficients,  # (a, b) fp32 [N, C] out: dL/dy through the statistics is a * y + b
    affine_grad,  # (dL/dgamma, dL/dbeta) [C] out, in gamma's dtype
    N, C, G, WIDTH, COUNT,  # images, channels, statistics per image, channels per statistic, elements per statistic
    BLOCK_S: tl.constexpr,  # statistics per program
):
    """Parameters: specs.NORM_STATISTICS_BACKWARD. The backward of scale = gamma * invstd, shift = beta - mean *
    scale, in float64: per statistic the coefficients of its y's gradient (dL/dvar, dL/dmean as a * y + b), per
    channel dL/dgamma, dL/dbeta summed over the images in order (deterministic)."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = offs_s < G
    grad_scale_ptr, grad_shift_ptr = grad
    a_ptr, b_ptr = coefficients
    for n in range(0, N):
        mean = tl.load(stat_ptr + n * 3 * G + offs_s, mask=s_ok, other=0.0)
        invstd = tl.load(stat_ptr + n * 3 * G + 2 * G + offs_s, mask=s_ok, other=0.0)
        total_scale = tl.zeros([BLOCK_S], dtype=tl.float64)  # sum over the statistic's channels of gamma * dL/dscale'
        total_shift = tl.zeros([BLOCK_S], dtype=tl.float64)
        for w in range(0, WIDTH):
            channel = offs_s * WIDTH + w
            gamma = tl.load(gamma_ptr + channel, mask=s_ok, other=0.0).to(tl.float64)
            grad_scale = tl.load(grad_scale_ptr + n * C + channel, mask=s_ok, other=0.0).to(tl.float64)
            grad_shift = tl.load(grad_shift_ptr + n * C + channel, mask=s_ok, other=0.0).to(tl.float64)
            total_scale += (grad_scale - mean * grad_shift) * gamma  # scale also enters shift
            total_shift += gamma * grad_shift
        a = -total_scale * invstd * invstd * invstd / COUNT  # 2 dL/dvar / count
        b = -total_shift * invstd / COUNT - a * mean  # dL/dmean / count - a * mean
        for w in range(0, WIDTH):
            channel = offs_s * WIDTH + w
            tl.store(a_ptr + n * C + channel, a.to(tl.float32), mask=s_ok)
            tl.store(b_ptr + n * C + channel, b.to(tl.float32), mask=s_ok)
    gamma_grad_ptr, beta_grad_ptr = affine_grad
    for w in range(0, WIDTH):
        channel = offs_s * WIDTH + w
        gamma_grad = tl.zeros([BLOCK_S], dtype=tl.float64)
        beta_grad = tl.zeros([BLOCK_S], dtype=tl.float64)
        for n in range(0, N):
            mean = tl.load(stat_ptr + n * 3 * G + offs_s, mask=s_ok, other=0.0)
            invstd = tl.load(stat_ptr + n * 3 * G + 2 * G + offs_s, mask=s_ok, other=0.0)
            grad_scale = tl.load(grad_scale_ptr + n * C + channel, mask=s_ok, other=0.0).to(tl.float64)
            grad_shift = tl.load(grad_shift_ptr + n * C + channel, mask=s_ok, other=0.0).to(tl.float64)
            gamma_grad += (grad_scale - mean * grad_shift) * invstd
            beta_grad += grad_shift
        tl.store(gamma_grad_ptr + channel, gamma_grad.to(gamma_grad_ptr.dtype.element_ty), mask=s_ok)
        tl.store(beta_grad_ptr + channel, beta_grad.to(beta_grad_ptr.dtype.element_ty), mask=s_ok)


def norm_statistics_backward_output(stats, gamma):
    a = torch.empty((stats.shape[0], gamma.shape[0]), device=gamma.device, dtype=torch.float32)
    return a, torch.empty_like(a), torch.empty_like(gamma), torch.empty_like(gamma)


def norm_statistics_backward(grad_scale, grad_shift, stats, gamma, count):
    """(a, b) fp32 [N, C] — dL/dy through a norm's statistics is ``a * y + b`` — and (dL/dgamma, dL/dbeta) [C]
    from dL/dscale, dL/dshift ([N, C], or [C] for a batch norm), ``norm_statistics``' ``stats`` [N, 3, groups],
    gamma [C] and ``count`` elements per statistic."""
    batch, _, groups = stats.shape
    c = gamma.shape[0]
    a, b, gamma_grad, beta_grad = norm_statistics_backward_output(stats, gamma)
    if batch and c:
        NORM_STATISTICS_BACKWARD.launch(
            norm_statistics_backward_kernel, lambda meta: (triton.cdiv(groups, meta["BLOCK_S"]),),
            grad=tuple(t.reshape(batch, c).float().contiguous() for t in (grad_scale, grad_shift)),
            stat_ptr=stats.contiguous(), gamma_ptr=gamma.contiguous(), coefficients=(a, b),
            affine_grad=(gamma_grad, beta_grad), N=batch, C=c, G=groups, WIDTH=c // groups, COUNT=int(count))
    return a, b, gamma_grad, beta_grad


@triton.jit
def _at(strides, img, h, w, offs_c):
    """The [pixels, channels] element offsets of a pixel_channel_tile in a tensor of (n, c, h, w) ``strides``."""
    sn, sc, sh, sw = strides
    return (img * sn + h * sh + w * sw)[:, None] + offs_c[None, :] * sc


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
    pid_p, offs_p, offs_c, c_ok, mask, img, h, w = pixel_channel_tile(PIXELS, C, H, W, BLOCK_P, BLOCK_C)
    img += tl.program_id(2)
    v = tl.load(y_ptr + _at(y_strides, img, h, w, offs_c), mask=mask, other=0.0).to(tl.float32)
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


@triton.jit
def _norm_tile(norm, img, offs_c, c_ok, mask, C, NEG_SLOPE, PER_SAMPLE: tl.constexpr, ACT: tl.constexpr):
    """A pending norm's (scale, shift) for a pixel_channel_tile: [BLOCK_P, BLOCK_C] per (image, channel), or
    [1, BLOCK_C] per channel; and its activation's negative slope (a PReLU's [1, BLOCK_C] row, else NEG_SLOPE)."""
    scale_ptr, shift_ptr, slope_ptr = norm
    if PER_SAMPLE:  # one return: the compiler refuses returns of two shapes, even under a constexpr branch
        at = img[:, None] * C + offs_c[None, :]
        scale = tl.load(scale_ptr + at, mask=mask, other=0.0)
        shift = tl.load(shift_ptr + at, mask=mask, other=0.0)
    else:
        scale = tl.load(scale_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
        shift = tl.load(shift_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
    return scale, shift, slope_of(slope_ptr, offs_c[None, :], c_ok[None, :], NEG_SLOPE, ACT)


@triton.autotune(configs=configs(PENDING_NORM.name), key=PENDING_NORM.autotune_key)
@triton.jit
def pending_norm_kernel(
    y_ptr,  # the pre-norm y [N, C, H, W], any strides
    norm,  # (scale, shift, PReLU slopes [C]) fp32: per channel [C], or per (image, channel) [N, C] (PER_SAMPLE)
    res_ptr,  # RESIDUAL: a tensor of y's shape (any strides) added after the norm's activation (RES_NORM: pre-norm)
    res_norm,  # RES_NORM: the residual's pending norm, as ``norm`` (a projection's: read, never stored)
    out_ptr,  # out_act(act(y * scale + shift) + residual) in y's dtype
    PIXELS, C, H, W,  # N * H * W (H * W with PER_SAMPLE: the grid's third axis walks the images), and y's shape
    NEG_SLOPE, RES_NEG_SLOPE, OUT_NEG_SLOPE,  # ACT's, RES_ACT's and OUT_ACT's leaky-ReLU slopes (a PRELU's: tables)
    y_strides, res_strides, out_strides,  # (n, c, h, w) strides
    ACT: tl.constexpr,  # the norm's activation (codes.Act)
    OUT_ACT: tl.constexpr,  # the activation after the residual add (codes.Act)
    PER_SAMPLE: tl.constexpr,  # instance / group norm: scale and shift per (image, channel)
    RESIDUAL: tl.constexpr,  # add res_ptr (a ResNet block's skip) before OUT_ACT
    RES_NORM: tl.constexpr,  # the residual is a pending norm's y: res_norm and RES_ACT applied as it is read
    RES_ACT: tl.constexpr,  # RES_NORM: the residual norm's activation (codes.Act)
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,  # pixels x channels per program
):
    """Parameters: specs.PENDING_NORM. A pending norm made a tensor (for a consumer that is not a fused kernel, or a
    residual block's end): one read of y (and the residual), one write, the arithmetic in fp32, rounded once."""
    pid_p, offs_p, offs_c, c_ok, mask, img, h, w = pixel_channel_tile(PIXELS, C, H, W, BLOCK_P, BLOCK_C)
    if PER_SAMPLE:
        img += tl.program_id(2)
    scale, shift, slope = _norm_tile(norm, img, offs_c, c_ok, mask, C, NEG_SLOPE, PER_SAMPLE, ACT)
    y = tl.load(y_ptr + _at(y_strides, img, h, w, offs_c), mask=mask, other=0.0)
    v = apply_activation(y.to(tl.float32) * scale + shift, slope, ACT)
    if RESIDUAL:
        r = tl.load(res_ptr + _at(res_strides, img, h, w, offs_c), mask=mask, other=0.0).to(tl.float32)
        if RES_NORM:
            r_scale, r_shift, r_slope = _norm_tile(res_norm, img, offs_c, c_ok, mask, C, RES_NEG_SLOPE, PER_SAMPLE,
                                                   RES_ACT)
            r = apply_activation(r * r_scale + r_shift, r_slope, RES_ACT)
        v += r
    v = apply_activation(v, OUT_NEG_SLOPE, OUT_ACT)
    tl.store(out_ptr + _at(out_strides, img, h, w, offs_c), v.to(out_ptr.dtype.element_ty), mask=mask)


def pending_norm_output(y):
    # y's layout where it is dense (a fused conv's output: channels_last), as eager's norm keeps it; a channels_last y
    # gets canonical strides (a size-1 dim's stride is arbitrary: autograd's view of y may differ from y there).
    channels_last = y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    return torch.empty_like(y, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def _pixels(y, per_image):
    """(images, pixels) a pixel_channel_tile grid walks: per image (its third axis) or the whole batch at once."""
    batch, _, h, w = y.shape
    return (batch, h * w) if per_image else (1, batch * h * w)


def _residual_norm(residual, res_scale, res_shift, res_activation, res_negative_slope, res_slope):
    """The residual's pending norm (scale, shift, activation, negative slope, PReLU slopes), or None for a residual
    tensor (or none)."""
    if res_scale is None:
        return None
    if residual is None:
        raise ValueError("res_scale needs a residual: it is the residual's pending norm")
    return res_scale, res_shift, res_activation, res_negative_slope, res_slope


def pending_norm(y, scale, shift, activation=None, negative_slope=0.0, residual=None, out_activation=None,
                 out_negative_slope=0.0, slope=None, res_scale=None, res_shift=None, res_activation=None,
                 res_negative_slope=0.0, res_slope=None):
    """``out_act(act(y * scale + shift) + residual)`` (y's dtype and dense layout) of a pre-norm y (any strides) and its
    norm's fp32 (scale, shift) ([C], or [N, C] for instance / group norm); ``residual`` (optional, y's shape and
    dtype, any strides); ``slope`` [C]: a PReLU's (``activation`` "prelu"). With ``res_scale``, ``res_shift`` (and
    ``res_activation``, ``res_negative_slope``, ``res_slope`` as the norm's) the residual is a pending norm's
    pre-norm y (a ResNet projection's), normalised as it is read."""
    if out_activation is not None and residual is None:
        raise ValueError(f"out_activation {out_activation!r} needs a residual: it applies after the add")
    res_norm = _residual_norm(residual, res_scale, res_shift, res_activation, res_negative_slope, res_slope)
    res_scale, res_shift, res_activation, res_negative_slope, res_slope = res_norm or (scale, shift, None, 0.0, None)
    batch, c, h, w = y.shape
    out = pending_norm_output(y)
    per_image = per_sample((scale,)) or per_sample((res_scale,))
    images, pixels = _pixels(y, per_image)
    if pixels and batch:
        PENDING_NORM.launch(
            pending_norm_kernel, lambda meta: (*pixel_channel_grid(pixels, c)(meta), images), y_ptr=y,
            norm=norm_table((scale, shift, slope), batch, per_image), res_ptr=residual if residual is not None else y,
            res_norm=norm_table((res_scale, res_shift, res_slope), batch, per_image), out_ptr=out, PIXELS=pixels,
            C=c, H=h, W=w, NEG_SLOPE=float(negative_slope), RES_NEG_SLOPE=float(res_negative_slope),
            OUT_NEG_SLOPE=float(out_negative_slope), y_strides=y.stride(), res_strides=strides_of(residual),
            out_strides=out.stride(), ACT=act_code(activation), OUT_ACT=act_code(out_activation),
            PER_SAMPLE=per_image, RESIDUAL=residual is not None, RES_NORM=res_norm is not None,
            RES_ACT=act_code(res_activation))
    return out


@triton.jit
def _norm_act_grad(g, y, scale, shift, slope, mask, c_ok, row, C, ACT: tl.constexpr):
    """dL/dy of z = act(y * scale + shift) from dL/dz ``g`` (fp32 tiles), writing the tile's partial sums of
    act'(u) g y (-> dL/dscale) and act'(u) g (-> dL/dshift) at ``row`` and ``row + C``, and for a PReLU of g u where
    u < 0 (-> dL/dslope, torch's rule) at ``row + 2 * C``."""
    u = y * scale + shift
    if ACT == ACT_PRELU:
        tl.store(row + 2 * C, tl.sum(tl.where(mask & (u < 0.0), g * u, 0.0), axis=0), mask=c_ok)
    g = tl.where(mask, activation_input_grad(g, u, slope, ACT), 0.0)
    tl.store(row, tl.sum(g * y, axis=0), mask=c_ok)
    tl.store(row + C, tl.sum(g, axis=0), mask=c_ok)
    return g * scale


@triton.autotune(configs=configs(BATCH_NORM_ACT_BACKWARD.name), key=BATCH_NORM_ACT_BACKWARD.autotune_key)
@triton.jit
def batch_norm_act_backward_kernel(
    g_ptr,  # dL/dout of out = out_act(act(y * scale + shift) (+ residual)) [N, C, H, W]
    y_ptr,  # the pre-norm y
    norm,  # (scale, shift, PReLU slopes [C]) fp32: per channel [C], or per (image, channel) [N, C] (PER_SAMPLE)
    res_ptr,  # RES_NORM: the residual's pre-norm y (its gradient goes through its norm)
    res_norm,  # RES_NORM: the residual's pending norm, as ``norm``
    out_ptr,  # RESIDUAL and an OUT_ACT: the forward's output (its sign gives the ReLU's / LeakyReLU's gradient)
    dy_ptr,  # dL/dy
    dres_ptr,  # RESIDUAL: dL/dresidual (RES_NORM: dL/d of the residual's pre-norm y)
    partial_ptr,  # fp32 [programs along pixels (per image: PER_SAMPLE), 3, C]: dL/dscale, dL/dshift, dL/dslope sums
    res_partial_ptr,  # RES_NORM: the residual norm's, as partial_ptr
    PIXELS, C, H, W,  # N * H * W (H * W with PER_SAMPLE: the grid's third axis walks the images), and y's shape
    NEG_SLOPE, RES_NEG_SLOPE, OUT_NEG_SLOPE,  # ACT's, RES_ACT's and OUT_ACT's leaky-ReLU slopes (a PRELU's: tables)
    g_strides, y_strides, res_strides, out_strides, dy_strides, dres_strides,  # (n, c, h, w) strides
    ACT: tl.constexpr,  # the norm's activation (codes.Act)
    OUT_ACT: tl.constexpr,  # RESIDUAL: the activation after the add (codes.EPILOGUE_ACTIVATIONS), else NONE
    PER_SAMPLE: tl.constexpr,  # instance / group norm: scale, shift and the partial sums per (image, channel)
    RESIDUAL: tl.constexpr,  # a residual was added before OUT_ACT
    RES_NORM: tl.constexpr,  # the residual was a pending norm's y, normalised as it was read
    RES_ACT: tl.constexpr,  # RES_NORM: the residual norm's activation (codes.Act)
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,  # pixels x channels per program
):
    """Parameters: specs.BATCH_NORM_ACT_BACKWARD. With u = y * scale + shift, out = out_act(act(u) + residual) and
    g = dL/dout: dresidual = out_act'(out) g (the sign of out: a ReLU / LeakyReLU), dy = act'(u) dresidual scale,
    and per program the partial sums of act'(u) dresidual y (-> dL/dscale), act'(u) dresidual (-> dL/dshift) and
    for a PReLU dresidual u where u < 0 (-> dL/dslope) into its own workspace row (no atomics); a pending residual's
    the same through its own norm. Nothing of the forward is saved but y (the residual's y) and its output: not the
    residual, not the sum."""
    pid_p, offs_p, offs_c, c_ok, mask, img, h, w = pixel_channel_tile(PIXELS, C, H, W, BLOCK_P, BLOCK_C)
    if PER_SAMPLE:
        img += tl.program_id(2)
        pid_p += tl.program_id(2) * tl.num_programs(0)
    row = pid_p.to(tl.int64) * 3 * C + offs_c
    g = tl.load(g_ptr + _at(g_strides, img, h, w, offs_c), mask=mask, other=0.0).to(tl.float32)
    if RESIDUAL:
        if OUT_ACT != ACT_NONE:
            out = tl.load(out_ptr + _at(out_strides, img, h, w, offs_c), mask=mask, other=0.0)
            g = activation_grad(g, out.to(tl.float32), OUT_NEG_SLOPE, OUT_ACT)
        dres = g
        if RES_NORM:
            r_scale, r_shift, r_slope = _norm_tile(res_norm, img, offs_c, c_ok, mask, C, RES_NEG_SLOPE, PER_SAMPLE,
                                                   RES_ACT)
            y_res = tl.load(res_ptr + _at(res_strides, img, h, w, offs_c), mask=mask, other=0.0).to(tl.float32)
            dres = _norm_act_grad(g, y_res, r_scale, r_shift, r_slope, mask, c_ok, res_partial_ptr + row, C, RES_ACT)
        tl.store(dres_ptr + _at(dres_strides, img, h, w, offs_c), dres.to(dres_ptr.dtype.element_ty), mask=mask)
    scale, shift, slope = _norm_tile(norm, img, offs_c, c_ok, mask, C, NEG_SLOPE, PER_SAMPLE, ACT)
    y = tl.load(y_ptr + _at(y_strides, img, h, w, offs_c), mask=mask, other=0.0).to(tl.float32)
    dy = _norm_act_grad(g, y, scale, shift, slope, mask, c_ok, partial_ptr + row, C, ACT)
    tl.store(dy_ptr + _at(dy_strides, img, h, w, offs_c), dy.to(dy_ptr.dtype.element_ty), mask=mask)


def batch_norm_act_input_grad_output(grad, scale, activation=None):
    """(dL/dy, dL/dscale, dL/dshift, dL/dslope): the last [C] for a PReLU, else empty."""
    dy = torch.empty(grad.shape, device=grad.device, dtype=grad.dtype, memory_format=torch.channels_last)
    slopes = scale.shape[-1] if activation == "prelu" else 0
    return dy, torch.empty_like(scale), torch.empty_like(scale), scale.new_empty(slopes)


def _no_grads(scale):
    """The residual norm's three gradients where there is none: empty, distinct (a custom op's outputs never alias)."""
    return tuple(scale.new_empty(0) for _ in range(3))


def residual_norm_act_input_grad_output(grad, scale, activation=None, res_scale=None, res_activation=None):
    """(dL/dy, dL/dresidual, dL/dscale, dL/dshift, dL/dslope, and the residual norm's dL/dscale, dL/dshift,
    dL/dslope: empty without ``res_scale``)."""
    dy, grad_scale, grad_shift, grad_slope = batch_norm_act_input_grad_output(grad, scale, activation)
    res_grads = batch_norm_act_input_grad_output(grad, res_scale, res_activation)[1:] if res_scale is not None else \
        _no_grads(scale)
    return dy, torch.empty_like(dy), grad_scale, grad_shift, grad_slope, *res_grads


def batch_norm_act_input_grad(grad, y, scale, shift, activation=None, negative_slope=0.0, slope=None):
    """(dL/dy, dL/dscale, dL/dshift, dL/dslope) for z = act(y * scale + shift) read by a consumer, from dL/dz
    ``grad`` (any strides). dL/dscale and dL/dshift are fp32, shaped like ``scale`` ([C], or [N, C] for instance /
    group norm), summed over per-tile partials in a fixed order; dL/dslope fp32 [C] of a PReLU's ``slope`` [C]
    (empty for other activations)."""
    dy = batch_norm_act_input_grad_output(grad, scale)[0]
    return (dy, *_norm_act_backward(grad, y, (scale, shift, activation, negative_slope, slope), dy)[0])


def residual_norm_act_input_grad(grad, y, scale, shift, out=None, activation=None, negative_slope=0.0,
                                 out_activation=None, out_negative_slope=0.0, slope=None, residual=None,
                                 res_scale=None, res_shift=None, res_activation=None, res_negative_slope=0.0,
                                 res_slope=None):
    """(dL/dy, dL/dresidual, dL/dscale, dL/dshift, dL/dslope, then the residual norm's dL/dscale, dL/dshift,
    dL/dslope) of ``pending_norm``'s out = out_act(act(y * scale + shift) + residual) from dL/dout ``grad`` (any
    strides); ``out`` (needed with an ``out_activation``: ReLU / LeakyReLU) gives that activation's gradient by its
    sign. With ``res_scale`` the residual was a pending norm's pre-norm y (``residual``, read again), its gradient
    dL/d that y and its norm's sums as the main norm's (empty without one). The residual's gradient has y's dtype."""
    dy, dres = residual_norm_act_input_grad_output(grad, scale)[:2]
    main, res = _norm_act_backward(
        grad, y, (scale, shift, activation, negative_slope, slope), dy, out=out, dres=dres,
        out_activation=out_activation, out_negative_slope=out_negative_slope, residual=residual,
        res_norm=_residual_norm(residual, res_scale, res_shift, res_activation, res_negative_slope, res_slope))
    return (dy, dres, *main, *(res or _no_grads(scale)))


def _norm_grad_sums(partial, scale, activation):
    """(dL/dscale, dL/dshift, dL/dslope) of a norm from its backward's partial sums [images, tiles, 3, C] (the
    images of a per-image grid, else one): summed over the tiles of each image for a per-sample ``scale``, else over
    every tile; a PReLU's slopes over every tile (empty for other activations)."""
    dims = 1 if per_sample((scale,)) else (0, 1)
    grad_slope = partial[..., 2, :].sum((0, 1)) if activation == "prelu" else scale.new_empty(0)
    return partial[..., 0, :].sum(dims), partial[..., 1, :].sum(dims), grad_slope


def _norm_act_backward(grad, y, norm, dy, out=None, dres=None, out_activation=None, out_negative_slope=0.0,
                       residual=None, res_norm=None):
    """((dL/dscale, dL/dshift, dL/dslope) of ``norm`` = (scale, shift, activation, negative_slope, slopes), the same
    of ``res_norm`` or None), writing dy and, given ``dres``, the residual's gradient (``out``: the forward's output,
    read for ``out_activation``'s gradient; with ``res_norm``, ``residual`` is its pre-norm y)."""
    batch, c, h, w = y.shape
    scale, shift, activation, negative_slope, slope = norm
    res_scale, res_shift, res_activation, res_negative_slope, res_slope = res_norm or (scale, shift, None, 0.0, None)
    # Per sample, the tiles walk one image each (the grid's third axis): their sums are per (image, channel).
    per_image = per_sample((scale,)) or per_sample((res_scale,))
    images, pixels = _pixels(y, per_image)
    block_p = configs(BATCH_NORM_ACT_BACKWARD.name)[0].kwargs["BLOCK_P"]
    tiles = max(1, triton.cdiv(pixels, block_p))
    # Every program writes its rows (no zero fill), unless there is nothing to launch: then the sums are zeros.
    partials = [(torch.empty if pixels and batch else torch.zeros)((images, tiles, 3, c), device=y.device,
                                                                   dtype=torch.float32)
                for _ in range(2 if res_norm is not None else 1)]
    if pixels and batch:
        BATCH_NORM_ACT_BACKWARD.launch(
            batch_norm_act_backward_kernel, lambda meta: (*pixel_channel_grid(pixels, c)(meta), images), g_ptr=grad,
            y_ptr=y, norm=norm_table((scale, shift, slope), batch, per_image),
            res_ptr=residual if res_norm is not None else y,
            res_norm=norm_table((res_scale, res_shift, res_slope), batch, per_image),
            out_ptr=out if out is not None else y, dy_ptr=dy, dres_ptr=dres if dres is not None else dy,
            partial_ptr=partials[0], res_partial_ptr=partials[-1], PIXELS=pixels, C=c, H=h, W=w,
            NEG_SLOPE=float(negative_slope), RES_NEG_SLOPE=float(res_negative_slope),
            OUT_NEG_SLOPE=float(out_negative_slope), g_strides=grad.stride(), y_strides=y.stride(),
            res_strides=strides_of(residual if res_norm is not None else None), out_strides=strides_of(out),
            dy_strides=dy.stride(), dres_strides=strides_of(dres), ACT=act_code(activation),
            OUT_ACT=act_code(out_activation), PER_SAMPLE=per_image, RESIDUAL=dres is not None,
            RES_NORM=res_norm is not None, RES_ACT=act_code(res_activation))
    main = _norm_grad_sums(partials[0], scale, activation)
    return main, (_norm_grad_sums(partials[1], res_scale, res_activation) if res_norm is not None else None)
