"""The one registry of launch configurations, per kernel and backend.

GPU: a short autotune list per kernel. Interpreter: a single large-block config, because
``@triton.autotune`` cannot benchmark without a GPU driver and the interpreter's cost grows with the
number of programs times loop iterations, not with block size.
"""
import functools
import os

import triton

from . import interpreter_problem, interpreter_requested
from .codes import STATS_ROWS, Act, NormTable, UpMode

INTERPRETED = interpreter_requested()
# FUSED_UNET_TUNE=K: each launch takes its K-th registered config that fits (the last if fewer) instead of timing
# them all: a quick GPU test run (K=0) compiles one config per launch, and K=0..6 in parallel processes fill the
# Triton cache before a benchmark autotunes. tests/test_configs.py runs every config anyway.
TUNE_INDEX = int(os.environ["FUSED_UNET_TUNE"]) if os.environ.get("FUSED_UNET_TUNE", "").isdigit() else None

if INTERPRETED and (problem := interpreter_problem()):
    raise RuntimeError(f"{problem} (TRITON_INTERPRET=1 is set)")


def _cfg(num_warps=4, num_stages=3, **blocks):
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


# GPU autotune lists per kernel and precision class: "16bit" (fp16, bf16 tensor cores), "tf32" (fp32 operands on
# tensor cores: twice the register and shared-memory footprint) and "fp32" (IEEE fp32: FMA only, small tiles).
# Every entry passes `fused-unet doctor` on sm_90 and sm_80 (compiles, no spills, tensor-core MMA where expected);
# the 16-bit lists lead with the configs whose main loops reach the tensor-core ceiling (BLOCK_K 64).
GPU_CONFIGS = {
    "conv2d_implicit_gemm": {
        "16bit": [
            _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=128, BLOCK_N=256, BLOCK_K=32, num_warps=8, num_stages=2),
            _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=2),
            _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
            _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=4),
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
        ],
        "tf32": [
            _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2),
            _cfg(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2),
        ],
        "fp32": [
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=2),
            _cfg(BLOCK_M=32, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=2),
            _cfg(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2),
        ],
    },
    "conv2d_weight_grad": {
        "16bit": [
            _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2),
        ],
        "tf32": [
            _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2),
        ],
        "fp32": [
            _cfg(BLOCK_M=32, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=2),
            _cfg(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2),
        ],
    },
    "max_pool": {"any": [_cfg(BLOCK=1024, num_warps=4, num_stages=1)]},
    # One block size only: the launchers size their per-tile workspaces from it.
    "pending_norm": {"any": [_cfg(BLOCK_P=64, BLOCK_C=64, num_warps=4, num_stages=1)]},
    "batch_norm_act_backward": {"any": [_cfg(BLOCK_P=64, BLOCK_C=64, num_warps=4, num_stages=1)]},
    "conv_output_grad": {"any": [_cfg(BLOCK_P=64, BLOCK_C=64, num_warps=4, num_stages=1)]},
    "upsample2x_backward": {"any": [_cfg(BLOCK_P=32, BLOCK_C=64, num_warps=4, num_stages=1)]},
    "max_pool_backward": {"any": [_cfg(BLOCK=1024, num_warps=4, num_stages=1)]},
    # One block size only: the statistics' parts (and so their bits) must not depend on the config.
    "channel_statistics": {"any": [_cfg(BLOCK_P=128, BLOCK_C=64, num_warps=4, num_stages=1)]},
    # One block size only: the combine order (and so the bits) of a norm's statistics must not depend on the config.
    "norm_statistics": {"any": [_cfg(BLOCK_T=16, BLOCK_S=64, num_warps=4, num_stages=1)]},
    "norm_statistics_backward": {"any": [_cfg(BLOCK_S=64, num_warps=2, num_stages=1)]},
}

INTERPRETER_CONFIGS = {
    "conv2d_implicit_gemm": [_cfg(BLOCK_M=256, BLOCK_N=64, BLOCK_K=32)],
    "conv2d_weight_grad": [_cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=256)],
    "max_pool": [_cfg(BLOCK=4096)],
    "pending_norm": [_cfg(BLOCK_P=1024, BLOCK_C=64)],
    "batch_norm_act_backward": [_cfg(BLOCK_P=1024, BLOCK_C=64)],
    "conv_output_grad": [_cfg(BLOCK_P=1024, BLOCK_C=64)],
    "upsample2x_backward": [_cfg(BLOCK_P=1024, BLOCK_C=64)],
    "max_pool_backward": [_cfg(BLOCK=4096)],
    "channel_statistics": [_cfg(BLOCK_P=1024, BLOCK_C=64)],
    "norm_statistics": [_cfg(BLOCK_T=256, BLOCK_S=64)],
    "norm_statistics_backward": [_cfg(BLOCK_S=64)],
}

