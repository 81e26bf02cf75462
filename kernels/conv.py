"""Implicit-GEMM convolution kernels and their launchers.

``conv2d_implicit_gemm_kernel`` computes, for every output pixel p and output channel n,
    y[p, n] = act(bias[n] + sum_{tap, k} x[p * STRIDE + tap - PAD, k] * w[n, k, tap])
and stores it at (UPSAMPLE * p + phase), so one kernel serves the conv forward (STRIDE 1, 'same'), the
conv input-grad (weights transposed and flipped), the 2x2/s2 transposed-conv forward (1x1 taps,
UPSAMPLE 2: depth-to-space store) and its input-grad (STRIDE 2, 2x2 taps).

``conv2d_weight_grad_kernel`` computes dw[m, n, tap] = sum_p a[p, m] * b[p * STRIDE + tap - PAD, n]
over a split of the pixels into a workspace, reduced afterwards in a fixed order (deterministic).
"""
import functools

import torch
import triton
import triton.language as tl

from .configs import INTERPRETED, WEIGHT_GRAD_PIXEL_CHUNK, configs, prune_by_precision

_DOT_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.autotune(configs=configs("conv2d_implicit_gemm"), prune_configs_by={"early_config_prune": prune_by_precision(
    "conv2d_implicit_gemm")}, key=["C_IN", "C_OUT", "H_OUT", "W_OUT", "KH", "STRIDE", "INPUT_PRECISION"])
