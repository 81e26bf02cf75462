"""The one registry of launch configurations, per kernel and backend.

GPU: a short autotune list per kernel. Interpreter: a single large-block config, because
``@triton.autotune`` cannot benchmark without a GPU driver and the interpreter's cost grows with the
number of programs times loop iterations, not with block size.
"""
import os

import triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _cfg(num_warps=4, num_stages=3, **blocks):
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


GPU_CONFIGS = {
    "conv2d_implicit_gemm": [
        _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
        _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
        _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
        _cfg(BLOCK_M=128, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=4),
        _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=4),
    ],
    "conv2d_weight_grad": [
        _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
        _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
        _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
        _cfg(BLOCK_M=32, BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=3),
    ],
    "max_pool2x2": [_cfg(BLOCK=1024, num_warps=4, num_stages=1)],
    "max_pool2x2_backward": [_cfg(BLOCK=1024, num_warps=4, num_stages=1)],
}

INTERPRETER_CONFIGS = {
    "conv2d_implicit_gemm": [_cfg(BLOCK_M=256, BLOCK_N=64, BLOCK_K=32)],
    "conv2d_weight_grad": [_cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=256)],
    "max_pool2x2": [_cfg(BLOCK=4096)],
    "max_pool2x2_backward": [_cfg(BLOCK=4096)],
}

# The weight-grad kernel splits its pixel (K) range into chunks that are a multiple of every BLOCK_K above.
WEIGHT_GRAD_PIXEL_CHUNK = 256


def configs(kernel):
    """The launch configurations the current backend may use for ``kernel``."""
    return (INTERPRETER_CONFIGS if INTERPRETED else GPU_CONFIGS)[kernel]
