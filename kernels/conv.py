"""Implicit-GEMM convolution kernels and their launchers.

``conv2d_implicit_gemm_kernel`` (the forward family, and the input-grad, which is a forward conv of the prepared
output gradient with flipped weights) computes, for every output pixel p and GEMM column n,
    y[p, n] = act(bias[n] + sum_{tap, k} src[p * STRIDE + tap - PAD, k] * w[n, tap, k])
``src`` is one tensor, or two read as one virtual channel concatenation (TWO_SOURCES), the first optionally
up-sampled x2 on the fly (UP_MODE) and placed at an offset (zero padding around it), each optionally a conv's
pre-norm output whose batch norm + activation are applied as it is read (NORM_INPUT, NORM_INPUT2, IN_ACT).
The epilogue adds bias and activation (ACT), writes batch statistics (STATS), pools 2x2 windows (FUSE_POOL:
each window is four neighbouring GEMM rows), or stores the columns (phase, channel) of a 2x2/s2 transposed conv
depth-to-space (PHASES).

``conv2d_weight_grad_kernel`` computes dw[m, tap, n] = sum_p a[p, m] * b[p * STRIDE + tap - PAD, n] over a
split of the pixels into a workspace, reduced afterwards in a fixed order (deterministic).

Main loops hold loads and MMAs only (``fused-unet doctor`` reads their SASS): a flat (tap, channel block) loop
with incremental counters (no division), per-row tap validity as bit masks computed once, the channel offset a
provable multiple of BLOCK_K (EVEN_K: no channel mask) so 16-bit tiles load as 128-bit cp.async, and the
activation / pool backward applied once, before the GEMMs, by ``fused_unet.kernels.grad``.
"""
import functools

import torch
import triton
import triton.language as tl

from .checks import concat_grid, conv_output_shape
from .codes import Statistics, UpMode, act_code, image_statistics_fit
from .common import (NORM_GATHER, NORM_IMAGE_PAIR, STATS_IMAGE, STATS_NONE, UP_BILINEAR_ALIGN_CORNERS, UP_NEAREST,
                     UP_NONE, apply_activation, fast_div, float_one, linear_source, norm_table, norm_table_code,
                     pending_activation, per_sample, slope_of, source_placement, strides_of, take_larger)
from . import specs
from .specs import CONV2D_IMPLICIT_GEMM, CONV2D_WEIGHT_GRAD
from .configs import (FLAT_TAPS_CHANNELS, INTERPRETED, STATS_ROWS, WEIGHT_GRAD_PIXEL_CHUNK, configs, even_k,
                      pixel_bucket, prune_by_precision)

_STATS_ROWS = tl.constexpr(STATS_ROWS)
_PIXEL_CHUNK = tl.constexpr(WEIGHT_GRAD_PIXEL_CHUNK)
_DOT_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _load_normalized(ptrs, mask, scale, shift, slope, NORM: tl.constexpr, IN_ACT: tl.constexpr):
    """One load of a source tile; with NORM, the source's pending norm affine and activation (its negative
    ``slope``) applied. The affine (_norm_affine) is zero where masked, so padding reads act(0) = 0: the conv pads
    the normalised tensor."""
    v = tl.load(ptrs, mask=mask, other=0.0)
    if NORM:
        v = apply_activation(v.to(tl.float32) * scale + shift, slope, IN_ACT)
    return v


@triton.jit
def _norm_view(norm, img, first_img, C, BATCH, TABLE: tl.constexpr):
    """How a tile reads a pending norm's tables (``norm``: scale, shift and PReLU slope pointers, codes.NormTable
    TABLE): the (scale, shift) pointers, a per-row value, the offset of a second row and the slope pointer ([C]
    whatever the table). CHANNEL: the [C] table, rows 0. IMAGE_PAIR: the tables at image ``first_img`` (the
    tile's first row's), rows 1 where a row is in the next image, whose table row sits ``C`` further (0 past the
    batch: rows there are masked). GATHER: rows at img * C."""
    scale_ptr, shift_ptr, slope_ptr = norm
    if TABLE == NORM_IMAGE_PAIR:
        first = first_img.to(tl.int64) * C
        return scale_ptr + first, shift_ptr + first, img - first_img, tl.where(first_img + 1 < BATCH, C, 0), slope_ptr
    elif TABLE == NORM_GATHER:
        return scale_ptr, shift_ptr, img * C, 0, slope_ptr
    else:
        return scale_ptr, shift_ptr, img * 0, 0, slope_ptr


@triton.jit
def _norm_affine(view, one_ptr, kk, k_ok, row_ok, mask, IN_NEG_SLOPE, NORM: tl.constexpr, TABLE: tl.constexpr,
                 IN_ACT: tl.constexpr):
    """A pending norm's (scale, shift) for a tile of rows x channels ``kk`` read through ``view`` (_norm_view),
    zero outside ``mask`` (``row_ok`` x ``k_ok``, or any mask with GATHER) by masked loads the software pipeliner
    issues ahead, never by a select after the normalisation: a select on the loop's mask keeps Triton from feeding
    wgmma from registers with a group in flight. GATHER (a mask that varies along K): [M, K] tiles. Else [K] rows
    (IMAGE_PAIR: two, each row taking its image's), the shift gated per row by a 1.0 loaded under ``row_ok``
    (one_ptr): a few bytes a step where tiles would move four times the A tile's. Third, the activation's negative
    slope: a PReLU's [K] row, else IN_NEG_SLOPE. (1, 0, IN_NEG_SLOPE) without NORM."""
    slope = IN_NEG_SLOPE
    if NORM:
        scale_ptr, shift_ptr, rows, next_row, slope_ptr = view
        slope = slope_of(slope_ptr, kk[None, :], k_ok[None, :], IN_NEG_SLOPE, IN_ACT)
        if TABLE == NORM_GATHER:
            at = rows[:, None] + kk[None, :]
            scale = tl.load(scale_ptr + at, mask=mask, other=0.0)
            shift = tl.load(shift_ptr + at, mask=mask, other=0.0)
        elif TABLE == NORM_IMAGE_PAIR:
            # Each row takes its image's row through two 1.0s loaded under (row_ok, which image): exact, and, like
            # the gate below, no select or computed mask in the loop (those serialised wgmma).
            gate = tl.load(one_ptr + tl.zeros_like(rows), mask=row_ok & (rows == 0), other=0.0)[:, None]
            gate2 = tl.load(one_ptr + tl.zeros_like(rows), mask=row_ok & (rows != 0), other=0.0)[:, None]
            scale = (tl.load(scale_ptr + kk, mask=k_ok, other=0.0)[None, :] * gate
                     + tl.load(scale_ptr + next_row + kk, mask=k_ok, other=0.0)[None, :] * gate2)
            shift = (tl.load(shift_ptr + kk, mask=k_ok, other=0.0)[None, :] * gate
                     + tl.load(shift_ptr + next_row + kk, mask=k_ok, other=0.0)[None, :] * gate2)
        else:
            gate = tl.load(one_ptr + tl.zeros_like(rows), mask=row_ok, other=0.0)
            scale = tl.load(scale_ptr + kk, mask=k_ok, other=0.0)[None, :]
            shift = tl.load(shift_ptr + kk, mask=k_ok, other=0.0)[None, :] * gate[:, None]
    else:
        scale = 1.0
        shift = 0.0
    return scale, shift, slope


@triton.jit
def _source_tile(x_ptr, rows, uh, uw, ok, kk, k_ok, sc, sh, sw, H_SRC, W_SRC, SCALE_H, SCALE_W,
                 norm_view, one_ptr, IN_NEG_SLOPE, UP_MODE: tl.constexpr, NORM: tl.constexpr,
                 TABLE: tl.constexpr, IN_ACT: tl.constexpr, EVEN_K: tl.constexpr):
    """The [pixels, channels kk] tile of a source at positions (uh, uw) of its (up-sampled) grid, zero where not
    ``ok``: read as is (UP_MODE 0: ``rows`` are the pixels' offsets), or up-sampled x2 from its [H_SRC, W_SRC]
    pixels (``rows``: the images' offsets; 1 nearest, 2 bilinear, 3 bilinear with align_corners). NORM: the
    source is a conv's pre-norm output, normalised (_norm_affine) and activated (IN_ACT) as it is read.
    Up-sampled or normalised tiles are fp32."""
    if EVEN_K:
        mask = ok[:, None]
    else:
        mask = ok[:, None] & k_ok[None, :]
    chan = (kk * sc)[None, :]
    scale, shift, slope = _norm_affine(norm_view, one_ptr, kk, k_ok, ok, mask, IN_NEG_SLOPE, NORM, TABLE, IN_ACT)
    base = x_ptr + rows
    if UP_MODE == UP_NONE:
        tile = _load_normalized(base[:, None] + chan, mask, scale, shift, slope, NORM, IN_ACT)
    elif UP_MODE == UP_NEAREST:
        tile = _load_normalized((base + (uh >> 1) * sh + (uw >> 1) * sw)[:, None] + chan, mask, scale, shift,
                                slope, NORM, IN_ACT)
    else:
        h0, h1, lh = linear_source(uh, H_SRC, SCALE_H, UP_MODE == UP_BILINEAR_ALIGN_CORNERS)
        w0, w1, lw = linear_source(uw, W_SRC, SCALE_W, UP_MODE == UP_BILINEAR_ALIGN_CORNERS)
        # Accumulate corner by corner: one loaded tile alive at a time keeps the registers of the MMA free.
        lw = lw[:, None]
        lh = lh[:, None]
        tile = ((1.0 - lh) * (1.0 - lw)) * _load_normalized((base + h0 * sh + w0 * sw)[:, None] + chan, mask, scale,
                                                            shift, slope, NORM, IN_ACT).to(tl.float32)
        tile += ((1.0 - lh) * lw) * _load_normalized((base + h0 * sh + w1 * sw)[:, None] + chan, mask, scale, shift,
                                                     slope, NORM, IN_ACT).to(tl.float32)
        tile += (lh * (1.0 - lw)) * _load_normalized((base + h1 * sh + w0 * sw)[:, None] + chan, mask, scale, shift,
                                                     slope, NORM, IN_ACT).to(tl.float32)
        tile += (lh * lw) * _load_normalized((base + h1 * sh + w1 * sw)[:, None] + chan, mask, scale, shift,
                                             slope, NORM, IN_ACT).to(tl.float32)
    return tile