# The weight-grad kernel splits its pixel (K) range into chunks that are a multiple of every BLOCK_K above.
WEIGHT_GRAD_PIXEL_CHUNK = 256
# A norm's statistics over more tiles than this combine in two launches (kernels.norm.norm_statistics): a batch norm
# of a large batch has ~65k tiles per channel, too many for one program each. A multiple of every BLOCK_T.
TILES_PER_SPLIT = 1024
# An operand with fewer channels than this per tap (an RGB image, a few-class output) runs all its taps as one GEMM
# dimension (FLAT_TAPS, TAPS_ON_N): 16 is the narrowest K tile of a 16-bit tensor-core MMA.
FLAT_TAPS_CHANNELS = 16


def largest_pixel_block(kernel):
    """The most pixels one step of ``kernel`` spans, over every config (GPU and interpreter): BLOCK_M rows of the
    conv, BLOCK_K of the weight-grad. Images of at least this many pixels put a tile's rows in at most two images
    (a per-sample norm's NormTable.IMAGE_PAIR), whichever config runs."""
    block = "BLOCK_K" if kernel == "conv2d_weight_grad" else "BLOCK_M"
    return max(cfg.kwargs[block] for cfg in all_gpu_configs(kernel) + INTERPRETER_CONFIGS[kernel])


def even_k(block_k, *channels):
    """Whether every source's channel count is a multiple of BLOCK_K: the K loop then needs no channel mask, and
    its channel offset is a provable multiple of BLOCK_K (128-bit loads)."""
    return all(c % block_k == 0 for c in channels)


def pixel_bucket(pixels):
    """The autotune key of a launch's pixel count: the next power of two, so a new image size or batch re-tunes
    only when it moves to another bucket."""
    return triton.next_power_of_2(max(1, pixels))


def precision_class(dtype_name):
    """The GPU config list a dtype name of DTYPE_VARIANTS uses."""
    return {"fp16": "16bit", "bf16": "16bit"}.get(dtype_name, dtype_name)


def gpu_configs(kernel, dtype_name, flags=None, cc=90):
    """The GPU configs of ``kernel`` for a dtype name of DTYPE_VARIANTS, a launch's constexpr ``flags`` and a
    compute capability ``cc`` (90 for sm_90 and newer)."""
    classes = GPU_CONFIGS[kernel]
    listed = classes.get("any") or classes[precision_class(dtype_name)]
    return [cfg for cfg in listed if fits(cfg, flags or {}, cc)]


# Shared memory a CTA may use (bytes), per compute capability: the CUDA occupancy tables.
SHARED_MEMORY = {90: 232448, 80: 166912}


def _gathers_norm(flags):
    """Whether a GEMM launch reads a pending norm's fp32 scale and shift as [rows, channels] tiles beside the
    operand (kernels.conv._norm_affine): a gathered per-sample norm's, or a few-channel source's (FLAT_TAPS)."""
    pending = flags.get("NORM_INPUT") or flags.get("NORM_INPUT2")
    return bool(pending and (flags.get("NORM_TABLE") == NormTable.GATHER or flags.get("FLAT_TAPS")))


