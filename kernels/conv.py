"""Implicit-GEMM convolution kernels and their launchers.

``conv2d_implicit_gemm_kernel`` computes, for every output pixel p and output channel n,
    y[p, n] = act(bias[n] + sum_{tap, k} src[p * STRIDE + tap - PAD, k] * w[n, k, tap])
and stores it at (UPSAMPLE * p + phase). ``src`` is one tensor, or two read as one virtual channel
concatenation (TWO_SOURCES), the first optionally up-sampled x2 on the fly (UP_MODE) and placed at an
offset (zero padding around it), each optionally a conv's pre-norm output whose batch norm + activation
are applied as it is read (NORM_INPUT, NORM_INPUT2, IN_ACT). The epilogue adds bias and activation (ACT),
or writes batch statistics instead (STATS). One kernel serves the conv forward (STRIDE 1, 'same'), the conv+pool
forward (FUSE_POOL: each 2x2 window is four neighbouring GEMM rows, pooled in the epilogue), the conv
input-grad (weights transposed and flipped; the activation-grad and the pool's scatter folded into the
load: ACT_GRAD, POOL_GRAD), the 2x2/s2 transposed-conv forward (1x1 taps, UPSAMPLE 2: depth-to-space
store) and its input-grad (STRIDE 2, 2x2 taps).

``conv2d_weight_grad_kernel`` computes dw[m, n, tap] = sum_p a[p, m] * b[p * STRIDE + tap - PAD, n]
over a split of the pixels into a workspace, reduced afterwards in a fixed order (deterministic).
"""
import functools

import torch
import triton
import triton.language as tl

from .configs import INTERPRETED, WEIGHT_GRAD_PIXEL_CHUNK, configs, min_block, prune_by_precision

_DOT_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
# Activation codes of the ACT / ACT_GRAD constexprs.
ACTIVATIONS = {None: 0, "relu": 1, "leaky_relu": 2}
# Up-sampling codes of the UP_MODE constexpr: how the first source is read onto the conv's input grid.
UP_MODES = {None: 0, "nearest": 1, "bilinear": 2, "bilinear_align_corners": 3}


@triton.jit
def _activation(v, NEG_SLOPE, ACT: tl.constexpr):
    if ACT == 1:
        v = tl.where(v < 0.0, 0.0, v)  # keeps NaN, like torch.relu
    elif ACT == 2:
        v = tl.where(v < 0.0, v * NEG_SLOPE, v)
    return v


@triton.jit
def _activation_grad(g, out, NEG_SLOPE, ACT: tl.constexpr):
    """The activation's backward from its saved output (same sign as its input for a slope >= 0)."""
    if ACT == 1:
        g = tl.where(out <= 0.0, 0.0, g)  # threshold_backward's rule
    elif ACT == 2:
        g = tl.where(out > 0.0, g, g * NEG_SLOPE)  # leaky_relu_backward's rule
    return g


@triton.jit
def _linear_source(u, N_SRC, SCALE, ALIGN_CORNERS: tl.constexpr):
    """PyTorch's bilinear source index for destination index u: (i0, i1, weight of i1)."""
    uf = u.to(tl.float32)
    if ALIGN_CORNERS:
        src = uf * SCALE
    else:
        src = tl.maximum((uf + 0.5) * SCALE - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), N_SRC - 1)
    return i0, tl.minimum(i0 + 1, N_SRC - 1), src - i0.to(tl.float32)


@triton.jit
def _tap(ptr, row, chan, mask, scale, shift, IN_NEG_SLOPE, NORM: tl.constexpr, IN_ACT: tl.constexpr):
    """One load of a source tile; with NORM, the source's pending batch-norm affine and activation applied, and
    zero where masked (the conv pads the normalised tensor with zeros, not the stored one)."""
    v = tl.load(ptr + row[:, None] + chan, mask=mask, other=0.0)
    if NORM:
        v = tl.where(mask, _activation(v.to(tl.float32) * scale + shift, IN_NEG_SLOPE, IN_ACT), 0.0)
    return v