@triton.jit
def _tap_bits(first, LIMIT, TAPS: tl.constexpr):
    """Bit t set where 0 <= first + t < LIMIT: which of a row's taps fall inside the source, computed once so the
    main loop tests one bit instead of four comparisons."""
    bits = tl.zeros_like(first)
    for t in tl.static_range(TAPS):
        bits |= ((first + t >= 0) & (first + t < LIMIT)).to(tl.int32) << t
    return bits


@triton.jit
def _max_pool_rows(v, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Max and argmax (q = dy*2 + dx) over each group of four consecutive rows of a [BLOCK_M, BLOCK_N] tile."""
    v = tl.reshape(tl.permute(tl.reshape(v, (BLOCK_M // 4, 4, BLOCK_N)), (0, 2, 1)), (BLOCK_M // 4, BLOCK_N, 2, 2))
    left, right = tl.split(v)
    q0, q2 = tl.split(left)
    q1, q3 = tl.split(right)
    best, arg = take_larger(q0, tl.zeros((BLOCK_M // 4, BLOCK_N), dtype=tl.int32), q1, 1)
    best, arg = take_larger(best, arg, q2, 2)
    return take_larger(best, arg, q3, 3)


@triton.jit
def _output_pixels(offs_m, BATCH, H, W, FUSE_POOL: tl.constexpr):
    """(image, row, column, valid) of GEMM rows. With FUSE_POOL the rows walk 2x2 windows (four rows each, over
    ceil(H/2) x ceil(W/2) windows, so odd sizes keep their last row/column) instead of pixels."""
    if FUSE_POOL:
        wh = (H + 1) // 2
        ww = (W + 1) // 2
        win = offs_m // 4
        q = offs_m % 4
        ow = (win % ww) * 2 + q % 2
        oh = ((win // ww) % wh) * 2 + q // 2
        img = win // (ww * wh)
        valid = (offs_m < BATCH * wh * ww * 4) & (oh < H) & (ow < W)
    else:
        ow = offs_m % W
        oh = (offs_m // W) % H
        img = offs_m // (W * H)
        valid = offs_m < BATCH * H * W
    return img.to(tl.int64), oh, ow, valid


@triton.jit
def _accumulate_source(acc, x_ptr, strides, C, K_OFF, img, first_img, BATCH, ih0, iw0, m_valid, placement, norm,
                       one_ptr, IN_NEG_SLOPE, w_ptr, w_cols, n_valid, swt,
                       KH: tl.constexpr, KW: tl.constexpr, UP_MODE: tl.constexpr, NORM: tl.constexpr,
                       TABLE: tl.constexpr, IN_ACT: tl.constexpr, EVEN_K: tl.constexpr, FLAT_TAPS: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += the GEMM over this source's K range: taps x its C channels (weight columns K_OFF...). ih0, iw0: the
    input-grid position of tap (0, 0) of each row; ``strides``, ``placement``, ``norm``: the kernel's tuples;
    ``first_img``: the first row's image (_norm_view). FLAT_TAPS (UP_MODE 0): K runs over (tap, channel) pairs as
    one range, so a source of a few channels (an RGB image) fills the K tile instead of padding every tap to
    BLOCK_K; its norm tables are gathered (the tap mask varies along K)."""
    sxn, sxc, sxh, sxw = strides
    H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP, SCALE_H, SCALE_W = placement
    offs_k = tl.arange(0, BLOCK_K)
    # Position on the source's (up-sampled) grid, and which taps of each row land inside it.
    uh0 = ih0 - OFF_H
    uw0 = iw0 - OFF_W
    h_bits = tl.where(m_valid, _tap_bits(uh0, H_UP, KH), 0)
    w_bits = _tap_bits(uw0, W_UP, KW)
    # Pixel offsets of tap (0, 0), moved by each tap's scalar offset (UP_MODE 0); else the images' offsets. int64:
    # the input-grad reads an output gradient, whose images may pass 2^31 elements.
    rows = img * sxn
    tap_step_h = 0
    tap_step_w = 0
    if UP_MODE == UP_NONE:
        rows += uh0.to(tl.int64) * sxh + uw0.to(tl.int64) * sxw
        tap_step_h = sxh
        tap_step_w = sxw
    norm_view = _norm_view(norm, img, first_img, C, BATCH, TABLE)
    if FLAT_TAPS:
        tl.static_assert(TABLE != NORM_IMAGE_PAIR or not NORM, "FLAT_TAPS gathers a per-sample norm's tables")
        for k0 in range(0, KH * KW * C, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < KH * KW * C
            tap = kk // C
            ch = kk - tap * C
            r = tap // KW
            s = tap - r * KW
            ok = (((h_bits[:, None] >> r[None, :]) & (w_bits[:, None] >> s[None, :]) & 1) != 0) & k_ok[None, :]
            scale, shift, slope = _norm_affine(norm_view, one_ptr, ch, k_ok, m_valid, ok, IN_NEG_SLOPE, NORM,
                                               NORM_GATHER, IN_ACT)
            a = _load_normalized(x_ptr + rows[:, None] + (r * sxh + s * sxw + ch * sxc)[None, :], ok, scale, shift,
                                 slope, NORM, IN_ACT)
            b = tl.load(w_ptr + w_cols[None, :] + (tap * swt + K_OFF + ch)[:, None],
                        mask=k_ok[:, None] & n_valid[None, :], other=0.0)
            acc += tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=INPUT_PRECISION)
    else:
        # One flat loop over (tap, channel block), so the software pipeliner overlaps loads across taps; the tap
        # (r, s) and channel offset c0 advance by counters, never by division.
        c0 = 0
        r = 0
        s = 0
        for _ in range(0, KH * KW * tl.cdiv(C, BLOCK_K)):
            ok = ((h_bits >> r) & (w_bits >> s) & 1) != 0
            kk = c0 + offs_k
            k_ok = kk < C
            a = _source_tile(x_ptr, rows=rows + (r * tap_step_h + s * tap_step_w), uh=uh0 + r, uw=uw0 + s, ok=ok,
                             kk=kk, k_ok=k_ok, sc=sxc, sh=sxh, sw=sxw, H_SRC=H_SRC, W_SRC=W_SRC, SCALE_H=SCALE_H,
                             SCALE_W=SCALE_W, norm_view=norm_view, one_ptr=one_ptr, IN_NEG_SLOPE=IN_NEG_SLOPE,
                             UP_MODE=UP_MODE, NORM=NORM, TABLE=TABLE, IN_ACT=IN_ACT, EVEN_K=EVEN_K)
            w_ptrs = w_ptr + w_cols[None, :] + ((r * KW + s) * swt + K_OFF + kk)[:, None]
            if EVEN_K:
                b = tl.load(w_ptrs, mask=n_valid[None, :], other=0.0)
            else:
                b = tl.load(w_ptrs, mask=k_ok[:, None] & n_valid[None, :], other=0.0)
            acc += tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=INPUT_PRECISION)
            c0 += BLOCK_K
            next_tap = c0 >= C
            c0 = tl.where(next_tap, 0, c0)
            s = tl.where(next_tap, s + 1, s)
            next_row = s == KW
            s = tl.where(next_row, 0, s)
            r = tl.where(next_row, r + 1, r)
    return acc


@triton.jit
def _statistics_part(v, part, count):
    """(count, mean, sum of squared deviations) over axis 1 of v's elements where ``part``."""
    mean = tl.sum(tl.where(part, v, 0.0), axis=1) * (1.0 / tl.maximum(count, 1.0))[:, None]
    dev = tl.where(part, v - mean[:, None, :], 0.0)
    return count, mean, tl.sum(dev * dev, axis=1)


@triton.jit
def _store_statistics(stats_ptr, row, offs_n, mask, C_OUT, count, mean, m2):
    at = stats_ptr + row.to(tl.int64)[:, None] * 3 * C_OUT + offs_n[None, :]
    tl.store(at, tl.zeros_like(mean) + count[:, None], mask=mask)
    tl.store(at + C_OUT, mean, mask=mask)
    tl.store(at + 2 * C_OUT, m2, mask=mask)


