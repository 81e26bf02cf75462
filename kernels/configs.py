"""The one registry of launch configurations, per kernel and backend.

GPU: a short autotune list per kernel. Interpreter: a single large-block config, because
``@triton.autotune`` cannot benchmark without a GPU driver and the interpreter's cost grows with the
number of programs times loop iterations, not with block size.
"""
import functools
import itertools

import triton

from . import interpreter_requested

INTERPRETED = interpreter_requested()


def _version(text):
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


if INTERPRETED and _version(triton.__version__) < (3, 7):
    import numpy

    if _version(numpy.__version__) >= (2, 4):
        # Triton 3.6's interpreter turns 1-element arrays into ints with int(), which NumPy 2.4 made an error.
        raise RuntimeError(f"the Triton {triton.__version__} interpreter does not run with NumPy {numpy.__version__}: "
                           "install numpy<2.4, or triton>=3.8 (TRITON_INTERPRET=1 is set)")


def _cfg(num_warps=4, num_stages=3, **blocks):
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


# GPU autotune lists per kernel and precision class: "16bit" (fp16, bf16 tensor cores), "tf32" (fp32 operands on
# tensor cores: twice the register and shared-memory footprint) and "fp32" (IEEE fp32: FMA only, small tiles).
# Every entry passes `fused-unet doctor` on sm_90 and sm_80 with Triton 3.6, 3.8 and 3.9 (compiles, no spills,
# tensor-core MMA where expected).
GPU_CONFIGS = {
    "conv2d_implicit_gemm": {
        "16bit": [
            _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=2),
            _cfg(BLOCK_M=256, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2),
        ],
        "tf32": [
            _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=16, num_warps=8, num_stages=2),
            _cfg(BLOCK_M=256, BLOCK_N=64, BLOCK_K=16, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=2),
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2),
        ],
        "fp32": [
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=8, num_stages=2),
            _cfg(BLOCK_M=32, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=2),
            _cfg(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2),
        ],
    },
    "conv2d_weight_grad": {
        "16bit": [
            _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2),
        ],
        "tf32": [
            _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
            _cfg(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2),
        ],
        "fp32": [
            _cfg(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2),
            _cfg(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2),
        ],
    },
    "max_pool2x2": {"any": [_cfg(BLOCK=1024, num_warps=4, num_stages=1)]},
    "max_pool2x2_backward": {"any": [_cfg(BLOCK=1024, num_warps=4, num_stages=1)]},
}

INTERPRETER_CONFIGS = {
    "conv2d_implicit_gemm": [_cfg(BLOCK_M=256, BLOCK_N=64, BLOCK_K=32)],
    "conv2d_weight_grad": [_cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=256)],
    "max_pool2x2": [_cfg(BLOCK=4096)],
    "max_pool2x2_backward": [_cfg(BLOCK=4096)],
}

# The weight-grad kernel splits its pixel (K) range into chunks that are a multiple of every BLOCK_K above.
WEIGHT_GRAD_PIXEL_CHUNK = 256


def precision_class(dtype_name):
    """The GPU config list a dtype name of DTYPE_VARIANTS uses."""
    return {"fp16": "16bit", "bf16": "16bit"}.get(dtype_name, dtype_name)


def gpu_configs(kernel, dtype_name):
    classes = GPU_CONFIGS[kernel]
    return classes.get("any") or classes[precision_class(dtype_name)]


def configs(kernel):
    """The launch configurations the current backend may use for ``kernel`` (all precision classes)."""
    if INTERPRETED:
        return INTERPRETER_CONFIGS[kernel]
    return [cfg for group in GPU_CONFIGS[kernel].values() for cfg in group]


def prune_by_precision(kernel):
    """An autotune ``early_config_prune`` that keeps the configs of the launch's precision class."""
    def prune(candidates, named_args, **kwargs):
        if INTERPRETED or "any" in GPU_CONFIGS[kernel]:
            return candidates
        fp32_operands = str(kwargs.get("DOT_DTYPE")) == "fp32"
        name = ("tf32" if kwargs.get("INPUT_PRECISION") == "tf32" else "fp32") if fp32_operands else "16bit"
        keep = GPU_CONFIGS[kernel][name]
        return [cfg for cfg in candidates if cfg in keep]

    return prune


def _expand(*choices):
    """Every combination of one partial constexpr dict from each list, merged."""
    return [functools.reduce(lambda a, b: {**a, **b}, combo, {}) for combo in itertools.product(*choices)]


_TAPS = [dict(KH=3, KW=3, PAD=1), dict(KH=1, KW=1, PAD=0)]
_EPILOGUE = [dict(HAS_BIAS=bias, RELU=relu) for bias in (True, False) for relu in (True, False)]
_MASKED = [dict(RELU_MASK_INPUT=True), dict(RELU_MASK_INPUT=False)]

# Every constexpr specialisation the launchers produce, per kernel and launch site. Block sizes come from the
# config lists above and dtypes from DTYPE_VARIANTS. Kernel sizes are shapes, not choices: the U-Net's 3x3 and
# 1x1 stand for every odd size. The first variant of each site has every optional feature on (the heaviest).
# The ahead-of-time compile check (fused-unet doctor) reads this; a test checks that real launches stay inside it.
LAUNCH_VARIANTS = {
    "conv2d_implicit_gemm": {
        "conv2d_forward": _expand([dict(STRIDE=1, UPSAMPLE=1, FLIP_WEIGHT=False, RELU_MASK_INPUT=False)],
                                  _TAPS, _EPILOGUE),
        "conv2d_input_grad": _expand([dict(STRIDE=1, UPSAMPLE=1, FLIP_WEIGHT=True, HAS_BIAS=False, RELU=False)],
                                     _TAPS, _MASKED),
        "conv_transpose2x2_forward": _expand(
            [dict(KH=1, KW=1, PAD=0, STRIDE=1, UPSAMPLE=2, FLIP_WEIGHT=False, RELU_MASK_INPUT=False)], _EPILOGUE),
        "conv_transpose2x2_input_grad": _expand(
            [dict(KH=2, KW=2, PAD=0, STRIDE=2, UPSAMPLE=1, FLIP_WEIGHT=False, HAS_BIAS=False, RELU=False)], _MASKED),
    },
    "conv2d_weight_grad": {
        "conv2d_weight_grad": _expand([dict(STRIDE=1)], _TAPS, [dict(RELU_MASK_OPERAND=1), dict(RELU_MASK_OPERAND=0)],
                                      [dict(BIAS_GRAD_OPERAND=1), dict(BIAS_GRAD_OPERAND=0)]),
        "conv_transpose2x2_weight_grad": _expand(
            [dict(KH=2, KW=2, PAD=0, STRIDE=2)], [dict(RELU_MASK_OPERAND=2), dict(RELU_MASK_OPERAND=0)],
            [dict(BIAS_GRAD_OPERAND=2), dict(BIAS_GRAD_OPERAND=0)]),
    },
    "max_pool2x2": {"max_pool2x2_forward": [{}]},
    "max_pool2x2_backward": {"max_pool2x2_backward": [{}]},
}

# Tensor dtypes the GPU path launches with: (name, Triton element type of tensors and DOT_DTYPE, INPUT_PRECISION).
DTYPE_VARIANTS = [("fp32", "fp32", "ieee"), ("tf32", "fp32", "tf32"), ("fp16", "fp16", "ieee"), ("bf16", "bf16", "ieee")]
# Kernels whose main loop is a tl.dot: the AOT check requires tensor-core MMA in them.
GEMM_KERNELS = ("conv2d_implicit_gemm", "conv2d_weight_grad")
