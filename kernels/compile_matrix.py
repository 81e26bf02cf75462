"""The doctor's compile matrix: every constexpr specialisation the launchers produce (per kernel and launch site),
the dtypes they launch with, and the main-loop targets `fused-unet doctor` holds. The run-time config lists are in
configs.py; nothing here runs at launch time."""
import functools

from .codes import Act, NormTable, Statistics, UpMode
from .specs import KERNELS


def _one_at_a_time(*axes):
    """The variants of a launch site given its axes (lists of partial constexpr dicts, heaviest first): all
    first values merged, then each other value of each axis with the rest at their first."""
    def merge(parts):
        return functools.reduce(lambda a, b: {**a, **b}, parts, {})

    firsts = [axis[0] for axis in axes]
    return [merge(firsts)] + [merge(firsts[:i] + [value] + firsts[i + 1:]) for i, axis in enumerate(axes)
                              for value in axis[1:]]


# The constexpr specialisations the launchers produce, per kernel and launch site (specs.py declares them), as axes
# of choices (heaviest first): the ahead-of-time compile check (fused-unet doctor) compiles every choice of every
# axis, one at a time from the heaviest variant (a full product would be thousands of compiles); a test checks that
# every real launch takes each flag from its axis. Block sizes come from the config lists in configs.py and dtypes
# from DTYPE_VARIANTS.
LAUNCH_AXES = {spec.name: spec.sites for spec in KERNELS}
SPECS = {spec.name: spec for spec in KERNELS}
# Flags a @triton.heuristics computes from the launch (the launchers do not pass them).
HEURISTIC_FLAGS = tuple(dict.fromkeys(name for spec in KERNELS for name in spec.derived_flags))
# Constexpr numbers a model sets (a leaky slope): a launch may pass any value, the matrix compiles a representative.
VALUE_FLAGS = tuple(dict.fromkeys(name for spec in KERNELS for name in spec.value_flags))
# Constexprs that are a layer's shape (kernel size, padding): the matrix compiles representative sizes.
SHAPE_FLAGS = ("KH", "KW", "PAD")

# The main-loop targets `fused-unet doctor` holds (sm_90, 16-bit, the U-Net layer's specialisation): per GEMM
# role, the site's plain U-Net variant (_PLAIN where an axis offers it) with the overrides given must have at
# least one registered config whose loop reaches the ceiling, and (``fast_loads``) reads its operands only with
# 128-bit cp.async or TMA and never divides. Prologue variants (a pending norm, up-sampling) have lower bars; a pending
# norm's (``overlap``) counts a loop that waits for its own wgmma group at headroom / (1 + headroom) (sass).
_PLAIN = dict(EVEN_K=True, FLAT_INPUT=True, KH=3, KW=3, PAD=1, HAS_BIAS=True, ACT=int(Act.RELU), NORM_INPUT=False,
              NORM_INPUT2=False, IN_ACT=int(Act.NONE), UP_MODE=int(UpMode.NONE), STATS=int(Statistics.NONE),
              FLAT_TAPS=False, TAPS_ON_N=False, NORM_TABLE=int(NormTable.CHANNEL), PROJ=False)
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
    # Encoders' strided and 1x1 convs: a stride-2 conv, a 1x1 projection, a residual block's last conv (the add in
    # its epilogue), a stride-2 conv's input-grad phase (2x2 taps of a 3x3), a stride-2 conv's weight-grad (its
    # input read through its geometry).
    dict(kernel="conv2d_implicit_gemm", site="conv2d_forward", flags=dict(STRIDE=2), ceiling=0.95, fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="conv2d_forward", flags=dict(KH=1, KW=1, PAD=0), ceiling=0.95,
         fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="conv2d_forward", flags=dict(RESIDUAL=True), ceiling=0.95,
         fast_loads=True),
    # A ResNet downsample block's end: the second conv and the block input's 1x1 / stride-2 projection, two GEMMs
    # into one accumulator.
    dict(kernel="conv2d_implicit_gemm", site="conv2d_forward", flags=dict(PROJ=True, PROJ_STRIDE=2), ceiling=0.95,
         fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="conv2d_input_grad", flags=dict(KH=2, KW=2), ceiling=0.95,
         fast_loads=True),
    dict(kernel="conv2d_weight_grad", site="conv2d_weight_grad", flags=dict(STRIDE=2, FLAT_INPUT=False),
         ceiling=0.95, fast_loads=True),
    dict(kernel="conv2d_implicit_gemm", site="conv2d_forward", flags=dict(NORM_INPUT=True, IN_ACT=int(Act.RELU)),
         ceiling=0.8, fast_loads=False, overlap=True),
    # Instance / group norm: the scale and shift per (image, channel), two [K] rows per step (images of at least a
    # tile's rows).
    dict(kernel="conv2d_implicit_gemm", site="conv2d_forward",
         flags=dict(NORM_INPUT=True, NORM_TABLE=int(NormTable.IMAGE_PAIR), IN_ACT=int(Act.LEAKY_RELU),
                    IN_NEG_SLOPE=0.01),
         ceiling=0.8, fast_loads=False, overlap=True),
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
GEMM_KERNELS = tuple(spec.name for spec in KERNELS if spec.gemm)
