"""Yardstick kernels for ``fused-unet doctor``: never launched, only compiled beside ours with the same ptxas, so
a change in the toolchain's main loops shows in them too and cannot pass for a regression in our code.

``matmul_kernel`` is Triton's tutorial GEMM; ``nested_conv3x3_kernel`` the plain nested-loop implicit-GEMM
3x3 'same' conv of channels_last fp16 tensors (static loop over taps, channel blocks inside, per-tap offsets and
border mask computed once per tap). Both are compiled for C_IN, C_OUT, K, N multiples of 16."""
import triton
import triton.language as tl


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_bk, stride_cm,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + (offs_m % M)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + (offs_n % N)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_K, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_K, other=0.0)
        acc += tl.dot(a, b)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk
    c = acc.to(c_ptr.dtype.element_ty)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], c,
             mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.jit
def nested_conv3x3_kernel(x_ptr, w_ptr, y_ptr, PIXELS, H, W, C_IN, C_OUT,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    ow = offs_m % W
    oh = (offs_m // W) % H
    m_ok = offs_m < PIXELS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in tl.static_range(9):
        ih = oh + tap // 3 - 1
        iw = ow + tap % 3 - 1
        ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        rows = (offs_m + (tap // 3 - 1) * W + (tap % 3 - 1)) * C_IN
        for c0 in range(0, C_IN, BLOCK_K):
            a = tl.load(x_ptr + rows[:, None] + (c0 + offs_k)[None, :], mask=ok[:, None], other=0.0)
            b = tl.load(w_ptr + offs_n[None, :] * (9 * C_IN) + (tap * C_IN + c0 + offs_k)[:, None])
            acc += tl.dot(a, b)
    tl.store(y_ptr + offs_m[:, None] * C_OUT + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None])