@triton.jit
def _source_tile(ptr, sn, sc, sh, sw, img, h, w, ok, kk, k_ok,
                 H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP, SCALE_H, SCALE_W, scale_ptr, shift_ptr, IN_NEG_SLOPE,
                 UP_MODE: tl.constexpr, NORM: tl.constexpr, IN_ACT: tl.constexpr):
    """The [pixels, channels] tile of a source at positions (h, w) of the conv's input grid. The source covers
    [OFF, OFF + UP) of that grid (zero elsewhere), read as is (UP_MODE 0, UP = SRC) or up-sampled x2 from its
    [H_SRC, W_SRC] pixels: 1 nearest, 2 bilinear, 3 bilinear with align_corners. NORM: the source is a conv's
    pre-norm output, normalised (per-channel scale, shift) and activated (IN_ACT) as it is read. Tiles that
    are up-sampled or normalised are fp32."""
    uh = h - OFF_H
    uw = w - OFF_W
    ok = ok & (uh >= 0) & (uh < H_UP) & (uw >= 0) & (uw < W_UP)
    mask = ok[:, None] & k_ok[None, :]
    base = img * sn
    chan = kk[None, :] * sc
    if NORM:
        scale = tl.load(scale_ptr + kk, mask=k_ok, other=0.0)[None, :]
        shift = tl.load(shift_ptr + kk, mask=k_ok, other=0.0)[None, :]
    else:
        scale = 1.0
        shift = 0.0
    if UP_MODE == 0:
        tile = _tap(ptr, base + uh * sh + uw * sw, chan, mask, scale, shift, IN_NEG_SLOPE, NORM, IN_ACT)
    elif UP_MODE == 1:
        tile = _tap(ptr, base + (uh // 2) * sh + (uw // 2) * sw, chan, mask, scale, shift, IN_NEG_SLOPE, NORM, IN_ACT)
    else:
        h0, h1, lh = _linear_source(uh, H_SRC, SCALE_H, UP_MODE == 3)
        w0, w1, lw = _linear_source(uw, W_SRC, SCALE_W, UP_MODE == 3)
        # Accumulate corner by corner: one loaded tile alive at a time keeps the registers of the MMA free.
        lw = lw[:, None]
        lh = lh[:, None]
        tile = ((1.0 - lh) * (1.0 - lw)) * _tap(ptr, base + h0 * sh + w0 * sw, chan, mask, scale, shift, IN_NEG_SLOPE,
                                                NORM, IN_ACT).to(tl.float32)
        tile += ((1.0 - lh) * lw) * _tap(ptr, base + h0 * sh + w1 * sw, chan, mask, scale, shift, IN_NEG_SLOPE, NORM,
                                         IN_ACT).to(tl.float32)
        tile += (lh * (1.0 - lw)) * _tap(ptr, base + h1 * sh + w0 * sw, chan, mask, scale, shift, IN_NEG_SLOPE, NORM,
                                         IN_ACT).to(tl.float32)
        tile += (lh * lw) * _tap(ptr, base + h1 * sh + w1 * sw, chan, mask, scale, shift, IN_NEG_SLOPE, NORM,
                                 IN_ACT).to(tl.float32)
    return tile


@triton.jit
def _output_grad_tile(g, out_ptr, son, soc, soh, sow, pg_ptr, spn, spc, sph, spw, arg_ptr, san, sac, sah, saw,
                      img, h, w, ok, kk, k_ok, H, W, NEG_SLOPE, ACT_GRAD: tl.constexpr, POOL_GRAD: tl.constexpr):
    """The gradient at the output of a conv(+act)(+pool) from the loaded gradient of its full-resolution output
    ``g``: plus the pool's gradient routed through the 1-byte argmax (windows of the [H, W] grid), then the
    activation's backward from the saved output. Without either flag, ``g`` as loaded."""
    if POOL_GRAD:
        ph = h // 2
        pw = w // 2
        win_ok = ok & (h >= 0) & (w >= 0) & (ph < H // 2) & (pw < W // 2)
        mask = win_ok[:, None] & k_ok[None, :]
        arg = tl.load(arg_ptr + (img * san + ph * sah + pw * saw)[:, None] + kk[None, :] * sac, mask=mask, other=4)
        gp = tl.load(pg_ptr + (img * spn + ph * sph + pw * spw)[:, None] + kk[None, :] * spc, mask=mask, other=0.0)
        q = (h % 2) * 2 + (w % 2)
        g = g.to(tl.float32) + tl.where(arg.to(tl.int32) == q[:, None], gp.to(tl.float32), 0.0)
    if ACT_GRAD != 0:
        mask = ok[:, None] & k_ok[None, :]
        out = tl.load(out_ptr + (img * son + h * soh + w * sow)[:, None] + kk[None, :] * soc, mask=mask, other=0.0)
        g = _activation_grad(g, out.to(tl.float32), NEG_SLOPE, ACT_GRAD)
    return g


@triton.jit
def _take_larger(best, arg, v, q):
    # PyTorch's max-pool scan: a strictly larger value or a NaN takes the window.
    take = (v > best) | (v != v)
    return tl.where(take, v, best), tl.where(take, q, arg)


@triton.jit
def _max_pool_rows(v, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Max and argmax (q = dy*2 + dx) over each group of four consecutive rows of a [BLOCK_M, BLOCK_N] tile."""
    v = tl.reshape(tl.permute(tl.reshape(v, (BLOCK_M // 4, 4, BLOCK_N)), (0, 2, 1)), (BLOCK_M // 4, BLOCK_N, 2, 2))
    left, right = tl.split(v)
    q0, q2 = tl.split(left)
    q1, q3 = tl.split(right)
    best, arg = _take_larger(q0, tl.zeros((BLOCK_M // 4, BLOCK_N), dtype=tl.int32), q1, 1)
    best, arg = _take_larger(best, arg, q2, 2)
    return _take_larger(best, arg, q3, 3)


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
def _accumulate_source(acc, x_ptr, sxn, sxc, sxh, sxw, C, K_OFF, H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP,
                       SCALE_H, SCALE_W, w_ptr, swn, swk, swh, sww, offs_n, n_valid, img, oh, ow, m_valid,
                       H_IN, W_IN, phase_h, phase_w,
                       out_ptr, son, soc, soh, sow, pg_ptr, spn, spc, sph, spw, arg_ptr, san, sac, sah, saw,
                       scale_ptr, shift_ptr, NEG_SLOPE, IN_NEG_SLOPE,
                       KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                       FLIP_WEIGHT: tl.constexpr, UP_MODE: tl.constexpr, ACT_GRAD: tl.constexpr,
                       POOL_GRAD: tl.constexpr, NORM: tl.constexpr, IN_ACT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += the GEMM over this source's K range (taps x its C channels, weight channels K_OFF...)."""
    offs_k = tl.arange(0, BLOCK_K)
    c_blocks = tl.cdiv(C, BLOCK_K)
    # One flat loop over (tap, channel block), so the software pipeliner overlaps loads across taps; the
    # per-tap coordinates and border mask are [BLOCK_M] vectors, cheap next to the MMA.
    for it in range(0, KH * KW * c_blocks):
        tap = it // c_blocks
        kk = (it - tap * c_blocks) * BLOCK_K + offs_k
        r = tap // KW
        s = tap - r * KW
        ih = oh * STRIDE + r - PAD
        iw = ow * STRIDE + s - PAD
        pix_ok = m_valid & (ih >= 0) & (ih < H_IN) & (iw >= 0) & (iw < W_IN)
        k_ok = kk < C
        a = _source_tile(x_ptr, sxn, sxc, sxh, sxw, img, ih, iw, pix_ok, kk, k_ok, H_SRC, W_SRC, OFF_H, OFF_W,
                         H_UP, W_UP, SCALE_H, SCALE_W, scale_ptr, shift_ptr, IN_NEG_SLOPE, UP_MODE, NORM, IN_ACT)
        a = _output_grad_tile(a, out_ptr, son, soc, soh, sow, pg_ptr, spn, spc, sph, spw, arg_ptr,
                              san, sac, sah, saw, img, ih, iw, pix_ok, kk, k_ok, H_IN, W_IN, NEG_SLOPE,
                              ACT_GRAD, POOL_GRAD)
        if FLIP_WEIGHT:
            w_tap = (KH - 1 - r) * swh + (KW - 1 - s) * sww
        else:
            w_tap = (r + phase_h) * swh + (s + phase_w) * sww
        b = tl.load(w_ptr + w_tap + (K_OFF + kk)[:, None] * swk + offs_n[None, :] * swn,
                    mask=k_ok[:, None] & n_valid[None, :], other=0.0)
        acc += tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=INPUT_PRECISION)
    return acc


# The autotune keys hold the shapes and every flag that changes which config is best (or allowed: configs.fits).
@triton.autotune(configs=configs("conv2d_implicit_gemm"),
                 prune_configs_by={"early_config_prune": prune_by_precision("conv2d_implicit_gemm")},
                 key=["C_IN", "C_IN2", "C_OUT", "H_OUT", "W_OUT", "KH", "STRIDE", "UPSAMPLE", "FLIP_WEIGHT", "UP_MODE",
                      "FUSE_POOL", "INPUT_PRECISION"])
@triton.jit
def conv2d_implicit_gemm_kernel(
    x_ptr, x2_ptr, w_ptr, bias_ptr, out_ptr, pool_grad_ptr, argmax_ptr, y_ptr, pool_ptr, pool_argmax_ptr,
    in_scale_ptr, in_shift_ptr, in2_scale_ptr, in2_shift_ptr, stats_ptr,
    BATCH, H_OUT, W_OUT, H_IN, W_IN, C_IN, C_IN2, C_OUT, K_OFF, K_OFF2,
    H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP, SCALE_H, SCALE_W, NEG_SLOPE, IN_NEG_SLOPE,
    sxn, sxc, sxh, sxw, s2n, s2c, s2h, s2w, swn, swk, swh, sww,
    son, soc, soh, sow, sgn, sgc, sgh, sgw, san, sac, sah, saw,
    syn, syc, syh, syw, spn, spc, sph, spw,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    UPSAMPLE: tl.constexpr, FLIP_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    ACT_GRAD: tl.constexpr, POOL_GRAD: tl.constexpr, TWO_SOURCES: tl.constexpr, UP_MODE: tl.constexpr,
    FUSE_POOL: tl.constexpr, NORM_INPUT: tl.constexpr, NORM_INPUT2: tl.constexpr, IN_ACT: tl.constexpr,
    STATS: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    phase_h = phase // UPSAMPLE
    phase_w = phase % UPSAMPLE

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    img, oh, ow, m_valid = _output_pixels(offs_m, BATCH, H_OUT, W_OUT, FUSE_POOL)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < C_OUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _accumulate_source(acc, x_ptr, sxn, sxc, sxh, sxw, C_IN, K_OFF, H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP,
                             SCALE_H, SCALE_W, w_ptr, swn, swk, swh, sww, offs_n, n_valid, img, oh, ow, m_valid,
                             H_IN, W_IN, phase_h, phase_w, out_ptr, son, soc, soh, sow, pool_grad_ptr,
                             sgn, sgc, sgh, sgw, argmax_ptr, san, sac, sah, saw, in_scale_ptr, in_shift_ptr,
                             NEG_SLOPE, IN_NEG_SLOPE, KH, KW, STRIDE, PAD, FLIP_WEIGHT, UP_MODE, ACT_GRAD, POOL_GRAD,
                             NORM_INPUT, IN_ACT, DOT_DTYPE, INPUT_PRECISION, BLOCK_K)
    if TWO_SOURCES:
        # The second half of a virtual concatenation: a plain tensor on the input grid (the skip connection).
        acc = _accumulate_source(acc, x2_ptr, s2n, s2c, s2h, s2w, C_IN2, K_OFF2, H_IN, W_IN, 0, 0, H_IN, W_IN,
                                 1.0, 1.0, w_ptr, swn, swk, swh, sww, offs_n, n_valid, img, oh, ow, m_valid,
                                 H_IN, W_IN, phase_h, phase_w, out_ptr, son, soc, soh, sow, pool_grad_ptr,
                                 sgn, sgc, sgh, sgw, argmax_ptr, san, sac, sah, saw, in2_scale_ptr, in2_shift_ptr,
                                 NEG_SLOPE, IN_NEG_SLOPE, KH, KW, STRIDE, PAD, FLIP_WEIGHT, 0, 0, False, NORM_INPUT2,
                                 IN_ACT, DOT_DTYPE, INPUT_PRECISION, BLOCK_K)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_valid, other=0.0).to(tl.float32)[None, :]
    acc = _activation(acc, NEG_SLOPE, ACT)
    y = acc.to(y_ptr.dtype.element_ty)
    y_row = img * syn + (oh * UPSAMPLE + phase_h) * syh + (ow * UPSAMPLE + phase_w) * syw
    tl.store(y_ptr + y_row[:, None] + offs_n[None, :] * syc, y, mask=m_valid[:, None] & n_valid[None, :])
    if STATS:
        # Batch-norm statistics of this tile (count, mean, sum of squared deviations per channel) into its own
        # workspace row: combined in a fixed order afterwards, so no float atomics and the same bits every run.
        rows = m_valid[:, None]
        v = tl.where(rows, y.to(tl.float32), 0.0)
        # Valid rows are the tile's first ones (STATS never walks pooling windows).
        count = tl.minimum(BATCH * H_OUT * W_OUT - pid_m * BLOCK_M, BLOCK_M).to(tl.float32)
        mean = tl.sum(v, axis=0) * (1.0 / count)
        dev = tl.where(rows, v - mean[None, :], 0.0)
        row = stats_ptr + pid_m.to(tl.int64) * 3 * C_OUT + offs_n
        tl.store(row, tl.zeros((BLOCK_N,), dtype=tl.float32) + count, mask=n_valid)
        tl.store(row + C_OUT, mean, mask=n_valid)
        tl.store(row + 2 * C_OUT, tl.sum(dev * dev, axis=0), mask=n_valid)
    if FUSE_POOL:
        # Pool the values as stored, so ties are broken exactly as a separate max-pool of ``y`` would.
        pooled, arg = _max_pool_rows(y.to(tl.float32), BLOCK_M, BLOCK_N)
        win = pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)
        ww = (W_OUT + 1) // 2
        wh = (H_OUT + 1) // 2
        px = win % ww
        py = (win // ww) % wh
        p_ok = (win < BATCH * wh * ww) & (py < H_OUT // 2) & (px < W_OUT // 2)
        p_off = (win // (ww * wh)).to(tl.int64) * spn + py * sph + px * spw
        p_mask = p_ok[:, None] & n_valid[None, :]
        tl.store(pool_ptr + p_off[:, None] + offs_n[None, :] * spc, pooled.to(pool_ptr.dtype.element_ty), mask=p_mask)
        tl.store(pool_argmax_ptr + p_off[:, None] + offs_n[None, :] * spc, arg.to(tl.uint8), mask=p_mask)


@triton.autotune(configs=configs("conv2d_weight_grad"),
                 prune_configs_by={"early_config_prune": prune_by_precision("conv2d_weight_grad")},
                 key=["C_A", "C_B", "H_A", "W_A", "KH", "STRIDE", "GRAD_OPERAND", "UP_MODE", "INPUT_PRECISION"])
@triton.jit
def conv2d_weight_grad_kernel(
    g_ptr, x_ptr, out_ptr, pool_grad_ptr, argmax_ptr, in_scale_ptr, in_shift_ptr, dw_ptr, db_ptr,
    BATCH, H_A, W_A, H_B, W_B, C_A, C_B, C_B_TOTAL, B_OFF, PIX_PER_SPLIT,
    H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP, SCALE_H, SCALE_W, NEG_SLOPE, IN_NEG_SLOPE,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, son, soc, soh, sow, spn, spc, sph, spw, san, sac, sah, saw,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    GRAD_OPERAND: tl.constexpr, ACT_GRAD: tl.constexpr, POOL_GRAD: tl.constexpr, BIAS_GRAD: tl.constexpr,
    UP_MODE: tl.constexpr, NORM_INPUT: tl.constexpr, IN_ACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Operand a is indexed at pixel p of its [H_A, W_A] grid, operand b at p * STRIDE + tap - PAD of its
    [H_B, W_B] grid. GRAD_OPERAND says which one is the output gradient ``g`` (1: a conv, 2: a transposed conv);
    the other is the input ``x``, read like the forward read it (UP_MODE, offset, NORM_INPUT). The gradient
    gets the pool's scatter and the activation's backward while loaded; its pixel sum is the bias-grad.
    Workspaces are contiguous: dw [SPLIT, C_A, C_B_TOTAL, KH, KW] (columns B_OFF...), db [SPLIT, KH*KW, C of g]."""
    pid_m = tl.program_id(0)
    pid_nt = tl.program_id(1)
    split = tl.program_id(2)
    num_b_tiles = tl.cdiv(C_B, BLOCK_N)
    tap = pid_nt // num_b_tiles
    r = tap // KW
    s = tap % KW

    offs_a = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    a_ok = offs_a < C_A
    offs_b = (pid_nt % num_b_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = offs_b < C_B
    num_pix = BATCH * H_A * W_A
    p_start = split * PIX_PER_SPLIT
    p_end = tl.minimum(p_start + PIX_PER_SPLIT, num_pix)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GRAD_OPERAND == 1:
        bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    else:
        bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_K):
        p = p0 + tl.arange(0, BLOCK_K)
        p_ok = p < p_end
        pw = p % W_A
        ph = (p // W_A) % H_A
        img = (p // (W_A * H_A)).to(tl.int64)
        ih = ph * STRIDE + r - PAD
        iw = pw * STRIDE + s - PAD
        pb_ok = p_ok & (ih >= 0) & (ih < H_B) & (iw >= 0) & (iw < W_B)
        if GRAD_OPERAND == 1:
            a = _source_tile(g_ptr, sgn, sgc, sgh, sgw, img, ph, pw, p_ok, offs_a, a_ok,
                             H_A, W_A, 0, 0, H_A, W_A, 1.0, 1.0, g_ptr, g_ptr, 0.0, 0, False, 0)
            a = _output_grad_tile(a, out_ptr, son, soc, soh, sow, pool_grad_ptr, spn, spc, sph, spw, argmax_ptr,
                                  san, sac, sah, saw, img, ph, pw, p_ok, offs_a, a_ok, H_A, W_A, NEG_SLOPE,
                                  ACT_GRAD, POOL_GRAD)
            b = _source_tile(x_ptr, sxn, sxc, sxh, sxw, img, ih, iw, pb_ok, offs_b, b_ok, H_SRC, W_SRC, OFF_H, OFF_W,
                             H_UP, W_UP, SCALE_H, SCALE_W, in_scale_ptr, in_shift_ptr, IN_NEG_SLOPE, UP_MODE,
                             NORM_INPUT, IN_ACT)
            if BIAS_GRAD:
                bias_acc += tl.sum(a.to(tl.float32), axis=0)
        else:
            a = _source_tile(x_ptr, sxn, sxc, sxh, sxw, img, ph, pw, p_ok, offs_a, a_ok, H_A, W_A, 0, 0, H_A, W_A,
                             1.0, 1.0, in_scale_ptr, in_shift_ptr, IN_NEG_SLOPE, 0, NORM_INPUT, IN_ACT)
            b = _source_tile(g_ptr, sgn, sgc, sgh, sgw, img, ih, iw, pb_ok, offs_b, b_ok,
                             H_B, W_B, 0, 0, H_B, W_B, 1.0, 1.0, g_ptr, g_ptr, 0.0, 0, False, 0)
            b = _output_grad_tile(b, out_ptr, son, soc, soh, sow, pool_grad_ptr, spn, spc, sph, spw, argmax_ptr,
                                  san, sac, sah, saw, img, ih, iw, pb_ok, offs_b, b_ok, H_B, W_B, NEG_SLOPE,
                                  ACT_GRAD, POOL_GRAD)
            if BIAS_GRAD:
                bias_acc += tl.sum(b.to(tl.float32), axis=0)
        acc += tl.dot(tl.trans(a.to(DOT_DTYPE)), b.to(DOT_DTYPE), input_precision=INPUT_PRECISION)

    taps = KH * KW
    dw_off = ((split * C_A + offs_a[:, None]) * C_B_TOTAL + B_OFF + offs_b[None, :]) * taps + tap
    tl.store(dw_ptr + dw_off, acc, mask=a_ok[:, None] & b_ok[None, :])
    # Bias-grad: one program row stores it (the sum was computed by every program of that row).
    if BIAS_GRAD:
        if GRAD_OPERAND == 1:
            if pid_nt == 0:
                tl.store(db_ptr + split * taps * C_A + offs_a, bias_acc, mask=a_ok)
        else:
            if pid_m == 0:
                tl.store(db_ptr + (split * taps + tap) * C_B + offs_b, bias_acc, mask=b_ok)


def _dot_dtype(dtype):
    # The interpreter's bf16 arithmetic is broken: upcast to fp32 there (exact), keep bf16 MMA on the GPU.
    if INTERPRETED and dtype == torch.bfloat16:
        return tl.float32
    return _DOT_DTYPES[dtype]


def _input_precision(dtype):
    # Same rule as nn.Conv2d: fp32 may use TF32 tensor cores only when cuDNN is allowed to.
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def _placement(src, height, width, up_mode=None, align_corners=False):
    """How ``src`` is read onto a [height, width] grid: up-sampled x2 (``up_mode`` nearest / bilinear) or as is,
    then zero-padded centred (the ``F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])`` of popular
    U-Nets). Returns UP_MODE and the kernels' (H_SRC, W_SRC, OFF_H, OFF_W, H_UP, W_UP, SCALE_H, SCALE_W)."""
    h_src, w_src = src.shape[2], src.shape[3]
    factor = 1 if up_mode is None else 2
    h_up, w_up = factor * h_src, factor * w_src
    mode = UP_MODES["bilinear_align_corners" if up_mode == "bilinear" and align_corners else up_mode]

    def scale(n_src, n_up):
        # PyTorch's source-index scale for a x2 resize (1 / scale_factor without align_corners).
        if mode == 3:
            return (n_src - 1) / (n_up - 1) if n_up > 1 else 0.0
        return 0.5

    return mode, (h_src, w_src, (height - h_up) // 2, (width - w_up) // 2, h_up, w_up, scale(h_src, h_up),
                  scale(w_src, w_up))


_NO_STRIDES = (0, 0, 0, 0)


def _strides(t):
    return t.stride() if t is not None else _NO_STRIDES


def _implicit_gemm(x, weight, y, *, bias=None, activation=None, negative_slope=0.0, stride=1, pad=0, upsample=1,
                   flip_weight=False, placement=None, skip=None, k_offsets=(0, 0), out=None, act_grad=None,
                   pool_grad=None, pool_out=None, norm=None, skip_norm=None, in_activation=None,
                   in_negative_slope=0.0, stats=None):
    """y[p, n] over the pixel grid of ``y`` (divided by ``upsample``); ``weight`` is [C_out, C_in, KH, KW] in
    logical order (any strides). ``x`` is read through ``placement`` (default: as is), ``skip`` is the second
    source of a virtual concatenation (weight channels ``k_offsets``). ``norm`` / ``skip_norm``: (scale, shift) of
    a source's pending batch norm, applied with ``in_activation`` as it is read. Backward inputs: ``out`` (the
    saved output, for ``act_grad``) and ``pool_grad`` (grad of the pooled output, argmax). ``pool_out`` (pooled,
    argmax) turns the pooling epilogue on, ``stats`` (a zeroed workspace) the batch-statistics epilogue.
    Validation is the caller's job."""
    batch, c_in = x.shape[0], x.shape[1]
    c_out, _, kh, kw = weight.shape
    h_out, w_out = y.shape[2] // upsample, y.shape[3] // upsample
    h_in, w_in = (skip.shape[2], skip.shape[3]) if skip is not None else (x.shape[2], x.shape[3])
    if y.numel() == 0:
        return y
    if upsample != 1:
        kh = kw = 1
    up_mode, placement = placement or _placement(x, x.shape[2], x.shape[3])
    grad_pooled, argmax = pool_grad if pool_grad is not None else (None, None)
    pooled, pool_argmax = pool_out if pool_out is not None else (y, y)
    scale, shift = norm if norm is not None else (x, x)
    skip_scale, skip_shift = skip_norm if skip_norm is not None else (x, x)
    rows = batch * triton.cdiv(h_out, 2) * triton.cdiv(w_out, 2) * 4 if pool_out is not None else batch * h_out * w_out

    def grid(meta):
        return triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]), upsample * upsample

    conv2d_implicit_gemm_kernel[grid](
        x, skip if skip is not None else x, weight, bias if bias is not None else x, out if out is not None else x,
        grad_pooled if grad_pooled is not None else x, argmax if argmax is not None else x, y, pooled, pool_argmax,
        scale, shift, skip_scale, skip_shift, stats if stats is not None else x,
        batch, h_out, w_out, h_in, w_in, c_in, skip.shape[1] if skip is not None else 0, c_out, *k_offsets,
        *placement, float(negative_slope), float(in_negative_slope),
        *x.stride(), *_strides(skip), *weight.stride(), *_strides(out), *_strides(grad_pooled), *_strides(argmax),
        *y.stride(), *_strides(pool_out[0] if pool_out is not None else None),
        KH=kh, KW=kw, STRIDE=stride, PAD=pad, UPSAMPLE=upsample, FLIP_WEIGHT=flip_weight,
        HAS_BIAS=bias is not None, ACT=ACTIVATIONS[activation], ACT_GRAD=ACTIVATIONS[act_grad],
        POOL_GRAD=pool_grad is not None, TWO_SOURCES=skip is not None, UP_MODE=up_mode,
        FUSE_POOL=pool_out is not None, NORM_INPUT=norm is not None, NORM_INPUT2=skip_norm is not None,
        IN_ACT=ACTIVATIONS[in_activation if norm is not None or skip_norm is not None else None],
        STATS=stats is not None, DOT_DTYPE=_dot_dtype(x.dtype), INPUT_PRECISION=_input_precision(x.dtype),
    )
    return y


def _weight_grad(g, weight, sources, *, grad_operand, stride, pad, out=None, activation=None, negative_slope=0.0,
                 pool_grad=None, bias_grad=False, in_activation=None, in_negative_slope=0.0):
    """dw (fp32, [C_A, C_B_TOTAL, KH, KW] = the weight's logical shape) and db (fp32, or None without
    ``bias_grad``). ``sources`` are (x, placement, channel offset, norm) quadruples, the input operand of each
    launch (``norm``: (scale, shift) of its pending batch norm, or None)."""
    kh, kw = weight.shape[2], weight.shape[3]
    c_a, c_b_total = weight.shape[0], weight.shape[1]
    a_grid = g if grad_operand == 1 else sources[0][0]
    batch, _, h_a, w_a = a_grid.shape
    h_b, w_b = g.shape[2], g.shape[3]
    num_pix = batch * h_a * w_a
    split = _weight_grad_split(num_pix, c_a, c_b_total, kh * kw, g.device)
    pix_per_split = triton.cdiv(triton.cdiv(num_pix, split), WEIGHT_GRAD_PIXEL_CHUNK) * WEIGHT_GRAD_PIXEL_CHUNK
    split = max(1, triton.cdiv(num_pix, pix_per_split))
    dw = torch.zeros((split, c_a, c_b_total, kh, kw), device=g.device, dtype=torch.float32)
    db = torch.zeros((split, kh * kw, c_a if grad_operand == 1 else c_b_total), device=g.device, dtype=torch.float32)
    grad_pooled, argmax = pool_grad if pool_grad is not None else (None, None)
    for i, (x, (up_mode, placement), b_off, norm) in enumerate(sources if num_pix else ()):
        c_b = x.shape[1] if grad_operand == 1 else c_b_total
        scale, shift = norm if norm is not None else (g, g)

        def grid(meta, c_b=c_b):
            return triton.cdiv(c_a, meta["BLOCK_M"]), kh * kw * triton.cdiv(c_b, meta["BLOCK_N"]), split

        conv2d_weight_grad_kernel[grid](
            g, x, out if out is not None else g, grad_pooled if grad_pooled is not None else g,
            argmax if argmax is not None else g, scale, shift, dw, db,
            batch, h_a, w_a, h_b, w_b, c_a, c_b, c_b_total, b_off, pix_per_split, *placement, float(negative_slope),
            float(in_negative_slope),
            *g.stride(), *x.stride(), *_strides(out), *_strides(grad_pooled), *_strides(argmax),
            KH=kh, KW=kw, STRIDE=stride, PAD=pad, GRAD_OPERAND=grad_operand,
            ACT_GRAD=ACTIVATIONS[_act_grad(out, activation)], POOL_GRAD=pool_grad is not None,
            BIAS_GRAD=bias_grad and i == 0, UP_MODE=up_mode, NORM_INPUT=norm is not None,
            IN_ACT=ACTIVATIONS[in_activation if norm is not None else None],
            DOT_DTYPE=_dot_dtype(g.dtype), INPUT_PRECISION=_input_precision(g.dtype),
        )
    # Fixed-order reduction of the split workspace: the same bits on every run.
    return dw.sum(0), (db.sum((0, 1)) if bias_grad else None)


@functools.lru_cache(maxsize=None)
def _sm_count(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


def _weight_grad_split(num_pix, c_a, c_b, taps, device):
    """How many pixel chunks to split the weight-grad reduction into: enough programs to fill the GPU."""
    if INTERPRETED or device.type != "cuda":
        return 1
    sms = _sm_count(device)
    tiles = triton.cdiv(c_a, 64) * triton.cdiv(c_b, 64) * taps
    return max(1, min(triton.cdiv(2 * sms, tiles), triton.cdiv(num_pix, 4 * WEIGHT_GRAD_PIXEL_CHUNK)))


def _k_contiguous(weight):
    """A logical [C_out, C_in, KH, KW] weight stored [C_out, KH, KW, C_in] (channels_last): the GEMM's K runs
    along contiguous channels, so weight tiles load as vectors. Free when the weight already is."""
    return weight.contiguous(memory_format=torch.channels_last)


def _empty_channels_last(batch, channels, height, width, like):
    return torch.empty((batch, channels, height, width), device=like.device, dtype=like.dtype,
                       memory_format=torch.channels_last)


def _act_grad(out, activation):
    # The activation's backward needs its saved output; without one there is no activation to undo.
    return activation if out is not None else None


def _pool_grad(grad_pooled, argmax):
    return (grad_pooled, argmax) if grad_pooled is not None else None


# ---- public launchers: arguments were validated by fused_unet.kernels.checks ------------------------------
# ``activation`` is None, "relu" or "leaky_relu" (with ``negative_slope`` >= 0). Backward launchers take the
# forward's saved output ``out`` (None without activation): its sign is the activation's mask.
# ``in_scale`` / ``in_shift`` (per channel, fp32): the input is a conv's pre-norm output whose batch norm and
# ``in_activation`` are still pending; the kernel applies them as it reads the input (never stored).
# Each *_output function allocates what its launcher returns; torch.compile's fake ops call it for the shape.

def _norm(scale, shift):
    return (scale, shift) if scale is not None else None


def _in_act(in_activation, in_negative_slope):
    return dict(in_activation=in_activation, in_negative_slope=in_negative_slope)


def conv2d_output(x, weight):
    return _empty_channels_last(x.shape[0], weight.shape[0], x.shape[2], x.shape[3], x)


def conv2d_forward(x, weight, bias=None, activation=None, negative_slope=0.0, in_scale=None, in_shift=None,
                   in_activation=None, in_negative_slope=0.0):
    """Stride-1 'same' conv (+bias, +activation); output in channels_last memory format."""
    k = weight.shape[2]
    return _implicit_gemm(x, _k_contiguous(weight), conv2d_output(x, weight), bias=bias, activation=activation,
                          negative_slope=negative_slope, pad=k // 2, norm=_norm(in_scale, in_shift),
                          **_in_act(in_activation, in_negative_slope))


def stats_rows(pixels):
    """Rows of a batch-statistics workspace: one per GEMM row tile of the smallest BLOCK_M the kernel may use."""
    return max(1, triton.cdiv(pixels, min_block("conv2d_implicit_gemm", "BLOCK_M")))


def _stats_output(y):
    return torch.zeros((stats_rows(y.shape[0] * y.shape[2] * y.shape[3]), 3, y.shape[1]), device=y.device,
                       dtype=torch.float32)


def conv2d_stats_output(x, weight):
    y = conv2d_output(x, weight)
    return y, _stats_output(y)


def conv2d_stats_forward(x, weight, bias=None, in_scale=None, in_shift=None, in_activation=None,
                         in_negative_slope=0.0):
    """(y, stats) of a conv followed by a batch norm: y = conv(x) + bias, the pre-norm output, and per row tile
    its per-channel (count, mean, sum of squared deviations), for ``fused_unet.kernels.norm.batch_statistics``."""
    k = weight.shape[2]
    y, stats = conv2d_stats_output(x, weight)
    _implicit_gemm(x, _k_contiguous(weight), y, bias=bias, pad=k // 2, norm=_norm(in_scale, in_shift),
                   stats=stats, **_in_act(in_activation, in_negative_slope))
    return y, stats


def conv2d_pool_output(x, weight):
    y = conv2d_output(x, weight)
    pooled = _empty_channels_last(y.shape[0], y.shape[1], y.shape[2] // 2, y.shape[3] // 2, y)
    return y, pooled, torch.empty_like(pooled, dtype=torch.uint8)


def conv2d_pool_forward(x, weight, bias=None, activation=None, negative_slope=0.0):
    """(y, max_pool2d(y, 2), argmax uint8 = dy*2+dx) of y = conv2d_forward(...), from one kernel: the GEMM walks
    2x2 windows, so the epilogue stores the full-resolution output and pools it in registers."""
    k = weight.shape[2]
    y, pooled, argmax = conv2d_pool_output(x, weight)
    _implicit_gemm(x, _k_contiguous(weight), y, bias=bias, activation=activation, negative_slope=negative_slope,
                   pad=k // 2, pool_out=(pooled, argmax))
    return y, pooled, argmax


def _concat_sources(up, skip, up_mode, align_corners, up_first, up_norm=None, skip_norm=None):
    """(source, placement, weight channel offset, norm) of the two halves of cat([up, skip]) (or [skip, up])."""
    height, width = skip.shape[2], skip.shape[3]
    c_up, c_skip = up.shape[1], skip.shape[1]
    return [(up, _placement(up, height, width, up_mode, align_corners), 0 if up_first else c_skip, up_norm),
            (skip, _placement(skip, height, width), c_up if up_first else 0, skip_norm)]


def _concat_conv(up, skip, weight, y, up_mode, align_corners, up_first, up_norm, skip_norm, **kwargs):
    (_, placement, up_off, _), (_, _, skip_off, _) = _concat_sources(up, skip, up_mode, align_corners, up_first)
    return _implicit_gemm(up, _k_contiguous(weight), y, pad=weight.shape[2] // 2, placement=placement, skip=skip,
                          k_offsets=(up_off, skip_off), norm=up_norm, skip_norm=skip_norm, **kwargs)


def concat_conv2d_forward(up, skip, weight, bias=None, activation=None, negative_slope=0.0, up_mode=None,
                          align_corners=False, up_first=True, up_scale=None, up_shift=None, skip_scale=None,
                          skip_shift=None, in_activation=None, in_negative_slope=0.0):
    """conv2d_forward of cat([pad(upsample(up)), skip], 1) (or [skip, up]) without building the concatenation:
    the GEMM's K loop reads the two tensors, up-sampling ``up`` x2 on the fly (``up_mode`` nearest / bilinear)
    and zero-padding it centred to the skip's size."""
    return _concat_conv(up, skip, weight, conv2d_output(skip, weight), up_mode, align_corners, up_first,
                        _norm(up_scale, up_shift), _norm(skip_scale, skip_shift), bias=bias, activation=activation,
                        negative_slope=negative_slope, **_in_act(in_activation, in_negative_slope))


def concat_conv2d_stats_forward(up, skip, weight, bias=None, up_mode=None, align_corners=False, up_first=True,
                                up_scale=None, up_shift=None, skip_scale=None, skip_shift=None, in_activation=None,
                                in_negative_slope=0.0):
    """(y, stats) of concat_conv2d_forward followed by a batch norm (see conv2d_stats_forward)."""
    y, stats = conv2d_stats_output(skip, weight)
    _concat_conv(up, skip, weight, y, up_mode, align_corners, up_first, _norm(up_scale, up_shift),
                 _norm(skip_scale, skip_shift), bias=bias, stats=stats, **_in_act(in_activation, in_negative_slope))
    return y, stats


def conv2d_input_grad_output(grad_out, weight):
    return _empty_channels_last(grad_out.shape[0], weight.shape[1], grad_out.shape[2], grad_out.shape[3], grad_out)


def conv2d_input_grad(grad_out, weight, out=None, activation=None, negative_slope=0.0, grad_pooled=None,
                      argmax=None):
    """dL/dx (all C_in channels, a concatenation's too) of conv2d_forward / conv2d_pool_forward /
    concat_conv2d_forward at the conv's input grid. ``grad_pooled`` + ``argmax``: the pooled output's gradient,
    scattered into grad_out while it is loaded, like the activation's mask."""
    k = weight.shape[2]
    # Input-grad is the same conv with weights transposed [C_in, C_out] and taps flipped.
    return _implicit_gemm(grad_out, _k_contiguous(weight.transpose(0, 1)), conv2d_input_grad_output(grad_out, weight),
                          pad=k - 1 - k // 2, flip_weight=True, out=out, act_grad=_act_grad(out, activation),
                          negative_slope=negative_slope, pool_grad=_pool_grad(grad_pooled, argmax))


def weight_grad_output(weight, bias_channels):
    """(dL/dweight, dL/dbias) as the weight-grad launchers return them ([0] when no bias-grad was asked for)."""
    return torch.empty_like(weight, memory_format=torch.contiguous_format), weight.new_empty((bias_channels,))


def _in_weight_dtype(dw, db, weight):
    return dw.to(weight.dtype), (db.to(weight.dtype) if db is not None else weight.new_empty((0,)))


def conv2d_weight_grad(grad_out, x, weight, out=None, activation=None, negative_slope=0.0, bias_grad=True,
                       grad_pooled=None, argmax=None, skip=None, up_mode=None, align_corners=False, up_first=True,
                       in_scale=None, in_shift=None, skip_scale=None, skip_shift=None, in_activation=None,
                       in_negative_slope=0.0):
    """(dL/dweight, dL/dbias) in the weight's dtype of the conv launchers above (``skip`` given: of the
    concatenating conv with ``x`` as its ``up``); dL/dbias is empty unless ``bias_grad``. The input is read as
    the forward read it, pending batch norms (``in_*``, ``skip_*``) included."""
    k = weight.shape[2]
    if skip is None:
        sources = [(x, _placement(x, x.shape[2], x.shape[3]), 0, _norm(in_scale, in_shift))]
    else:
        sources = _concat_sources(x, skip, up_mode, align_corners, up_first, _norm(in_scale, in_shift),
                                  _norm(skip_scale, skip_shift))
    dw, db = _weight_grad(grad_out, weight, sources, grad_operand=1, stride=1, pad=k // 2, out=out,
                          activation=activation, negative_slope=negative_slope,
                          pool_grad=_pool_grad(grad_pooled, argmax), bias_grad=bias_grad,
                          **_in_act(in_activation, in_negative_slope))
    return _in_weight_dtype(dw, db, weight)


def conv_transpose2x2_output(x, weight):
    return _empty_channels_last(x.shape[0], weight.shape[1], 2 * x.shape[2], 2 * x.shape[3], x)


def conv_transpose2x2_forward(x, weight, bias=None, activation=None, negative_slope=0.0, in_scale=None,
                              in_shift=None, in_activation=None, in_negative_slope=0.0):
    """2x2 stride-2 transposed conv (+bias, +activation) as a GEMM with a depth-to-space store."""
    return _implicit_gemm(x, _k_contiguous(weight.transpose(0, 1)), conv_transpose2x2_output(x, weight), bias=bias,
                          activation=activation, negative_slope=negative_slope, upsample=2,
                          norm=_norm(in_scale, in_shift), **_in_act(in_activation, in_negative_slope))


def conv_transpose2x2_input_grad_output(grad_out, weight):
    return _empty_channels_last(grad_out.shape[0], weight.shape[0], grad_out.shape[2] // 2, grad_out.shape[3] // 2,
                                grad_out)


def conv_transpose2x2_input_grad(grad_out, weight, out=None, activation=None, negative_slope=0.0):
    """dL/dx of conv_transpose2x2_forward: a stride-2 2x2 conv of grad_out with the same weights."""
    return _implicit_gemm(grad_out, _k_contiguous(weight), conv_transpose2x2_input_grad_output(grad_out, weight),
                          stride=2, out=out, act_grad=_act_grad(out, activation),
                          negative_slope=negative_slope)


def conv_transpose2x2_weight_grad(grad_out, x, weight, out=None, activation=None, negative_slope=0.0,
                                  bias_grad=True, in_scale=None, in_shift=None, in_activation=None,
                                  in_negative_slope=0.0):
    """(dL/dweight, dL/dbias) of conv_transpose2x2_forward; dL/dbias is empty unless ``bias_grad``."""
    source = (x, _placement(x, x.shape[2], x.shape[3]), 0, _norm(in_scale, in_shift))
    dw, db = _weight_grad(grad_out, weight, [source], grad_operand=2, stride=2, pad=0, out=out,
                          activation=activation, negative_slope=negative_slope, bias_grad=bias_grad,
                          **_in_act(in_activation, in_negative_slope))
    return _in_weight_dtype(dw, db, weight)