@triton.jit
def _norm_statistics(y, stats_ptr, pid_m, offs_n, n_valid, PIXELS, IMAGE_PIXELS, C_OUT,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr, STATS: tl.constexpr):
    """Norm statistics (count, mean, sum of squared deviations per channel) of each group of ROWS GEMM rows into
    its own workspace row (codes.Statistics STATS): the groups do not depend on the tile size, so every config (and
    the autotuner's trial runs) writes the same rows; combined in a fixed order afterwards (no float atomics, same
    bits). IMAGE (images of at least ROWS pixels: a group spans at most two): a group's rows in its first image go
    to its row, those in the next image to that image's row after the groups' (kernels.norm.norm_statistics)."""
    groups: tl.constexpr = BLOCK_M // ROWS
    first = pid_m * BLOCK_M + tl.arange(0, groups) * ROWS
    end = tl.minimum(first + ROWS, PIXELS)
    boundary = end
    if STATS == STATS_IMAGE:
        image = first // IMAGE_PIXELS
        boundary = tl.minimum((image + 1) * IMAGE_PIXELS, end)
    pixel = tl.reshape(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), (groups, ROWS, 1))
    v = tl.reshape(y.to(tl.float32), (groups, ROWS, BLOCK_N))
    mask = (first < PIXELS)[:, None] & n_valid[None, :]
    count, mean, m2 = _statistics_part(v, pixel < boundary[:, None, None],
                                       tl.maximum(boundary - first, 0).to(tl.float32))
    _store_statistics(stats_ptr, first // ROWS, offs_n, mask, C_OUT, count, mean, m2)
    if STATS == STATS_IMAGE:
        # Every image's own row is written once: by the group that straddles into it, else (nothing does) zeros
        # by the group that begins at its first pixel (whose part in a next image is empty).
        tail = (pixel >= boundary[:, None, None]) & (pixel < end[:, None, None])
        count, mean, m2 = _statistics_part(v, tail, tl.maximum(end - boundary, 0).to(tl.float32))
        straddles = end > boundary
        _store_statistics(stats_ptr, tl.cdiv(PIXELS, ROWS) + image + straddles.to(tl.int32), offs_n,
                          mask & (straddles | (first % IMAGE_PIXELS == 0))[:, None], C_OUT, count, mean, m2)


# The autotune key (specs.CONV2D_IMPLICIT_GEMM) holds the shapes (pixels bucketed to powers of two) and every flag
# that changes which config is best (or allowed: configs.fits).
@triton.autotune(configs=configs(CONV2D_IMPLICIT_GEMM.name),
                 prune_configs_by={"early_config_prune": prune_by_precision(CONV2D_IMPLICIT_GEMM.name)},
                 key=CONV2D_IMPLICIT_GEMM.autotune_key)
@triton.heuristics({"EVEN_K": lambda meta: even_k(meta["BLOCK_K"], meta["C_IN"], meta["C_IN2"], meta["C_PROJ"])})
@triton.jit(do_not_specialize=CONV2D_IMPLICIT_GEMM.do_not_specialize)
def conv2d_implicit_gemm_kernel(
    x_ptr,  # first source (any strides): [N, C_IN, H_SRC, W_SRC], read through ``placement``
    x2_ptr,  # second source (TWO_SOURCES): [N, C_IN2, H_IN, W_IN], read as is, moved by x2_offsets
    w_ptr,  # weights, the GEMM's B: [C_OUT columns, KH, KW, C_IN + C_IN2], K contiguous
    bias_ptr,  # [C_OUT] (HAS_BIAS)
    y_ptr,  # output [N, C_OUT, H_OUT, W_OUT]; with PHASES [N, C_OUT / 4, 2 H_OUT, 2 W_OUT]
    pool_ptr,  # FUSE_POOL: the 2x2 max-pooled output [N, C_OUT, H_OUT // 2, W_OUT // 2]
    pool_argmax_ptr,  # FUSE_POOL: uint8 argmax (dy * 2 + dx) of each pooled element, pool_strides
    in_norm,  # (scale, shift, PReLU slopes) fp32 of x's pending norm: [C_IN] or [N, C_IN] (NORM_TABLE), slopes [C_IN]
    in2_norm,  # (scale, shift, PReLU slopes) of x2's pending norm (NORM_INPUT2), as in_norm
    one_ptr,  # a float32 1.0: loaded under each row's tap mask, it gates a per-channel pending norm's shift
    stats_ptr,  # STATS: fp32 workspace [rows of STATS_ROWS pixels (IMAGE: + N), 3 (count, mean, M2), C_OUT]
    res_ptr,  # RESIDUAL: a tensor of y's shape (any strides) added before the activation
    proj_ptr,  # PROJ: a ResNet block's input [N, C_PROJ, H_PROJ, W_PROJ] (any strides), its 1x1 conv summed in
    proj_w_ptr,  # PROJ: that conv's weights [C_OUT, C_PROJ], K contiguous, column stride proj_w_stride
    BATCH, H_OUT, W_OUT,  # the output grid the GEMM rows walk
    H_IN, W_IN,  # the conv's input grid (x2's size)
    C_IN, C_IN2, C_OUT,  # channels of x, of x2 (0 without), GEMM columns
    C_PROJ, H_PROJ, W_PROJ,  # PROJ: the block input's channels (0 without) and size
    k_offsets,  # (x's, x2's) first weight channel along K
    x2_offsets,  # (OFF_H, OFF_W) of x2 on the input grid: 0 for a skip, a transposed conv's phase offset
    PIXEL_BUCKET,  # the autotune key's pixel count: BATCH * H_OUT * W_OUT to the next power of two
    placement,  # x on the input grid: (H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP, SCALE_H, SCALE_W), source_placement
    NEG_SLOPE,  # ACT's leaky-ReLU slope
    IN_NEG_SLOPE: tl.constexpr,  # IN_ACT's leaky-ReLU slope (kernels.common.pending_activation)
    x_strides, x2_strides,  # (n, c, h, w) strides of the sources
    w_strides,  # (column, tap) strides of w_ptr
    y_strides, pool_strides,  # (n, c, h, w) strides of the outputs
    res_strides,  # (n, c, h, w) strides of res_ptr
    proj_strides,  # (n, c, h, w) strides of proj_ptr
    proj_w_stride,  # column stride of proj_w_ptr
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,  # the conv's taps
    PHASES: tl.constexpr,  # columns are (phase, channel) of a 2x2/s2 transposed conv, stored depth-to-space
    HAS_BIAS: tl.constexpr,  # add bias_ptr
    RESIDUAL: tl.constexpr,  # add res_ptr (a residual connection) before the activation
    PROJ: tl.constexpr,  # also accumulate the 1x1 conv of proj_ptr (a ResNet downsample: two GEMMs, one accumulator)
    PROJ_STRIDE: tl.constexpr,  # PROJ: that conv's stride (output pixel (h, w) reads proj_ptr at stride * (h, w))
    ACT: tl.constexpr,  # the epilogue's activation (codes.Act)
    TWO_SOURCES: tl.constexpr,  # K runs over x then x2: a virtual channel concatenation
    UP_MODE: tl.constexpr,  # how x is up-sampled onto the input grid (codes.UpMode)
    FUSE_POOL: tl.constexpr,  # rows walk 2x2 windows; also store the pooled output and argmax
    NORM_INPUT: tl.constexpr, NORM_INPUT2: tl.constexpr,  # apply x's / x2's pending norm as it is read
    NORM_TABLE: tl.constexpr,  # how the pending norms' scale and shift are read (codes.NormTable): [C] or [N, C]
    IN_ACT: tl.constexpr,  # the pending norms' activation (codes.Act)
    STATS: tl.constexpr,  # write the output's norm statistics to stats_ptr (codes.Statistics)
    EVEN_K: tl.constexpr,  # every source's channels are a multiple of BLOCK_K (no channel mask; heuristic)
    FLAT_TAPS: tl.constexpr,  # x (one source, UP_MODE 0) has few channels: K runs over (tap, channel) pairs at once
    DOT_DTYPE: tl.constexpr,  # the MMA's operand type
    INPUT_PRECISION: tl.constexpr,  # tl.dot's input_precision ("tf32" or "ieee" for fp32 operands)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # the tile (autotuned)
):
    """Parameters: specs.CONV2D_IMPLICIT_GEMM. Weight column n, tap t, channel k at w_ptr + n * swn + t * swt + k
    (the launcher lays them out once)."""
    swn, swt = w_strides
    K_OFF, K_OFF2 = k_offsets
    OFF_H2, OFF_W2 = x2_offsets
    syn, syc, syh, syw = y_strides
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    img, oh, ow, m_valid = _output_pixels(offs_m, BATCH, H_OUT, W_OUT, FUSE_POOL)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < C_OUT
    w_cols = offs_n * swn
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD

    # Rows only grow with the image: the first row's is the tile's first (IMAGE_PAIR: the second is the last).
    first_img = tl.min(img, axis=0) if NORM_TABLE == NORM_IMAGE_PAIR else 0

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # The two sources share the rows, the weights and the dot's settings; they differ in tensor, geometry and norm.
    acc = _accumulate_source(
        acc, x_ptr=x_ptr, strides=x_strides, C=C_IN, K_OFF=K_OFF, img=img, first_img=first_img, BATCH=BATCH, ih0=ih0,
        iw0=iw0, m_valid=m_valid, placement=placement, norm=in_norm, one_ptr=one_ptr, IN_NEG_SLOPE=IN_NEG_SLOPE,
        w_ptr=w_ptr, w_cols=w_cols, n_valid=n_valid, swt=swt, KH=KH, KW=KW, UP_MODE=UP_MODE, NORM=NORM_INPUT,
        TABLE=NORM_TABLE, IN_ACT=IN_ACT, EVEN_K=EVEN_K, FLAT_TAPS=FLAT_TAPS, DOT_DTYPE=DOT_DTYPE,
        INPUT_PRECISION=INPUT_PRECISION, BLOCK_K=BLOCK_K)
    if TWO_SOURCES:
        # The second half of a virtual concatenation: a plain tensor on the input grid (the skip connection).
        acc = _accumulate_source(
            acc, x_ptr=x2_ptr, strides=x2_strides, C=C_IN2, K_OFF=K_OFF2, img=img, first_img=first_img, BATCH=BATCH,
            ih0=ih0, iw0=iw0, m_valid=m_valid, placement=(H_IN, W_IN, OFF_H2, OFF_W2, H_IN, W_IN, 1.0, 1.0),
            norm=in2_norm,
            one_ptr=one_ptr, IN_NEG_SLOPE=IN_NEG_SLOPE, w_ptr=w_ptr, w_cols=w_cols, n_valid=n_valid, swt=swt, KH=KH,
            KW=KW, UP_MODE=UP_NONE, NORM=NORM_INPUT2, TABLE=NORM_TABLE, IN_ACT=IN_ACT, EVEN_K=EVEN_K,
            FLAT_TAPS=False, DOT_DTYPE=DOT_DTYPE, INPUT_PRECISION=INPUT_PRECISION, BLOCK_K=BLOCK_K)
    if PROJ:
        # The block's projection into the same accumulator: its output is never stored, nor read back.
        acc = _accumulate_source(
            acc, x_ptr=proj_ptr, strides=proj_strides, C=C_PROJ, K_OFF=0, img=img, first_img=first_img, BATCH=BATCH,
            ih0=oh * PROJ_STRIDE, iw0=ow * PROJ_STRIDE, m_valid=m_valid,
            placement=(H_PROJ, W_PROJ, 0, 0, H_PROJ, W_PROJ, 1.0, 1.0), norm=in_norm, one_ptr=one_ptr,
            IN_NEG_SLOPE=IN_NEG_SLOPE, w_ptr=proj_w_ptr, w_cols=offs_n * proj_w_stride, n_valid=n_valid, swt=0, KH=1,
            KW=1, UP_MODE=UP_NONE, NORM=False, TABLE=NORM_TABLE, IN_ACT=IN_ACT, EVEN_K=EVEN_K, FLAT_TAPS=False,
            DOT_DTYPE=DOT_DTYPE, INPUT_PRECISION=INPUT_PRECISION, BLOCK_K=BLOCK_K)

    if PHASES:
        # Columns are (phase, channel) of a 2x2 stride-2 transposed conv: pixel (2 oh + dy, 2 ow + dx).
        channels = C_OUT // 4
        chan = offs_n % channels
        phase = offs_n // channels
        col_off = (phase // 2) * syh + (phase % 2) * syw + chan * syc
        row_off = img * syn + (2 * oh).to(tl.int64) * syh + (2 * ow).to(tl.int64) * syw
    else:
        chan = offs_n
        col_off = offs_n * syc
        row_off = img * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw
    if HAS_BIAS:
        acc += tl.load(bias_ptr + chan, mask=n_valid, other=0.0).to(tl.float32)[None, :]
    if RESIDUAL:
        srn, src, srh, srw = res_strides
        res_rows = img * srn + oh.to(tl.int64) * srh + ow.to(tl.int64) * srw
        acc += tl.load(res_ptr + res_rows[:, None] + (offs_n * src)[None, :],
                       mask=m_valid[:, None] & n_valid[None, :], other=0.0).to(tl.float32)
    acc = apply_activation(acc, NEG_SLOPE, ACT)
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + row_off[:, None] + col_off[None, :], y, mask=m_valid[:, None] & n_valid[None, :])
    if STATS != STATS_NONE:
        _norm_statistics(y, stats_ptr, pid_m, offs_n, n_valid, BATCH * H_OUT * W_OUT, H_OUT * W_OUT, C_OUT, BLOCK_M,
                         BLOCK_N, _STATS_ROWS, STATS)
    if FUSE_POOL:
        # Pool the values as stored, so ties are broken exactly as a separate max-pool of ``y`` would.
        spn, spc, sph, spw = pool_strides
        pooled, arg = _max_pool_rows(y.to(tl.float32), BLOCK_M, BLOCK_N)
        win = pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)
        ww = (W_OUT + 1) // 2
        wh = (H_OUT + 1) // 2
        px = win % ww
        py = (win // ww) % wh
        p_ok = (win < BATCH * wh * ww) & (py < H_OUT // 2) & (px < W_OUT // 2)
        p_off = (win // (ww * wh)).to(tl.int64) * spn + py.to(tl.int64) * sph + px.to(tl.int64) * spw
        p_mask = p_ok[:, None] & n_valid[None, :]
        tl.store(pool_ptr + p_off[:, None] + offs_n[None, :] * spc, pooled.to(pool_ptr.dtype.element_ty), mask=p_mask)
        tl.store(pool_argmax_ptr + p_off[:, None] + offs_n[None, :] * spc, arg.to(tl.uint8), mask=p_mask)


# The split (the grid's third axis) follows the config, so a trial's workspace slices are zeroed before the next.
@triton.autotune(configs=configs(CONV2D_WEIGHT_GRAD.name),
                 prune_configs_by={"early_config_prune": prune_by_precision(CONV2D_WEIGHT_GRAD.name)},
                 key=CONV2D_WEIGHT_GRAD.autotune_key, reset_to_zero=["dw_ptr"])
@triton.jit(do_not_specialize=CONV2D_WEIGHT_GRAD.do_not_specialize)
def conv2d_weight_grad_kernel(
    g_ptr,  # the prepared output gradient, contiguous channels_last
    x_ptr,  # the conv's input (any strides), read as the forward read it
    in_norm,  # (scale, shift ([C] or [N, C]: NORM_TABLE), PReLU slopes [C]) fp32 of x's pending norm (NORM_INPUT)
    one_ptr,  # a float32 1.0: loaded under each pixel's tap mask, it gates a per-channel pending norm's shift
    dw_ptr,  # fp32 workspace [splits (the grid's third axis), C_A, KH * KW, C_B]
    BATCH, H_A, W_A,  # operand a's pixel grid: the reduction runs over its pixels
    H_B, W_B,  # operand b's pixel grid
    C_A, C_B,  # channels of operand a (dw's rows) and of operand b (dw's columns per tap)
    PIXEL_BUCKET,  # the autotune key's pixel count, to the next power of two
    W_MAGIC, W_SHIFT, H_MAGIC, H_SHIFT,  # fast_div by W_A and H_A (fast_divisor)
    placement,  # x on the input grid: (H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP, SCALE_H, SCALE_W), source_placement
    IN_NEG_SLOPE: tl.constexpr,  # IN_ACT's leaky-ReLU slope (kernels.common.pending_activation)
    x_strides,  # (n, c, h, w) strides of x
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,  # the conv's taps
    GRAD_OPERAND: tl.constexpr,  # 1: a is g (a conv); 2: b is g (a transposed conv)
    UP_MODE: tl.constexpr,  # how x is up-sampled onto the input grid (codes.UpMode)
    NORM_INPUT: tl.constexpr,  # apply x's pending norm as it is read
    NORM_TABLE: tl.constexpr,  # how its scale and shift are read (codes.NormTable): [C] or [N, C]
    IN_ACT: tl.constexpr,  # the pending norm's activation (codes.Act)
    FLAT_INPUT: tl.constexpr,  # x is contiguous channels_last on g's grid: read it at p + the tap's shift
    TAPS_ON_N: tl.constexpr,  # x (GRAD_OPERAND 1, UP_MODE 0, no norm) has few channels: columns are (tap, channel)
    DOT_DTYPE: tl.constexpr,  # the MMA's operand type
    INPUT_PRECISION: tl.constexpr,  # tl.dot's input_precision
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # the tile (autotuned; K: pixels)
):
    """Parameters: specs.CONV2D_WEIGHT_GRAD. Operand a is indexed at pixel p of its [H_A, W_A] grid, operand b at
    p * STRIDE + tap - PAD of its [H_B, W_B] grid. Pixels are decoded with multiply-high divisions. The grid's third
    axis splits the pixels into equal chunks (weight_grad_pixels_per_split), each into its own workspace slice."""
    sxn, sxc, sxh, sxw = x_strides
    H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP, SCALE_H, SCALE_W = placement
    pid_m = tl.program_id(0)
    pid_nt = tl.program_id(1)
    split = tl.program_id(2)
    offs_a = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    a_ok = offs_a < C_A
    if TAPS_ON_N:
        # Column n is (tap, channel) of x: one tile holds every tap of a few-channel input.
        offs_n = pid_nt * BLOCK_N + tl.arange(0, BLOCK_N)
        b_ok = offs_n < KH * KW * C_B
        tap = offs_n // C_B
        offs_b = offs_n - tap * C_B
    else:
        num_b_tiles = tl.cdiv(C_B, BLOCK_N)
        tap = pid_nt // num_b_tiles
        offs_b = (pid_nt % num_b_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        b_ok = offs_b < C_B
    r = tap // KW
    s = tap % KW
    num_pix = BATCH * H_A * W_A
    pix_per_split = tl.cdiv(tl.cdiv(num_pix, tl.num_programs(2)), _PIXEL_CHUNK) * _PIXEL_CHUNK
    p_start = split * pix_per_split
    p_end = tl.minimum(p_start + pix_per_split, num_pix)

    # The prepared gradient is contiguous channels_last: pixel p sits at p * its channel count (whatever strides
    # torch reports for size-1 dimensions). So is a plain input (FLAT_INPUT), read at p + this tap's pixel shift:
    # the loop decodes pixels only for the border mask.
    tap_shift = (r - PAD) * W_B + (s - PAD)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_K):
        p = p0 + tl.arange(0, BLOCK_K)
        p_ok = p < p_end
        q = fast_div(p, W_MAGIC, W_SHIFT)
        pw = p - q * W_A
        img = fast_div(q, H_MAGIC, H_SHIFT)
        ph = q - img * H_A
        # The step's first pixel's image, a scalar (IMAGE_PAIR: the step's pixels are in it or the next).
        first_img = fast_div(fast_div(p0, W_MAGIC, W_SHIFT), H_MAGIC, H_SHIFT) if NORM_TABLE == NORM_IMAGE_PAIR else 0
        ih0 = ph * STRIDE - PAD
        iw0 = pw * STRIDE - PAD
        if TAPS_ON_N:
            a = tl.load(g_ptr + p.to(tl.int64)[:, None] * C_A + offs_a[None, :], mask=p_ok[:, None] & a_ok[None, :],
                        other=0.0)
            # x's position: its placement offset (a smaller source is zero-padded centred) taken off.
            ih = ih0[:, None] + r[None, :] - OFF_H
            iw = iw0[:, None] + s[None, :] - OFF_W
            b_mask = (p_ok[:, None] & b_ok[None, :]) & (ih >= 0) & (ih < H_UP) & (iw >= 0) & (iw < W_UP)
            b = tl.load(x_ptr + (img.to(tl.int64) * sxn)[:, None] + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
                        + (offs_b * sxc)[None, :], mask=b_mask, other=0.0)
        elif GRAD_OPERAND == 1:
            a = tl.load(g_ptr + p.to(tl.int64)[:, None] * C_A + offs_a[None, :], mask=p_ok[:, None] & a_ok[None, :],
                        other=0.0)
            uh = ih0 + r - OFF_H
            uw = iw0 + s - OFF_W
            b_ok_rows = p_ok & (uh >= 0) & (uh < H_UP) & (uw >= 0) & (uw < W_UP)
            if FLAT_INPUT:
                b = tl.load(x_ptr + (p + tap_shift).to(tl.int64)[:, None] * C_B + offs_b[None, :],
                            mask=b_ok_rows[:, None] & b_ok[None, :], other=0.0)
            else:
                x_rows = img.to(tl.int64) * sxn
                if UP_MODE == UP_NONE:
                    x_rows += uh * sxh + uw * sxw
                b = _source_tile(x_ptr, rows=x_rows, uh=uh, uw=uw, ok=b_ok_rows, kk=offs_b, k_ok=b_ok, sc=sxc, sh=sxh,
                                 sw=sxw, H_SRC=H_SRC, W_SRC=W_SRC, SCALE_H=SCALE_H, SCALE_W=SCALE_W,
                                 norm_view=_norm_view(in_norm, img.to(tl.int64), first_img, C_B, BATCH, NORM_TABLE),
                                 one_ptr=one_ptr, IN_NEG_SLOPE=IN_NEG_SLOPE, UP_MODE=UP_MODE, NORM=NORM_INPUT,
                                 TABLE=NORM_TABLE, IN_ACT=IN_ACT, EVEN_K=False)
        else:
            if FLAT_INPUT:
                a = tl.load(x_ptr + p.to(tl.int64)[:, None] * C_A + offs_a[None, :],
                            mask=p_ok[:, None] & a_ok[None, :], other=0.0)
            else:
                a = _source_tile(x_ptr, rows=img.to(tl.int64) * sxn + ph * sxh + pw * sxw, uh=ph, uw=pw, ok=p_ok,
                                 kk=offs_a, k_ok=a_ok, sc=sxc, sh=sxh, sw=sxw, H_SRC=H_A, W_SRC=W_A, SCALE_H=1.0,
                                 SCALE_W=1.0,
                                 norm_view=_norm_view(in_norm, img.to(tl.int64), first_img, C_A, BATCH, NORM_TABLE),
                                 one_ptr=one_ptr, IN_NEG_SLOPE=IN_NEG_SLOPE, UP_MODE=UP_NONE, NORM=NORM_INPUT,
                                 TABLE=NORM_TABLE, IN_ACT=IN_ACT, EVEN_K=False)
            b = tl.load(g_ptr + ((img * H_B + ih0 + r).to(tl.int64) * W_B + iw0 + s)[:, None] * C_B + offs_b[None, :],
                        mask=p_ok[:, None] & b_ok[None, :], other=0.0)
        acc += tl.dot(tl.trans(a.to(DOT_DTYPE)), b.to(DOT_DTYPE), input_precision=INPUT_PRECISION)

    row = (split.to(tl.int64) * C_A + offs_a) * (KH * KW * C_B)
    tl.store(dw_ptr + row[:, None] + (tap * C_B + offs_b)[None, :], acc,
             mask=a_ok[:, None] & b_ok[None, :])


def fast_divisor(d):
    """(magic, shift) for ``common.fast_div`` by d >= 1: magic = floor(2^32 (2^shift - d) / d) + 1,
    shift = ceil(log2 d), magic passed as the int32 with the same bits."""
    shift = (d - 1).bit_length()
    magic = (2**32 * (2**shift - d)) // d + 1
    return magic - 2**32 if magic >= 2**31 else magic, shift


def _dot_dtype(dtype):
    # The interpreter's bf16 arithmetic is broken: upcast to fp32 there (exact), keep bf16 MMA on the GPU.
    if INTERPRETED and dtype == torch.bfloat16:
        return tl.float32
    return _DOT_DTYPES[dtype]


def _input_precision(dtype):
    # Same rule as nn.Conv2d: fp32 may use TF32 tensor cores only when cuDNN is allowed to.
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def _gemm_weight(weight):
    """A [columns, C_in, KH, KW] weight as the kernel's B: [columns, KH, KW, C_in] contiguous (K runs along
    contiguous channels, so weight tiles load as 128-bit vectors). Free when the weight already is."""
    return weight.contiguous(memory_format=torch.channels_last)


def _implicit_gemm(x, weight, y, *, bias=None, activation=None, negative_slope=0.0, stride=1, pad=0, phases=False,
                   placement=None, skip=None, k_offsets=(0, 0), pool_out=None, norm=None, skip_norm=None,
                   in_activation=None, in_negative_slope=0.0, stats=None, stats_mode=Statistics.CHANNEL,
                   residual=None, skip_offsets=(0, 0), projection=None):
    """y over the pixel grid of the GEMM rows; ``weight`` is [columns, C_in, KH, KW] in logical order (laid out by
    _gemm_weight). ``x`` is read through ``placement`` (default: as is), ``skip`` is the second source of a virtual
    concatenation (weight channels ``k_offsets``), read as is moved by ``skip_offsets`` (a transposed conv's phase
    offset, as x's placement). ``norm`` / ``skip_norm``: (scale, shift, PReLU slopes or None)
    of a source's pending norm, applied with ``in_activation`` as it is read. ``phases``: the columns are (phase,
    channel) of a 2x2 stride-2 transposed conv and y is twice the rows' size. ``pool_out`` (pooled, argmax) turns the
    pooling epilogue on, ``stats`` (a workspace) the statistics epilogue (``stats_mode``: codes.Statistics),
    ``residual`` (y's shape) the residual add before the activation, ``projection`` (block input, [C_out, C_p, 1, 1]
    weight, stride) a 1x1 conv summed into the same accumulator. Validation is the caller's job."""
    weight = _gemm_weight(weight)
    proj_x, proj_weight, proj_stride = projection or (None, None, 1)
    proj_weight = proj_weight.reshape(proj_weight.shape[0], -1).contiguous() if proj_weight is not None else None
    batch, c_in = x.shape[0], x.shape[1]
    per_image = per_sample(norm) or per_sample(skip_norm)
    norm, skip_norm = norm_table(norm, batch, per_image), norm_table(skip_norm, batch, per_image)
    columns, _, kh, kw = weight.shape
    h_out, w_out = (y.shape[2] // 2, y.shape[3] // 2) if phases else (y.shape[2], y.shape[3])
    h_in, w_in = (skip.shape[2], skip.shape[3]) if skip is not None else (x.shape[2], x.shape[3])
    if y.numel() == 0:
        return y
    up_mode, placement = placement or source_placement(x, x.shape[2], x.shape[3])
    pooled, pool_argmax = pool_out if pool_out is not None else (y, y)
    pixels = batch * h_out * w_out
    rows = batch * triton.cdiv(h_out, 2) * triton.cdiv(w_out, 2) * 4 if pool_out is not None else pixels

    flat_taps = skip is None and up_mode == UpMode.NONE and _few_channels(c_in, kh * kw)

    def grid(meta):
        return triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(columns, meta["BLOCK_N"])

    CONV2D_IMPLICIT_GEMM.launch(
        conv2d_implicit_gemm_kernel, grid, x_ptr=x, x2_ptr=skip if skip is not None else x, w_ptr=weight,
        bias_ptr=bias if bias is not None else x, y_ptr=y, pool_ptr=pooled, pool_argmax_ptr=pool_argmax,
        in_norm=norm or (x, x, x), in2_norm=skip_norm or (x, x, x), one_ptr=float_one(x.device),
        stats_ptr=stats if stats is not None else x, res_ptr=residual if residual is not None else x,
        proj_ptr=proj_x if proj_x is not None else x, proj_w_ptr=proj_weight if proj_weight is not None else weight,
        BATCH=batch, H_OUT=h_out, W_OUT=w_out, H_IN=h_in, W_IN=w_in,
        C_IN=c_in, C_IN2=skip.shape[1] if skip is not None else 0, C_OUT=columns,
        C_PROJ=proj_x.shape[1] if proj_x is not None else 0, H_PROJ=proj_x.shape[2] if proj_x is not None else 0,
        W_PROJ=proj_x.shape[3] if proj_x is not None else 0, k_offsets=k_offsets,
        x2_offsets=skip_offsets,
        PIXEL_BUCKET=pixel_bucket(pixels), placement=placement, NEG_SLOPE=float(negative_slope),
        x_strides=x.stride(), x2_strides=strides_of(skip),
        w_strides=(weight.stride(0), weight.stride(3)), y_strides=y.stride(),
        pool_strides=strides_of(pool_out[0] if pool_out is not None else None), res_strides=strides_of(residual),
        proj_strides=strides_of(proj_x), proj_w_stride=proj_weight.stride(0) if proj_weight is not None else 0,
        KH=kh, KW=kw, STRIDE=stride, PAD=pad, PHASES=phases, HAS_BIAS=bias is not None,
        RESIDUAL=residual is not None, PROJ=proj_x is not None, PROJ_STRIDE=proj_stride, ACT=act_code(activation),
        TWO_SOURCES=skip is not None,
        UP_MODE=up_mode, FUSE_POOL=pool_out is not None, NORM_INPUT=norm is not None,
        FLAT_TAPS=flat_taps,
        NORM_INPUT2=skip_norm is not None,
        NORM_TABLE=norm_table_code(per_image, rows // batch, CONV2D_IMPLICIT_GEMM.name, gather=flat_taps),
        **pending_activation(in_activation, in_negative_slope, norm is not None or skip_norm is not None),
        STATS=int(stats_mode if stats is not None else Statistics.NONE), DOT_DTYPE=_dot_dtype(x.dtype),
        INPUT_PRECISION=_input_precision(x.dtype))
    return y


def _few_channels(channels, taps):
    """Whether a GEMM operand of ``channels`` per tap runs its taps as one K (or N) range: below the narrowest
    16-bit K tile a tap would leave most of every tile empty."""
    return taps > 1 and channels < FLAT_TAPS_CHANNELS


def _flat(x, grid):
    """Whether x is contiguous channels_last on ``grid``'s pixels (pixel p at p * C)."""
    return x.shape[2:] == grid.shape[2:] and x.is_contiguous(memory_format=torch.channels_last)


def _weight_grad(g, weight, sources, *, grad_operand, stride, pad, in_activation=None, in_negative_slope=0.0):
    """dw (fp32, [C_A, C_B total, KH, KW] = the weight's logical shape) from the prepared output gradient ``g``
    (made contiguous channels_last here: a no-op for fused_unet.kernels.grad's output).
    ``sources`` are (x, placement, channel offset, norm) quadruples, the input operand of each launch (``norm``:
    (scale, shift, PReLU slopes or None) of its pending norm, or None)."""
    g = g.contiguous(memory_format=torch.channels_last)
    kh, kw = weight.shape[2], weight.shape[3]
    c_a, c_b_total = weight.shape[0], weight.shape[1]
    a_grid = g if grad_operand == 1 else sources[0][0]
    batch, _, h_a, w_a = a_grid.shape
    h_b, w_b = g.shape[2], g.shape[3]
    num_pix = batch * h_a * w_a
    sms = specs.recorded_sms() or (None if INTERPRETED or g.device.type != "cuda" else _sm_count(g.device))
    w_magic, w_shift = fast_divisor(w_a)
    h_magic, h_shift = fast_divisor(h_a)
    # Each source's columns of dw; no pixels: zero.
    dw_total = (torch.empty if num_pix else torch.zeros)((c_a, kh * kw, c_b_total), device=g.device,
                                                          dtype=torch.float32)
    for x, (up_mode, placement), b_off, norm in (sources if num_pix else ()):
        c_b = x.shape[1] if grad_operand == 1 else c_b_total
        norm = norm_table(norm, batch, per_sample(norm))
        taps_on_n = grad_operand == 1 and up_mode == UpMode.NONE and norm is None and _few_channels(c_b, kh * kw)

        def grid(meta, c_b=c_b, taps_on_n=taps_on_n):
            n_tiles = triton.cdiv(kh * kw * c_b, meta["BLOCK_N"]) if taps_on_n else kh * kw * triton.cdiv(
                c_b, meta["BLOCK_N"])
            m_tiles = triton.cdiv(c_a, meta["BLOCK_M"])
            return m_tiles, n_tiles, _weight_grad_split(num_pix, m_tiles * n_tiles, sms)

        # Each source its own workspace (the autotuner zeroes it between trials), one slice per pixel chunk of the
        # autotuner's config that splits most.
        splits = max(grid(cfg.kwargs)[2] for cfg in conv2d_weight_grad_kernel.configs)
        dw = torch.zeros((splits, c_a, kh * kw, c_b), device=g.device, dtype=torch.float32)
        CONV2D_WEIGHT_GRAD.launch(
            conv2d_weight_grad_kernel, grid, g_ptr=g, x_ptr=x, in_norm=norm or (g, g, g), one_ptr=float_one(g.device),
            dw_ptr=dw, BATCH=batch, H_A=h_a, W_A=w_a, H_B=h_b, W_B=w_b, C_A=c_a, C_B=c_b,
            PIXEL_BUCKET=pixel_bucket(num_pix), W_MAGIC=w_magic, W_SHIFT=w_shift, H_MAGIC=h_magic, H_SHIFT=h_shift,
            placement=placement, x_strides=x.stride(), KH=kh, KW=kw, STRIDE=stride, PAD=pad,
            GRAD_OPERAND=grad_operand, UP_MODE=up_mode, NORM_INPUT=norm is not None,
            NORM_TABLE=norm_table_code(per_sample(norm), h_a * w_a, CONV2D_WEIGHT_GRAD.name,
                                       gather=up_mode >= UpMode.BILINEAR),
            **pending_activation(in_activation, in_negative_slope, norm is not None),
            FLAT_INPUT=not taps_on_n and norm is None and up_mode == UpMode.NONE and (
                _flat(x, g) and stride == 1 if grad_operand == 1 else _flat(x, x)),
            TAPS_ON_N=taps_on_n, DOT_DTYPE=_dot_dtype(g.dtype), INPUT_PRECISION=_input_precision(g.dtype))
        # Fixed-order reduction of the split workspace: the same bits on every run; written in place, no copy.
        torch.sum(dw, 0, out=dw_total[:, :, b_off:b_off + c_b])
    return dw_total.view(c_a, kh, kw, c_b_total).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=None)
def _sm_count(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


def weight_grad_pixels_per_split(num_pix, splits):
    """Pixels per program of a weight-grad launch whose grid splits ``num_pix`` pixels ``splits`` ways (as the
    kernel computes it: equal chunks, each a multiple of WEIGHT_GRAD_PIXEL_CHUNK)."""
    return triton.cdiv(triton.cdiv(num_pix, splits), WEIGHT_GRAD_PIXEL_CHUNK) * WEIGHT_GRAD_PIXEL_CHUNK


def _weight_grad_split(num_pix, tiles, sms):
    """How many pixel chunks a weight-grad launch of ``tiles`` output tiles (those of the config launched) splits
    into on a GPU of ``sms`` SMs (1 without one): the fewest whose programs fill at least 90% of the last wave,
    else the split that fills it best, within four waves and chunks of at least four WEIGHT_GRAD_PIXEL_CHUNKs."""
    if not sms or not num_pix:
        return 1
    best, best_fill = 1, 0.0
    for asked in range(1, max(1, min(triton.cdiv(4 * sms, tiles), triton.cdiv(num_pix, 4 * WEIGHT_GRAD_PIXEL_CHUNK)))
                       + 1):
        # Chunks are whole multiples of the chunk size: the split that runs may be smaller than the one asked.
        split = triton.cdiv(num_pix, weight_grad_pixels_per_split(num_pix, asked))
        ctas = tiles * split
        fill = ctas / (sms * triton.cdiv(ctas, sms))
        if fill >= 0.9:
            return split
        if fill > best_fill:
            best, best_fill = split, fill
    return best


def _empty_channels_last(batch, channels, height, width, like):
    return torch.empty((batch, channels, height, width), device=like.device, dtype=like.dtype,
                       memory_format=torch.channels_last)


# ---- public launchers: arguments were validated by fused_unet.kernels.checks ------------------------------
# ``activation`` is None, "relu" or "leaky_relu" (with ``negative_slope`` >= 0).
# ``in_scale`` / ``in_shift`` (fp32, [C] or [N, C]): the input is a conv's pre-norm output whose norm and
# ``in_activation`` are still pending; the kernel applies them as it reads the input (never stored). ``in_slope``
# ([C]): a PReLU's slopes (in_activation "prelu").
# Backward launchers take ``grad``, the output gradient prepared by fused_unet.kernels.grad (the activation's
# and the pool's backward already applied), so their GEMMs are plain.
# Each *_output function allocates what its launcher returns; torch.compile's fake ops call it for the shape.

def _norm(scale, shift, slope=None):
    """A source's pending norm (scale, shift, PReLU slopes or None), or None."""
    return (scale, shift, slope) if scale is not None else None


def _in_act(in_activation, in_negative_slope):
    return dict(in_activation=in_activation, in_negative_slope=in_negative_slope)


def conv_padding(weight, padding):
    """A conv's zero padding: ``padding``, or (None) the 'same' padding k // 2 of an odd kernel."""
    return weight.shape[2] // 2 if padding is None else padding


def conv2d_output(x, weight, stride=1, padding=None):
    return _empty_channels_last(*conv_output_shape(x.shape, weight.shape, stride, conv_padding(weight, padding)), x)


def conv2d_forward(x, weight, bias=None, activation=None, negative_slope=0.0, in_scale=None, in_shift=None,
                   in_activation=None, in_negative_slope=0.0, stride=1, padding=None, residual=None, in_slope=None,
                   proj_x=None, proj_weight=None, proj_stride=1):
    """Conv of a square kernel, ``stride`` and zero ``padding`` (None: 'same', k // 2) (+bias, + ``residual``, a
    tensor of the output's shape, + the 1x1 conv of ``proj_x`` with ``proj_weight`` [C_out, C_p, 1, 1] and
    ``proj_stride`` in the same accumulator: a ResNet downsample block's end, +activation); output in channels_last
    memory format."""
    return _implicit_gemm(x, weight, conv2d_output(x, weight, stride, padding), bias=bias, activation=activation,
                          negative_slope=negative_slope, stride=stride, pad=conv_padding(weight, padding),
                          norm=_norm(in_scale, in_shift, in_slope), residual=residual,
                          projection=(proj_x, proj_weight, proj_stride) if proj_x is not None else None,
                          **_in_act(in_activation, in_negative_slope))


def stats_rows(pixels):
    """Rows of a batch-statistics workspace: one per STATS_ROWS output pixels, whatever the tile size."""
    return max(1, triton.cdiv(pixels, STATS_ROWS))


def _stats_output(y, per_image):
    """A statistics workspace: a row per STATS_ROWS pixels, then with ``per_image`` a row per image (the part of the
    group that straddles into it)."""
    rows = stats_rows(y.shape[0] * y.shape[2] * y.shape[3]) + (y.shape[0] if per_image else 0)
    return torch.empty((rows, 3, y.shape[1]), device=y.device, dtype=torch.float32)


def _statistics(y, per_image):
    """(stats, Statistics code) of a launch writing its output's statistics."""
    if per_image and not image_statistics_fit(y.shape[2] * y.shape[3]):
        raise ValueError(f"per-image statistics need images of at least {STATS_ROWS} pixels, got "
                         f"{tuple(y.shape[2:])}")
    return _stats_output(y, per_image), Statistics.IMAGE if per_image else Statistics.CHANNEL


def conv2d_stats_output(x, weight, stride=1, padding=None, per_image=False):
    y = conv2d_output(x, weight, stride, padding)
    return y, _stats_output(y, per_image)


def conv2d_stats_forward(x, weight, bias=None, in_scale=None, in_shift=None, in_activation=None,
                         in_negative_slope=0.0, stride=1, padding=None, in_slope=None, per_image=False):
    """(y, stats) of a conv followed by a norm: y = conv(x) + bias, the pre-norm output, and per group of
    STATS_ROWS pixels its per-channel (count, mean, sum of squared deviations) (``per_image``: per image and channel,
    for an instance / group norm), for ``fused_unet.kernels.norm.norm_statistics``."""
    y = conv2d_output(x, weight, stride, padding)
    stats, mode = _statistics(y, per_image)
    _implicit_gemm(x, weight, y, bias=bias, stride=stride, pad=conv_padding(weight, padding),
                   norm=_norm(in_scale, in_shift, in_slope), stats=stats, stats_mode=mode,
                   **_in_act(in_activation, in_negative_slope))
    return y, stats


def conv2d_pool_output(x, weight):
    y = conv2d_output(x, weight)
    pooled = _empty_channels_last(y.shape[0], y.shape[1], y.shape[2] // 2, y.shape[3] // 2, y)
    return y, pooled, torch.empty_like(pooled, dtype=torch.uint8)


def conv2d_pool_forward(x, weight, bias=None, activation=None, negative_slope=0.0):
    """(y, max_pool2d(y, 2), argmax uint8 = dy*2+dx) of y = conv2d_forward(...), from one kernel: the GEMM walks
    2x2 windows, so the epilogue stores the full-resolution output and pools it in registers."""
    y, pooled, argmax = conv2d_pool_output(x, weight)
    _implicit_gemm(x, weight, y, bias=bias, activation=activation, negative_slope=negative_slope,
                   pad=weight.shape[2] // 2, pool_out=(pooled, argmax))
    return y, pooled, argmax


def _concat_sources(up, skip, up_mode, align_corners, up_first, up_norm=None, skip_norm=None):
    """(source, placement, weight channel offset, norm) of the two halves of cat([up, skip]) (or [skip, up]); of
    up alone (up-sampled) without a skip."""
    _, height, width = concat_grid(up, skip, up_mode)
    up_source = (up, source_placement(up, height, width, up_mode, align_corners), 0 if up_first or skip is None else
                 skip.shape[1], up_norm)
    if skip is None:
        return [up_source]
    return [up_source, (skip, source_placement(skip, height, width), up.shape[1] if up_first else 0, skip_norm)]


def _concat_conv(up, skip, weight, y, up_mode, align_corners, up_first, up_norm, skip_norm, **kwargs):
    sources = _concat_sources(up, skip, up_mode, align_corners, up_first)
    k_offsets = tuple(source[2] for source in sources) + (0,) * (2 - len(sources))
    return _implicit_gemm(up, weight, y, pad=weight.shape[2] // 2, placement=sources[0][1], skip=skip,
                          k_offsets=k_offsets, norm=up_norm, skip_norm=skip_norm, **kwargs)


def concat_conv2d_output(up, skip, weight, up_mode):
    batch, height, width = concat_grid(up, skip, up_mode)
    return _empty_channels_last(batch, weight.shape[0], height, width, up)


def concat_conv2d_stats_output(up, skip, weight, up_mode, per_image=False):
    y = concat_conv2d_output(up, skip, weight, up_mode)
    return y, _stats_output(y, per_image)


def concat_conv2d_forward(up, skip, weight, bias=None, activation=None, negative_slope=0.0, up_mode=None,
                          align_corners=False, up_first=True, up_scale=None, up_shift=None, skip_scale=None,
                          skip_shift=None, in_activation=None, in_negative_slope=0.0, up_slope=None, skip_slope=None):
    """conv2d_forward of cat([pad(upsample(up)), skip], 1) (or [skip, up]) without building the concatenation:
    the GEMM's K loop reads the two tensors, up-sampling ``up`` x2 on the fly (``up_mode`` nearest / bilinear)
    and zero-padding it centred to the skip's size. Without a skip (None): the conv of upsample(up) alone."""
    return _concat_conv(up, skip, weight, concat_conv2d_output(up, skip, weight, up_mode), up_mode, align_corners,
                        up_first, _norm(up_scale, up_shift, up_slope), _norm(skip_scale, skip_shift, skip_slope),
                        bias=bias, activation=activation, negative_slope=negative_slope,
                        **_in_act(in_activation, in_negative_slope))


def concat_conv2d_stats_forward(up, skip, weight, bias=None, up_mode=None, align_corners=False, up_first=True,
                                up_scale=None, up_shift=None, skip_scale=None, skip_shift=None, in_activation=None,
                                in_negative_slope=0.0, up_slope=None, skip_slope=None, per_image=False):
    """(y, stats) of concat_conv2d_forward followed by a norm (see conv2d_stats_forward)."""
    y = concat_conv2d_output(up, skip, weight, up_mode)
    stats, mode = _statistics(y, per_image)
    _concat_conv(up, skip, weight, y, up_mode, align_corners, up_first, _norm(up_scale, up_shift, up_slope),
                 _norm(skip_scale, skip_shift, skip_slope), bias=bias, stats=stats, stats_mode=mode,
                 **_in_act(in_activation, in_negative_slope))
    return y, stats


def conv2d_input_grad_output(grad, weight, stride=1, padding=None, input_size=None):
    """dL/dx of a conv; ``input_size`` (H, W) is needed with stride 2 (two input sizes give one output size)."""
    k, pad = weight.shape[2], conv_padding(weight, padding)
    height, width = input_size or (grad.shape[2] + k - 1 - 2 * pad, grad.shape[3] + k - 1 - 2 * pad)
    return _empty_channels_last(grad.shape[0], weight.shape[1], height, width, grad)


def _input_grad_phase(phase, kernel, stride, padding):
    """(first tap, taps, offset) of the input rows i = stride * m + phase in a conv's input-grad: they receive
    dL/dy[(i + padding - r) / stride] through the taps r = first, first + stride, ... only, as a stride-1 conv of
    dL/dy over m with those taps flipped, reading row m - offset + t at flipped tap t."""
    first = (phase + padding) % stride
    taps = len(range(first, kernel, stride))
    return first, taps, taps - 1 - (phase + padding - first) // stride


def _transposed_phases(x, weight, out, stride, pad, bias=None, activation=None, negative_slope=0.0, norm=None,
                       in_activation=None, in_negative_slope=0.0, skip=None, skip_norm=None):
    """out = act(bias + the transposed conv of x with ``weight`` [C_x, C_out, k, k], ``stride`` and ``pad``) (of x's
    pending ``norm`` + ``in_activation`` applied as it is read, zero outside x as the transposed conv sees it): per
    phase of ``out`` (stride x stride of them: each output pixel takes the taps of its phase only, so no zero is
    multiplied and nothing is scattered) a stride-1 conv with the phase's taps flipped and the weights transposed,
    its offset carried by the placement, its output a strided view of ``out``. A phase without taps (a kernel
    smaller than the stride) is zero (only the input-grad has such phases: it has no bias). With ``skip`` (and its
    ``skip_norm``) the input is cat([x, skip], 1), read from both (weight rows C_x... are the skip's)."""
    k = weight.shape[2]
    transposed = weight.transpose(0, 1)
    for phase_h in range(stride):
        for phase_w in range(stride):
            view = out[:, :, phase_h::stride, phase_w::stride]
            first_h, taps_h, off_h = _input_grad_phase(phase_h, k, stride, pad)
            first_w, taps_w, off_w = _input_grad_phase(phase_w, k, stride, pad)
            if not taps_h or not taps_w:
                view.zero_()
                continue
            placement = (x.shape[2], x.shape[3], off_h, off_w, x.shape[2], x.shape[3], 1.0, 1.0)
            _implicit_gemm(x, transposed[:, :, first_h::stride, first_w::stride].flip(2, 3), view, bias=bias,
                           activation=activation, negative_slope=negative_slope, placement=(UpMode.NONE, placement),
                           norm=norm, skip=skip, k_offsets=(0, x.shape[1]), skip_norm=skip_norm,
                           skip_offsets=(off_h, off_w), **_in_act(in_activation, in_negative_slope))
    return out


def conv2d_input_grad(grad, weight, stride=1, padding=None, input_size=None):
    """dL/dx (all C_in channels, a concatenation's too) of conv2d_forward / conv2d_pool_forward /
    concat_conv2d_forward at the conv's input grid, from the prepared output gradient: the transposed conv of the
    gradient (_transposed_phases)."""
    dx = conv2d_input_grad_output(grad, weight, stride, padding, input_size)
    return _transposed_phases(grad, weight, dx, stride, conv_padding(weight, padding))


def conv_transpose2d_output(x, weight, stride, padding, output_padding):
    """act(conv_transpose2d(x, weight)) of a [C_in, C_out, k, k] weight: (H - 1) stride - 2 padding + k +
    output_padding rows (and columns), channels_last."""
    k = weight.shape[2]
    height, width = ((size - 1) * stride - 2 * padding + k + output_padding for size in x.shape[2:4])
    return _empty_channels_last(x.shape[0], weight.shape[1], height, width, x)


def conv_transpose2d_forward(x, weight, bias=None, activation=None, negative_slope=0.0, in_scale=None, in_shift=None,
                             in_activation=None, in_negative_slope=0.0, stride=2, padding=0, output_padding=0,
                             in_slope=None, skip=None, skip_scale=None, skip_shift=None, skip_slope=None):
    """act(conv_transpose2d(x, weight, bias, stride, padding, output_padding)) for a square [C_in, C_out, k, k]
    weight with k >= stride: the input-grad of the conv it transposes (whose input is this output), with the bias
    and activation in each phase's epilogue; of x's pending norm (``in_*``) applied as x is read. With ``skip`` (of
    x's batch and size): of cat([x, skip], 1) without the concatenation (MONAI UNet's up layers), the skip's pending
    norm ``skip_*`` (its activation ``in_activation``)."""
    y = conv_transpose2d_output(x, weight, stride, padding, output_padding)
    return _transposed_phases(x, weight, y, stride, padding, bias, activation, negative_slope,
                              _norm(in_scale, in_shift, in_slope), in_activation, in_negative_slope, skip=skip,
                              skip_norm=_norm(skip_scale, skip_shift, skip_slope))


def weight_grad_output(weight):
    """dL/dweight as the weight-grad launchers return it."""
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _in_weight_dtype(dw, weight):
    return dw.to(weight.dtype, memory_format=torch.contiguous_format)


def conv2d_weight_grad(grad, x, weight, skip=None, up_mode=None, align_corners=False, up_first=True, in_scale=None,
                       in_shift=None, skip_scale=None, skip_shift=None, in_activation=None, in_negative_slope=0.0,
                       stride=1, padding=None, in_slope=None, skip_slope=None):
    """dL/dweight in the weight's dtype of the conv launchers above (with ``skip`` or ``up_mode``: of the
    concatenating conv with ``x`` as its ``up``; with neither, that is a plain conv of ``x`` with ``stride`` and
    ``padding``), from the prepared output gradient. The input is read as the forward read it, pending norms
    (``in_*``, ``skip_*``) included."""
    sources = _concat_sources(x, skip, up_mode, align_corners, up_first, _norm(in_scale, in_shift, in_slope),
                              _norm(skip_scale, skip_shift, skip_slope))
    dw = _weight_grad(grad, weight, sources, grad_operand=1, stride=stride, pad=conv_padding(weight, padding),
                      **_in_act(in_activation, in_negative_slope))
    return _in_weight_dtype(dw, weight)


def conv_transpose2x2_output(x, weight):
    return _empty_channels_last(x.shape[0], weight.shape[1], 2 * x.shape[2], 2 * x.shape[3], x)


def _phase_columns(weight):
    """A [C_in, C_out, 2, 2] transposed-conv weight as the B of one GEMM: columns (phase = dy*2 + dx, c_out)."""
    c_in, c_out = weight.shape[0], weight.shape[1]
    return weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in, 1, 1)


def conv_transpose2x2_forward(x, weight, bias=None, activation=None, negative_slope=0.0, in_scale=None,
                              in_shift=None, in_activation=None, in_negative_slope=0.0, in_slope=None):
    """2x2 stride-2 transposed conv (+bias, +activation) as one GEMM [pixels, C_in] x [C_in, 4 C_out] whose store
    is depth-to-space."""
    return _implicit_gemm(x, _phase_columns(weight), conv_transpose2x2_output(x, weight), bias=bias,
                          activation=activation, negative_slope=negative_slope, phases=True,
                          norm=_norm(in_scale, in_shift, in_slope), **_in_act(in_activation, in_negative_slope))


def conv_transpose2x2_input_grad_output(grad, weight):
    return _empty_channels_last(grad.shape[0], weight.shape[0], grad.shape[2] // 2, grad.shape[3] // 2, grad)


def conv_transpose2x2_input_grad(grad, weight):
    """dL/dx of conv_transpose2x2_forward from the prepared output gradient: a stride-2 2x2 conv with the same
    weights."""
    return _implicit_gemm(grad, weight, conv_transpose2x2_input_grad_output(grad, weight), stride=2)


def conv_transpose2x2_weight_grad(grad, x, weight, in_scale=None, in_shift=None, in_activation=None,
                                  in_negative_slope=0.0, in_slope=None):
    """dL/dweight of conv_transpose2x2_forward from the prepared output gradient."""
    source = (x, source_placement(x, x.shape[2], x.shape[3]), 0, _norm(in_scale, in_shift, in_slope))
    dw = _weight_grad(grad, weight, [source], grad_operand=2, stride=2, pad=0,
                      **_in_act(in_activation, in_negative_slope))
    return _in_weight_dtype(dw, weight)