def _gathered_norm_shared_bytes(cfg, flags):
    """Shared memory of a GEMM config's pipeline when it gathers a pending norm's tables (_gathers_norm): each stage
    holds both operand tiles and the normalised one's fp32 scale and shift tiles."""
    bm, bn, bk = (cfg.kwargs.get(k, 0) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    element = 4 if str(flags.get("DOT_DTYPE")) == "fp32" else 2
    return cfg.num_stages * bk * ((bm + bn) * element + 2 * 4 * max(bm, bn))


def _ieee_fp32(flags):
    """Whether a GEMM launch multiplies fp32 operands without tensor cores (FMA: INPUT_PRECISION 'ieee')."""
    return str(flags.get("DOT_DTYPE")) == "fp32" and flags.get("INPUT_PRECISION") == "ieee"


def fits(cfg, flags, cc=90):
    """Whether a launch with constexpr ``flags`` may use ``cfg`` on compute capability ``cc``: what spilled inside a
    loop in `fused-unet doctor`. Per thread, the accumulator holds ``acc`` and the A tile ``a`` elements. sm_80's
    mma.sync keeps operand fragments in registers: no tile beyond 64 and 32, beside a normalised bilinear source or
    gathered norm tables no accumulator beyond 32, beside any pending norm no A tile beyond 16 with a 64-wide
    accumulator (Triton 3.6), beside a pending SiLU / GELU (exp, erf) no A tile beyond 16 (sm_90: 32, and 16
    beside a wide accumulator; sm_80: no 4-warp tile with a 64-wide accumulator) (Triton 3.6 and 3.8). Bilinear
    up-sampling keeps its four corner tiles in registers: two stages, no wide accumulator beside a pending norm;
    beside a SiLU / GELU no accumulator beyond 32, in three stages; in IEEE fp32 (FMA) beside a pending norm no
    32-row tile 64 wide (Triton 3.6, sm_90). The pooling and depth-to-space epilogues do not fit beside a wide
    accumulator, nor do the statistics on sm_80 (sm_90's per-image ones spill 80-160 bytes after the loop at
    128x256, the price of the wide tile); statistics need whole groups of STATS_ROWS rows. Gathered norm tables
    (_gathers_norm) are pipelined beside the operand tiles, every stage: they must fit the shared memory (the
    128x128x64 three-stage tile needed 241 KiB on sm_90)."""
    blocks, threads = cfg.kwargs, 32 * cfg.num_warps
    if flags.get("STATS") and blocks["BLOCK_M"] % STATS_ROWS:
        return False
    gathered = _gathers_norm(flags)
    if gathered and _gathered_norm_shared_bytes(cfg, flags) > SHARED_MEMORY[90 if cc >= 90 else 80]:
        return False
    acc = blocks.get("BLOCK_M", 0) * blocks.get("BLOCK_N", 0) // threads
    a = blocks.get("BLOCK_M", 0) * blocks.get("BLOCK_K", 0) // threads
    pending = flags.get("NORM_INPUT") or flags.get("NORM_INPUT2")
    transcendental = pending and flags.get("IN_ACT") in (Act.SILU, Act.GELU, Act.GELU_TANH)
    if cc < 90 and (acc > 64 or a > 32 or (gathered and acc > 32) or (pending and a > 16 and acc > 32)):
        return False
    if transcendental and (a > (32 if cc >= 90 else 16) or (a > 16 and acc > 64) or
                           (cc < 90 and cfg.num_warps < 8 and acc > 32)):
        return False
    if flags.get("UP_MODE", UpMode.NONE) >= UpMode.BILINEAR:
        if pending and _ieee_fp32(flags) and blocks["BLOCK_M"] < 64 < 2 * blocks["BLOCK_N"]:
            return False
        if cc < 90 and flags.get("NORM_INPUT"):
            # A per-sample norm's scale and shift tiles beside the corners spilled at four stages (Triton 3.6).
            return acc <= 32 and (cfg.num_stages <= 3 or not gathered)
        if transcendental:
            return acc <= 32 and cfg.num_stages <= 3
        return cfg.num_stages <= 2 and not (acc > 64 and flags.get("NORM_INPUT"))
    return not (acc > 64 and (flags.get("FUSE_POOL") or flags.get("PHASES") or (flags.get("STATS") and cc < 90)))


@functools.lru_cache(maxsize=None)
def device_capability(index):
    """sm_XY of a CUDA device as the integer XY."""
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def all_gpu_configs(kernel):
    """Every GPU config of ``kernel``, all precision classes."""
    return [cfg for group in GPU_CONFIGS[kernel].values() for cfg in group]


def configs(kernel):
    """The launch configurations the current backend may use for ``kernel`` (all precision classes)."""
    if INTERPRETED:
        return INTERPRETER_CONFIGS[kernel]
    return all_gpu_configs(kernel)


def prune_by_precision(kernel):
    """An autotune ``early_config_prune`` that keeps the configs of the launch's precision class."""
    def prune(candidates, named_args, **kwargs):
        if INTERPRETED or "any" in GPU_CONFIGS[kernel]:
            return candidates
        fp32_operands = str(kwargs.get("DOT_DTYPE")) == "fp32"
        name = ("tf32" if kwargs.get("INPUT_PRECISION") == "tf32" else "fp32") if fp32_operands else "16bit"
        import torch

        keep = GPU_CONFIGS[kernel][name]
        cc = device_capability(torch.cuda.current_device())
        kept = [cfg for cfg in candidates if cfg in keep and fits(cfg, kwargs, cc)]
        return kept if TUNE_INDEX is None or not kept else [kept[min(TUNE_INDEX, len(kept) - 1)]]

    return prune
