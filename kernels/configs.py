"""The one registry of launch configurations, per kernel and backend.

GPU: a short autotune list per kernel. Interpreter: a single large-block config, because
``@triton.autotune`` cannot benchmark without a GPU driver and the interpreter's cost grows with the
number of programs times loop iterations, not with block size.
"""
import functools
import os

import triton

from . import interpreter_problem, interpreter_requested
from .codes import Act, UpMode

INTERPRETED = interpreter_requested()
# FUSED_UNET_TUNE=K: each launch takes its K-th registered config that fits (the last if fewer) instead of timing
# them all: a quick GPU test run (K=0) compiles one config per launch, and K=0..6 in parallel processes fill the
# Triton cache before a benchmark autotunes. tests/test_configs.py runs every config anyway.
TUNE_INDEX = int(os.environ["FUSED_UNET_TUNE"]) if os.environ.get("FUSED_UNET_TUNE", "").isdigit() else None

if INTERPRETED and interpreter_problem():
    raise RuntimeError(f"{interpreter_problem()} (TRITON_INTERPRET=1 is set)")


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
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
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
    "max_pool2x2": {"any": [_cfg(BLOCK=1024, num_warps=4, num_stages=1)]},
    # One block size only: the launchers size their per-tile workspaces from it.
    "batch_norm_act_backward": {"any": [_cfg(BLOCK_P=64, BLOCK_C=64, num_warps=4, num_stages=1)]},
    "conv_output_grad": {"any": [_cfg(BLOCK_P=64, BLOCK_C=64, num_warps=4, num_stages=1)]},
    "upsample2x_backward": {"any": [_cfg(BLOCK_P=32, BLOCK_C=64, num_warps=4, num_stages=1)]},
    "max_pool2x2_backward": {"any": [_cfg(BLOCK=1024, num_warps=4, num_stages=1)]},
}

INTERPRETER_CONFIGS = {
    "conv2d_implicit_gemm": [_cfg(BLOCK_M=256, BLOCK_N=64, BLOCK_K=32)],
    "conv2d_weight_grad": [_cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=256)],
    "max_pool2x2": [_cfg(BLOCK=4096)],
    "batch_norm_act_backward": [_cfg(BLOCK_P=1024, BLOCK_C=64)],
    "conv_output_grad": [_cfg(BLOCK_P=1024, BLOCK_C=64)],
    "upsample2x_backward": [_cfg(BLOCK_P=1024, BLOCK_C=64)],
    "max_pool2x2_backward": [_cfg(BLOCK=4096)],
}

# The weight-grad kernel splits its pixel (K) range into chunks that are a multiple of every BLOCK_K above.
WEIGHT_GRAD_PIXEL_CHUNK = 256
# The conv's batch-statistics epilogue writes one workspace row per this many output pixels, whatever the tile
# (launches with statistics take the configs whose BLOCK_M is a multiple: configs.fits): the rows, and so the
# statistics, do not depend on the config. 12 bytes per channel per row: 64 keeps the workspace under 10% of a
# 16-bit activation.
STATS_ROWS = 64


# The up-sampling adjoint's gather window per UP_MODE: the up-sampled positions that can read one source index
# (nearest 2; bilinear 2i-1 .. 2i+2; bilinear with align_corners up to 2 / SCALE + 1 <= 7, one more for rounding).
UPSAMPLE_WINDOWS = {UpMode.NEAREST: 2, UpMode.BILINEAR: 4, UpMode.BILINEAR_ALIGN_CORNERS: 8}


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


def fits(cfg, flags, cc=90):
    """Whether a launch with constexpr ``flags`` may use ``cfg`` on compute capability ``cc``: what spilled in
    `fused-unet doctor`. Per thread, the accumulator holds ``acc`` and the A tile ``a`` elements. sm_80's mma.sync
    keeps operand fragments in registers: no tile beyond 64 and 32. Bilinear up-sampling keeps its four corner
    tiles in registers: two stages, and no wide accumulator beside a pending norm. The pooling, depth-to-space and
    statistics epilogues do not fit beside a wide accumulator; statistics need whole groups of STATS_ROWS rows."""
    blocks, threads = cfg.kwargs, 32 * cfg.num_warps
    if flags.get("STATS") and blocks["BLOCK_M"] % STATS_ROWS:
        return False
    acc = blocks.get("BLOCK_M", 0) * blocks.get("BLOCK_N", 0) // threads
    a = blocks.get("BLOCK_M", 0) * blocks.get("BLOCK_K", 0) // threads
    if cc < 90 and (acc > 64 or a > 32):
        return False
    if flags.get("UP_MODE", UpMode.NONE) >= UpMode.BILINEAR:
        return cfg.num_stages <= 2 and not (acc > 64 and flags.get("NORM_INPUT"))
    return not (acc > 64 and (flags.get("FUSE_POOL") or flags.get("PHASES") or flags.get("STATS")))


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