@triton.jit
def conv2d_implicit_gemm_kernel(
    x_ptr, w_ptr, bias_ptr, mask_ptr, y_ptr,
    BATCH, H_OUT, W_OUT, H_IN, W_IN, C_IN, C_OUT,
    sxn, sxc, sxh, sxw,
    swn, swk, swh, sww,
    smn, smc, smh, smw,
    syn, syc, syh, syw,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    UPSAMPLE: tl.constexpr, FLIP_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, RELU_MASK_INPUT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    phase_h = phase // UPSAMPLE
    phase_w = phase % UPSAMPLE

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < BATCH * H_OUT * W_OUT
    ow = offs_m % W_OUT
    oh = (offs_m // W_OUT) % H_OUT
    img = (offs_m // (W_OUT * H_OUT)).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < C_OUT
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    x_img = img * sxn
    m_img = img * smn
    c_blocks = tl.cdiv(C_IN, BLOCK_K)
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
        k_ok = kk < C_IN
        a_mask = pix_ok[:, None] & k_ok[None, :]
        a = tl.load(x_ptr + (x_img + ih * sxh + iw * sxw)[:, None] + kk[None, :] * sxc, mask=a_mask,
                    other=0.0).to(DOT_DTYPE)
        if RELU_MASK_INPUT:
            # ReLU backward folded into the load: zero the gradient where the saved output is <= 0.
            out = tl.load(mask_ptr + (m_img + ih * smh + iw * smw)[:, None] + kk[None, :] * smc, mask=a_mask,
                          other=0.0)
            a = tl.where(out.to(tl.float32) <= 0.0, 0.0, a).to(DOT_DTYPE)
        if FLIP_WEIGHT:
            w_tap = (KH - 1 - r) * swh + (KW - 1 - s) * sww
        else:
            w_tap = (r + phase_h) * swh + (s + phase_w) * sww
        b = tl.load(w_ptr + w_tap + kk[:, None] * swk + offs_n[None, :] * swn,
                    mask=k_ok[:, None] & n_valid[None, :], other=0.0).to(DOT_DTYPE)
        acc += tl.dot(a, b, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_valid, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # keeps NaN, like torch.relu
    y_row = img * syn + (oh * UPSAMPLE + phase_h) * syh + (ow * UPSAMPLE + phase_w) * syw
    tl.store(y_ptr + y_row[:, None] + offs_n[None, :] * syc, acc.to(y_ptr.dtype.element_ty),
             mask=m_valid[:, None] & n_valid[None, :])


@triton.autotune(configs=configs("conv2d_weight_grad"), prune_configs_by={"early_config_prune": prune_by_precision(
    "conv2d_weight_grad")}, key=["C_A", "C_B", "H_A", "W_A", "KH", "STRIDE", "INPUT_PRECISION"])
@triton.jit
def conv2d_weight_grad_kernel(
    a_ptr, b_ptr, mask_ptr, dw_ptr, db_ptr,
    BATCH, H_A, W_A, H_B, W_B, C_A, C_B, PIX_PER_SPLIT,
    san, sac, sah, saw,
    sbn, sbc, sbh, sbw,
    smn, smc, smh, smw,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    RELU_MASK_OPERAND: tl.constexpr, BIAS_GRAD_OPERAND: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Operand 1 is ``a`` (indexed at p), operand 2 is ``b`` (indexed at the shifted tap position).
    RELU_MASK_OPERAND / BIAS_GRAD_OPERAND name the gradient operand (0: none); the mask tensor shares
    its indexing. Workspaces are contiguous: dw [SPLIT, C_A, C_B, KH, KW], db [SPLIT, KH*KW, C]."""
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
    if BIAS_GRAD_OPERAND == 1:
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

        a_mask = a_ok[:, None] & p_ok[None, :]
        a_off = (img * san + ph * sah + pw * saw)[None, :] + offs_a[:, None] * sac
        a = tl.load(a_ptr + a_off, mask=a_mask, other=0.0).to(DOT_DTYPE)
        b_mask = pb_ok[:, None] & b_ok[None, :]
        b_off = (img * sbn + ih * sbh + iw * sbw)[:, None] + offs_b[None, :] * sbc
        b = tl.load(b_ptr + b_off, mask=b_mask, other=0.0).to(DOT_DTYPE)
        if RELU_MASK_OPERAND == 1:
            m_off = (img * smn + ph * smh + pw * smw)[None, :] + offs_a[:, None] * smc
            out = tl.load(mask_ptr + m_off, mask=a_mask, other=0.0)
            a = tl.where(out.to(tl.float32) <= 0.0, 0.0, a).to(DOT_DTYPE)
        if RELU_MASK_OPERAND == 2:
            m_off = (img * smn + ih * smh + iw * smw)[:, None] + offs_b[None, :] * smc
            out = tl.load(mask_ptr + m_off, mask=b_mask, other=0.0)
            b = tl.where(out.to(tl.float32) <= 0.0, 0.0, b).to(DOT_DTYPE)
        acc += tl.dot(a, b, input_precision=INPUT_PRECISION)
        if BIAS_GRAD_OPERAND == 1:
            bias_acc += tl.sum(a.to(tl.float32), axis=1)
        if BIAS_GRAD_OPERAND == 2:
            bias_acc += tl.sum(b.to(tl.float32), axis=0)

    taps = KH * KW
    dw_off = ((split * C_A + offs_a[:, None]) * C_B + offs_b[None, :]) * taps + tap
    tl.store(dw_ptr + dw_off, acc, mask=a_ok[:, None] & b_ok[None, :])
    # Bias-grad: one program row stores it (the sum was computed by every program of that row).
    if BIAS_GRAD_OPERAND == 1:
        if pid_nt == 0:
            tl.store(db_ptr + split * taps * C_A + offs_a, bias_acc, mask=a_ok)
    if BIAS_GRAD_OPERAND == 2:
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


def _implicit_gemm(x, weight, y, *, bias=None, relu=False, relu_mask=None, stride=1, pad=0,
                   upsample=1, flip_weight=False):
    """y[p, n] over the pixel grid of ``y`` (divided by ``upsample``); ``weight`` is [C_out, C_in, KH, KW]
    in logical order (any strides). Validation is the caller's job."""
    batch, c_in, h_in, w_in = x.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = y.shape[2] // upsample, y.shape[3] // upsample
    if y.numel() == 0:
        return y
    if upsample != 1:
        kh = kw = 1
    mask = relu_mask if relu_mask is not None else x
    mask_strides = relu_mask.stride() if relu_mask is not None else (0, 0, 0, 0)

    def grid(meta):
        return (triton.cdiv(batch * h_out * w_out, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]),
                upsample * upsample)

    conv2d_implicit_gemm_kernel[grid](
        x, weight, bias if bias is not None else x, mask, y,
        batch, h_out, w_out, h_in, w_in, c_in, c_out,
        *x.stride(), *weight.stride(), *mask_strides, *y.stride(),
        KH=kh, KW=kw, STRIDE=stride, PAD=pad, UPSAMPLE=upsample, FLIP_WEIGHT=flip_weight,
        HAS_BIAS=bias is not None, RELU=relu, RELU_MASK_INPUT=relu_mask is not None,
        DOT_DTYPE=_dot_dtype(x.dtype), INPUT_PRECISION=_input_precision(x.dtype),
    )
    return y


def _weight_grad(a, b, weight_shape, *, stride, pad, relu_mask=None, mask_operand=0, bias_operand=0):
    """dw [C_A, C_B, KH, KW] (fp32) and, when ``bias_operand`` is set, db (fp32) summed over that operand."""
    batch, c_a, h_a, w_a = a.shape
    _, c_b, h_b, w_b = b.shape
    kh, kw = weight_shape[2], weight_shape[3]
    num_pix = batch * h_a * w_a
    split = _weight_grad_split(num_pix, c_a, c_b, kh * kw, a.device)
    pix_per_split = triton.cdiv(triton.cdiv(num_pix, split), WEIGHT_GRAD_PIXEL_CHUNK) * WEIGHT_GRAD_PIXEL_CHUNK
    split = max(1, triton.cdiv(num_pix, pix_per_split))
    dw = torch.zeros((split, c_a, c_b, kh, kw), device=a.device, dtype=torch.float32)
    bias_channels = c_a if bias_operand == 1 else c_b
    db = torch.zeros((split, kh * kw, bias_channels), device=a.device, dtype=torch.float32)
    if num_pix > 0:
        mask = relu_mask if relu_mask is not None else a
        mask_strides = relu_mask.stride() if relu_mask is not None else (0, 0, 0, 0)

        def grid(meta):
            return (triton.cdiv(c_a, meta["BLOCK_M"]), kh * kw * triton.cdiv(c_b, meta["BLOCK_N"]), split)

        conv2d_weight_grad_kernel[grid](
            a, b, mask, dw, db,
            batch, h_a, w_a, h_b, w_b, c_a, c_b, pix_per_split,
            *a.stride(), *b.stride(), *mask_strides,
            KH=kh, KW=kw, STRIDE=stride, PAD=pad,
            RELU_MASK_OPERAND=mask_operand if relu_mask is not None else 0, BIAS_GRAD_OPERAND=bias_operand,
            DOT_DTYPE=_dot_dtype(a.dtype), INPUT_PRECISION=_input_precision(a.dtype),
        )
    # Fixed-order reduction of the split workspace: the same bits on every run.
    return dw.sum(0), (db.sum((0, 1)) if bias_operand else None)


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


# ---- public launchers: arguments were validated by fused_unet.kernels.checks ------------------------------
# Each *_output function allocates what its launcher returns; torch.compile's fake ops call it for the shape.

def conv2d_output(x, weight):
    return _empty_channels_last(x.shape[0], weight.shape[0], x.shape[2], x.shape[3], x)


def conv2d_forward(x, weight, bias=None, relu=False):
    """Stride-1 'same' conv (+bias, +ReLU); output in channels_last memory format."""
    k = weight.shape[2]
    return _implicit_gemm(x, _k_contiguous(weight), conv2d_output(x, weight), bias=bias, relu=relu, pad=k // 2)


def conv2d_input_grad_output(grad_out, weight):
    return _empty_channels_last(grad_out.shape[0], weight.shape[1], grad_out.shape[2], grad_out.shape[3], grad_out)


def conv2d_input_grad(grad_out, weight, out=None):
    """dL/dx of conv2d_forward; ``out`` (the saved ReLU output) masks grad_out while it is loaded."""
    k = weight.shape[2]
    # Input-grad is the same conv with weights transposed [C_in, C_out] and taps flipped.
    return _implicit_gemm(grad_out, _k_contiguous(weight.transpose(0, 1)), conv2d_input_grad_output(grad_out, weight),
                          relu_mask=out, pad=k - 1 - k // 2, flip_weight=True)


def weight_grad_output(weight, bias_channels):
    """(dL/dweight, dL/dbias) as the weight-grad launchers return them ([0] when no bias-grad was asked for)."""
    return torch.empty_like(weight, memory_format=torch.contiguous_format), weight.new_empty((bias_channels,))


def _in_weight_dtype(dw, db, weight):
    return dw.to(weight.dtype), (db.to(weight.dtype) if db is not None else weight.new_empty((0,)))


def conv2d_weight_grad(grad_out, x, weight, out=None, bias_grad=True):
    """(dL/dweight, dL/dbias) of conv2d_forward in the weight's dtype; dL/dbias is empty unless ``bias_grad``."""
    k = weight.shape[2]
    dw, db = _weight_grad(grad_out, x, weight.shape, stride=1, pad=k // 2, relu_mask=out, mask_operand=1,
                          bias_operand=1 if bias_grad else 0)
    return _in_weight_dtype(dw, db, weight)


def conv_transpose2x2_output(x, weight):
    return _empty_channels_last(x.shape[0], weight.shape[1], 2 * x.shape[2], 2 * x.shape[3], x)


def conv_transpose2x2_forward(x, weight, bias=None, relu=False, out=None):
    """2x2 stride-2 transposed conv (+bias, +ReLU) as a GEMM with a depth-to-space store.
    ``out`` may be a strided view, e.g. a channel slice of a preallocated concat buffer."""
    if out is None:
        out = conv_transpose2x2_output(x, weight)
    return _implicit_gemm(x, _k_contiguous(weight.transpose(0, 1)), out, bias=bias, relu=relu, upsample=2)


def conv_transpose2x2_input_grad_output(grad_out, weight):
    return _empty_channels_last(grad_out.shape[0], weight.shape[0], grad_out.shape[2] // 2, grad_out.shape[3] // 2,
                                grad_out)


def conv_transpose2x2_input_grad(grad_out, weight, out=None):
    """dL/dx of conv_transpose2x2_forward: a stride-2 2x2 conv of grad_out with the same weights."""
    return _implicit_gemm(grad_out, _k_contiguous(weight), conv_transpose2x2_input_grad_output(grad_out, weight),
                          relu_mask=out, stride=2)


def conv_transpose2x2_weight_grad(grad_out, x, weight, out=None, bias_grad=True):
    """(dL/dweight, dL/dbias) of conv_transpose2x2_forward; dL/dbias is empty unless ``bias_grad``."""
    dw, db = _weight_grad(x, grad_out, weight.shape, stride=2, pad=0, relu_mask=out, mask_operand=2,
                          bias_operand=2 if bias_grad else 0)
    return _in_weight_dtype(dw, db, weight)


def up_concat_output(x, skip, weight):
    return _empty_channels_last(x.shape[0], weight.shape[1] + skip.shape[1], 2 * x.shape[2], 2 * x.shape[3], x)


def up_concat_forward(x, skip, weight, bias=None, relu=True):
    """cat([act(conv_transpose2x2(x)), skip], 1) without torch.cat: the transposed conv stores into the first
    channel slice of one channels_last buffer and the skip is copied into the second."""
    buf = up_concat_output(x, skip, weight)
    c_up = weight.shape[1]
    conv_transpose2x2_forward(x, weight, bias, relu, out=buf[:, :c_up])
    buf[:, c_up:].copy_(skip)
    return buf
