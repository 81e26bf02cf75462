"""The adjoint of the x2 up-sampling the concatenating conv reads its ``up`` source through (nearest, bilinear,
bilinear with align_corners), as a gather: each source pixel sums the gradient of the output pixels that read it,
in a fixed order. Deterministic (no atomics, unlike aten's CUDA bilinear backward) and allowed under
``torch.use_deterministic_algorithms(True)``."""
import torch
import triton
import triton.language as tl

from .common import (UP_BILINEAR_ALIGN_CORNERS, UP_NEAREST, linear_source, pixel_channel_grid, pixel_channel_tile,
                     source_placement)
from .configs import configs
from .specs import UPSAMPLE2X_BACKWARD, UPSAMPLE_WINDOWS


@triton.jit
def _reads(u, i, N_SRC, N_UP, SCALE, UP_MODE: tl.constexpr):
    """The weight with which up-sampled position u (of N_UP) reads source index i (of N_SRC): the forward's own
    index math, so the adjoint is exact; 0 where u is outside [0, N_UP)."""
    if UP_MODE == UP_NEAREST:
        weight = (u // 2 == i).to(tl.float32)
    else:
        i0, i1, lam = linear_source(u, N_SRC, SCALE, UP_MODE == UP_BILINEAR_ALIGN_CORNERS)
        weight = tl.where(i0 == i, 1.0 - lam, 0.0) + tl.where(i1 == i, lam, 0.0)
    return tl.where((u >= 0) & (u < N_UP), weight, 0.0)


@triton.jit
def _first_reader(i, SCALE, UP_MODE: tl.constexpr):
    """A position at or before the first up-sampled position that reads source index i."""
    if UP_MODE == UP_NEAREST:
        return 2 * i
    if UP_MODE == UP_BILINEAR_ALIGN_CORNERS:
        # align_corners: u * SCALE lands in (i - 1, i + 1); one earlier absorbs the float rounding.
        # SCALE 0 (one source pixel): every position reads it, from 0.
        return tl.where(SCALE > 0.0, ((i - 1).to(tl.float32) / tl.where(SCALE > 0.0, SCALE, 1.0)).to(tl.int32) - 1, 0)
    return 2 * i - 1


@triton.autotune(configs=configs(UPSAMPLE2X_BACKWARD.name), key=UPSAMPLE2X_BACKWARD.autotune_key)
@triton.jit
def upsample2x_backward_kernel(
    g_ptr,  # dL/d up-sampled [N, C, H_UP, W_UP]
    dx_ptr,  # dL/dx [N, C, H, W]
    PIXELS, C, H, W,  # N * H * W, and x's shape
    H_UP, W_UP,  # the up-sampled size
    SCALE_H, SCALE_W,  # the forward's source-index scales (see common.source_placement)
    g_strides, dx_strides,  # (n, c, h, w) strides
    UP_MODE: tl.constexpr,  # the up-sampling (codes.UpMode)
    WINDOW: tl.constexpr,  # up-sampled positions per axis that may read one source index (specs.UPSAMPLE_WINDOWS)
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,  # pixels x channels per program
):
    """Parameters: specs.UPSAMPLE2X_BACKWARD. dx[n, c, i, j] = sum over the WINDOW x WINDOW up-sampled positions
    from (_first_reader(i), _first_reader(j)) of g[n, c, u, v] * reads(u, i) * reads(v, j)."""
    sgn, sgc, sgh, sgw = g_strides
    sxn, sxc, sxh, sxw = dx_strides
    pid_p, offs_p, offs_c, c_ok, mask, img, i, j = pixel_channel_tile(PIXELS, C, H, W, BLOCK_P, BLOCK_C)
    u0 = _first_reader(i, SCALE_H, UP_MODE)
    v0 = _first_reader(j, SCALE_W, UP_MODE)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    # Loops, not unrolled: WINDOW² masked gathers unrolled spill (fused-unet doctor).
    for du in range(WINDOW):
        u = u0 + du
        row_weight = _reads(u, i, H, H_UP, SCALE_H, UP_MODE)
        for dv in range(WINDOW):
            v = v0 + dv
            weight = row_weight * _reads(v, j, W, W_UP, SCALE_W, UP_MODE)
            ok = mask & (weight != 0.0)[:, None]
            g = tl.load(g_ptr + (img * sgn + u.to(tl.int64) * sgh + v * sgw)[:, None] + offs_c[None, :] * sgc, mask=ok,
                        other=0.0)
            acc += weight[:, None] * g.to(tl.float32)
    tl.store(dx_ptr + (img * sxn + i * sxh + j * sxw)[:, None] + offs_c[None, :] * sxc,
             acc.to(dx_ptr.dtype.element_ty), mask=mask)


def upsample2x_backward_output(grad, input_shape):
    return torch.empty(input_shape, device=grad.device, dtype=grad.dtype, memory_format=torch.channels_last)


def upsample2x_backward(grad, input_shape, up_mode, align_corners=False):
    """dL/dx of ``F.interpolate(x, scale_factor=2, mode=up_mode, align_corners=...)`` for x of ``input_shape``,
    from ``grad`` ([N, C, 2H, 2W], any strides)."""
    batch, c, h, w = input_shape
    dx = upsample2x_backward_output(grad, input_shape)
    mode, (_, _, _, _, h_up, w_up, scale_h, scale_w) = source_placement(dx, 2 * h, 2 * w, up_mode, align_corners)
    pixels = batch * h * w
    if pixels:
        UPSAMPLE2X_BACKWARD.launch(
            upsample2x_backward_kernel, pixel_channel_grid(pixels, c), g_ptr=grad, dx_ptr=dx, PIXELS=pixels, C=c,
            H=h, W=w, H_UP=h_up, W_UP=w_up, SCALE_H=scale_h, SCALE_W=scale_w, g_strides=grad.stride(),
            dx_strides=dx.stride(), UP_MODE=mode, WINDOW=UPSAMPLE_WINDOWS[mode])
    return dx