def _one_at_a_time(*axes):
    """The variants of a launch site given its axes (lists of partial constexpr dicts, heaviest first): all
    first values merged, then each other value of each axis with the rest at their first."""
    def merge(parts):
        return functools.reduce(lambda a, b: {**a, **b}, parts, {})

    firsts = [axis[0] for axis in axes]
    return [merge(firsts)] + [merge(firsts[:i] + [value] + firsts[i + 1:]) for i, axis in enumerate(axes)
                              for value in axis[1:]]


def _fixed(**flags):
    return [flags]


_TAPS = [dict(KH=3, KW=3, PAD=1), dict(KH=1, KW=1, PAD=0)]
_EVEN = [dict(EVEN_K=False), dict(EVEN_K=True)]
_BIAS = [dict(HAS_BIAS=True), dict(HAS_BIAS=False)]
# Codes as the plain ints the launchers pass, heaviest first.
_NO_ACT, _NO_UP = int(Act.NONE), int(UpMode.NONE)
_ACT_CODES = [int(a) for a in (Act.LEAKY_RELU, Act.RELU, Act.NONE)]
_ACTS = [dict(ACT=a) for a in _ACT_CODES]
_UP_MODES = [dict(UP_MODE=int(m))
             for m in (UpMode.BILINEAR_ALIGN_CORNERS, UpMode.BILINEAR, UpMode.NEAREST, UpMode.NONE)]
_IN_ACTS = [dict(IN_ACT=a) for a in _ACT_CODES]
# A source read with its pending batch norm + activation, or as stored.
_IN_NORM = [dict(NORM_INPUT=True, IN_ACT=a) for a in _ACT_CODES] + [dict(NORM_INPUT=False, IN_ACT=_NO_ACT)]
# The weight-grad's input operand: read through its geometry (and pending norm), or flat channels_last.
_FLAT = [dict(FLAT_INPUT=False), dict(FLAT_INPUT=True)]
_FORWARD = dict(STRIDE=1, PHASES=False, FUSE_POOL=False)
_ONE_SOURCE = dict(TWO_SOURCES=False, UP_MODE=_NO_UP, NORM_INPUT2=False)
_INPUT_GRAD = dict(PHASES=False, HAS_BIAS=False, ACT=_NO_ACT, FUSE_POOL=False, STATS=False, NORM_INPUT=False,
                   IN_ACT=_NO_ACT, **_ONE_SOURCE)

# The constexpr specialisations the launchers produce, per kernel and launch site, as axes of choices (heaviest
# first): the ahead-of-time compile check (fused-unet doctor) compiles every choice of every axis, one at a time
# from the heaviest variant (a full product would be thousands of compiles); a test checks that every real launch
# takes each flag from its axis. Block sizes come from the config lists above and dtypes from DTYPE_VARIANTS.
# Kernel sizes are shapes, not choices: the U-Net's 3x3 and 1x1 stand for every odd size.
LAUNCH_AXES = {
    "conv2d_implicit_gemm": {
        "conv2d_forward": [_fixed(**_FORWARD, **_ONE_SOURCE, STATS=False), _EVEN, _TAPS, _BIAS, _ACTS, _IN_NORM],
        "conv2d_stats_forward": [_fixed(**_FORWARD, **_ONE_SOURCE, STATS=True, ACT=_NO_ACT), _EVEN, _TAPS, _BIAS,
                                 _IN_NORM],
        "conv2d_pool_forward": [_fixed(**dict(_FORWARD, FUSE_POOL=True), **_ONE_SOURCE, STATS=False, NORM_INPUT=False,
                                       IN_ACT=_NO_ACT), _EVEN, _TAPS, _BIAS, _ACTS],
        # Without a skip (TWO_SOURCES False): the conv of the up-sampled source alone.
        "concat_conv2d_forward": [
            _fixed(**_FORWARD, **_TAPS[0]), [dict(TWO_SOURCES=True), dict(TWO_SOURCES=False)], _EVEN, _UP_MODES, _BIAS,
            [dict(STATS=False, **act) for act in _ACTS] + [dict(ACT=_NO_ACT, STATS=True)],
            [dict(NORM_INPUT=True), dict(NORM_INPUT=False)], [dict(NORM_INPUT2=True), dict(NORM_INPUT2=False)],
            _IN_ACTS],
        "conv2d_input_grad": [_fixed(STRIDE=1, **_INPUT_GRAD), _EVEN, _TAPS],
        "conv_transpose2x2_forward": [_fixed(**dict(_FORWARD, PHASES=True), **_ONE_SOURCE, STATS=False, KH=1, KW=1,
                                             PAD=0), _EVEN, _BIAS, _ACTS, _IN_NORM],
        "conv_transpose2x2_input_grad": [_fixed(KH=2, KW=2, PAD=0, STRIDE=2, **_INPUT_GRAD), _EVEN],
    },
    "conv2d_weight_grad": {
        # A concatenating conv launches once per source: the (up-sampled) up, then the skip.
        "conv2d_weight_grad": [_fixed(STRIDE=1, GRAD_OPERAND=1), _TAPS, _UP_MODES, _IN_NORM, _FLAT],
        "conv_transpose2x2_weight_grad": [_fixed(KH=2, KW=2, PAD=0, STRIDE=2, GRAD_OPERAND=2, UP_MODE=_NO_UP),
                                          _IN_NORM, _FLAT],
    },
    "conv_output_grad": {"conv_output_grad": [_ACTS, [dict(POOL_GRAD=True), dict(POOL_GRAD=False)],
                                              [dict(BIAS_GRAD=True), dict(BIAS_GRAD=False)]]},
    "upsample2x_backward": {"upsample2x_backward": [[dict(UP_MODE=int(mode), WINDOW=window) for mode, window
                                                     in sorted(UPSAMPLE_WINDOWS.items(), reverse=True)]]},
    "max_pool2x2": {"max_pool2x2_forward": [[dict(NORM=True, ACT=a) for a in _ACT_CODES] +
                                            [dict(NORM=False, ACT=_NO_ACT)]]},
    "max_pool2x2_backward": {"max_pool2x2_backward": [[{}]]},
    "batch_norm_act_backward": {"batch_norm_act_input_grad": [_ACTS]},
}
# Flags a @triton.heuristics computes from the launch (the launchers do not pass them).
HEURISTIC_FLAGS = ("EVEN_K",)

