"""The doctor's compile matrix: every constexpr specialisation the launchers produce (per kernel and launch site),
the dtypes they launch with, and the main-loop targets `fused-unet doctor` holds. The run-time config lists are in
configs.py; nothing here runs at launch time."""
import functools

from .codes import Act, UpMode
from .configs import UPSAMPLE_WINDOWS


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
# takes each flag from its axis. Block sizes come from the config lists in configs.py and dtypes from DTYPE_VARIANTS.
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