# The main-loop targets `fused-unet doctor` holds (sm_90, 16-bit, the U-Net layer's specialisation): per GEMM
# role, the site's plain U-Net variant (_PLAIN where an axis offers it) with the overrides given must have at
# least one registered config whose loop reaches the ceiling, and (``fast_loads``) reads its operands only with
# 128-bit cp.async or TMA and never divides. Prologue variants (a pending norm, up-sampling) have lower bars.
_PLAIN = dict(EVEN_K=True, FLAT_INPUT=True, KH=3, KW=3, PAD=1, HAS_BIAS=True, ACT=int(Act.RELU), NORM_INPUT=False,
              NORM_INPUT2=False, IN_ACT=_NO_ACT, UP_MODE=_NO_UP, STATS=False)
MAIN_LOOP_TARGETS = [
    dict(kernel="conv2d_implicit_gemm", site="conv2d_forward", flags={}, ceiling=0.95, fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="conv2d_pool_forward", flags={}, ceiling=0.95, fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="concat_conv2d_forward", flags={}, ceiling=0.95, fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="conv2d_input_grad", flags={}, ceiling=0.95, fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="conv_transpose2x2_forward", flags={}, ceiling=0.95, fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="conv_transpose2x2_input_grad", flags={}, ceiling=0.95,
         fast_loads=True),
    dict(kernel="conv2d_weight_grad", site="conv2d_weight_grad", flags={}, ceiling=0.95, fast_loads=True),
    dict(kernel="conv2d_weight_grad", site="conv_transpose2x2_weight_grad", flags={}, ceiling=0.95,
         fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="conv2d_forward", flags=dict(NORM_INPUT=True, IN_ACT=int(Act.RELU)),
         ceiling=0.8, fast_loads=False),
    dict(kernel="conv2d_implicit_gemm", site="concat_conv2d_forward", flags=dict(UP_MODE=int(UpMode.NEAREST)),
         ceiling=0.8, fast_loads=False),
    dict(kernel="conv2d_implicit_gemm", site="concat_conv2d_forward", flags=dict(UP_MODE=int(UpMode.BILINEAR)),
         ceiling=0.5, fast_loads=False),
]
# The median ceiling over every compiled 16-bit GEMM job on sm_90 that the doctor holds.
MEDIAN_CEILING_TARGET = 0.6


def _plain(axes):
    """The site's plain U-Net variant: on each axis, the first choice that agrees with _PLAIN."""
    def agrees(choice):
        return all(_PLAIN.get(k, v) == v for k, v in choice.items())

    return functools.reduce(lambda a, b: {**a, **b},
                            [next((c for c in axis if agrees(c)), axis[0]) for axis in axes], {})


def target_flags(target):
    """The full constexpr flags of a MAIN_LOOP_TARGETS entry."""
    return {**_plain(LAUNCH_AXES[target["kernel"]][target["site"]]), **target["flags"]}


def _variants(kernel, sites):
    out = {}
    for site, axes in sites.items():
        variants = _one_at_a_time(*axes)
        for target in MAIN_LOOP_TARGETS:
            if (target["kernel"], target["site"]) == (kernel, site) and target_flags(target) not in variants:
                variants.append(target_flags(target))
        out[site] = variants
    return out


LAUNCH_VARIANTS = {kernel: _variants(kernel, sites) for kernel, sites in LAUNCH_AXES.items()}

# Tensor dtypes the GPU path launches with: (name, Triton element type of tensors and DOT_DTYPE, INPUT_PRECISION).
DTYPE_VARIANTS = [("fp32", "fp32", "ieee"), ("tf32", "fp32", "tf32"), ("fp16", "fp16", "ieee"), ("bf16", "bf16", "ieee")]
# Kernels whose main loop is a tl.dot: the AOT check requires tensor-core MMA in them.
GEMM_KERNELS = ("conv2d_implicit_gemm", "conv2d_weight_grad")
