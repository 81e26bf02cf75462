"""One declaration per kernel: its parameters and its launch sites. Plain Python (no Triton).

A ``KernelSpec`` lists the kernel's parameters in order, each with its compile type, what a U-Net layer passes
for it and whether the autotuner keys on it, and, per launch site (the launcher that calls it), the constexpr
flags the site sets as axes of choices. Everything else is derived from it: the keyword arguments a launch must
pass (``KernelSpec.arguments`` refuses a missing or unknown name), the autotune key and ``do_not_specialize``
list the kernel is decorated with, the compile signature `fused-unet doctor` builds
(``KernelSpec.compile_signature``) and the compile matrix's axes (``compile_matrix.LAUNCH_AXES``).
The kernels document each parameter in one line where they declare it; a test holds the two lists equal.

Adding a flag: the kernel (parameter and code), its ``flag(...)`` here and its choices on the sites that set it,
the launcher that passes it, and ``configs.fits`` if it changes which tiles fit.
"""
import contextlib
import dataclasses
import functools

from .codes import Act, NormTable, Statistics, UpMode

# The compile type of a tensor of the launch's dtype (fp16 / bf16 / fp32); other tensors name theirs.
TENSOR = "*"


@dataclasses.dataclass(frozen=True)
class Param:
    """A kernel parameter. ``types``: its compile type ("*fp32", "i32", "fp32", TENSOR), a tuple of them for a
    tuple parameter, or "constexpr". ``hints``: per element, what a U-Net layer's launch passes, as Triton
    specialises it at run time: 1 (equal to 1: a constant), 16 (a multiple of 16, or a 16-byte aligned pointer) or
    None. ``role``: "argument" (run time), "flag" (a constexpr the launcher sets), "value" (a constexpr number the
    launcher passes), "block" (from the autotune config) or "derived" (computed by @triton.heuristics).
    ``tuned``: in the autotune key. ``specialise``: False for ``do_not_specialize``."""
    name: str
    types: object
    hints: object = None
    role: str = "argument"
    tuned: bool = False
    specialise: bool = True

    def elements(self):
        """(path suffix, type, hint) per element: one for a scalar or a pointer, one per entry of a tuple."""
        if isinstance(self.types, tuple):
            return [((j,), t, h) for j, (t, h) in enumerate(zip(self.types, self.hints))]
        return [((), self.types, self.hints)]


def tensor(name, element=TENSOR):
    return Param(name, element, 16)


def tensor_pair(name, element=TENSOR):
    return Param(name, (element, element), (16, 16))


def pending_norm_tables(name):
    """A pending norm's fp32 (scale, shift, PReLU slopes) pointers (the slopes a placeholder unless PRELU)."""
    return Param(name, ("*fp32",) * 3, (16, 16, 16))


def integer(name, hint=None, tuned=False, specialise=True):
    return Param(name, "i32", hint, tuned=tuned, specialise=specialise)


def real(name):
    return Param(name, "fp32")


def integers(name, *hints):
    return Param(name, ("i32",) * len(hints), hints)


def strides(name):
    """A tensor's (n, c, h, w) strides: channels_last in a U-Net layer (c == 1, the others multiples of 16)."""
    return integers(name, 16, 1, 16, 16)


def flag(name, tuned=False):
    return Param(name, "constexpr", role="flag", tuned=tuned)


def value_flag(name):
    """A constexpr whose value is a number the model sets (a leaky slope), not one of a site's choices: the compile
    matrix compiles a representative value."""
    return Param(name, "constexpr", role="value")


def block(name):
    return Param(name, "constexpr", role="block")


def derived(name):
    return Param(name, "constexpr", role="derived")


# Where a source sits on the conv's input grid: its size, the centred zero-padding offset, its up-sampled size and
# the up-sampling's source-index scales (kernels.common.source_placement).
PLACEMENT = Param("placement", ("i32",) * 6 + ("fp32",) * 2, (None,) * 8)


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A kernel's parameters and launch sites. ``name`` is its key in the config registry (configs.GPU_CONFIGS);
    ``sites`` maps each launcher to its constexpr axes (lists of partial flag dicts, heaviest first); ``gemm``:
    its main loop is a tl.dot (the doctor requires tensor-core MMA)."""
    name: str
    params: tuple
    sites: dict = dataclasses.field(default_factory=dict)
    gemm: bool = False

    @property
    def names(self):
        return [p.name for p in self.params]

    @property
    def autotune_key(self):
        return [p.name for p in self.params if p.tuned]

    @property
    def do_not_specialize(self):
        return [p.name for p in self.params if not p.specialise]

    @property
    def derived_flags(self):
        return [p.name for p in self.params if p.role == "derived"]

    @property
    def value_flags(self):
        return [p.name for p in self.params if p.role == "value"]

    @functools.cached_property
    def launch_names(self):
        """What a launch passes: every parameter but block sizes and derived flags."""
        return frozenset(p.name for p in self.params if p.role in ("argument", "flag", "value"))

    def arguments(self, **given):
        """``given`` when it names exactly the launch's parameters (launch_names); a TypeError naming the difference
        otherwise (a keyword Triton does not know would pass as a compile option)."""
        expected = self.launch_names
        if given.keys() != expected:
            raise TypeError(f"{self.name}: launch is missing {sorted(expected - set(given))} and passes unknown "
                            f"{sorted(set(given) - expected)}")
        return given

    def launch(self, kernel, grid, **given):
        """``kernel[grid](**given)`` after ``arguments`` checked the names; inside ``recording(callback)`` the
        launch is handed to the callback instead (``fused_unet.plan`` reads a whole step so, on meta tensors)."""
        self.arguments(**given)
        if _RECORDERS:
            _RECORDERS[-1][0](self, kernel, grid, given)
        else:
            kernel[grid](**given)

    def compile_signature(self, tensor_type, constexprs, ones=False, values=None):
        """(signature, constexprs, attrs) of ``triton.compile`` for a launch with tensors of ``tensor_type`` and
        ``constexprs`` (flags and block sizes): as a U-Net layer's launch specialises (pointers 16-byte aligned,
        integers hinted 1 constant, hinted 16 divisible by 16), with ``ones`` every specialisable integer equal to
        1 (a launch with a width, a batch or a stride of 1), or with ``values`` (a recorded launch's arguments) as
        that launch specialises: each integer by its value, each tensor's own element type."""
        signature, constants, attrs = {}, dict(constexprs), {}
        for i, p in enumerate(self.params):
            if p.name in constexprs:
                signature[p.name] = "constexpr"
                continue
            given = values[p.name] if values is not None else None
            types = []
            for suffix, kind, hint in p.elements():
                path = (i,) + suffix
                if values is not None:
                    kind, hint = _specialisation(kind, given[suffix[0]] if suffix else given)
                if kind == "i32" and p.specialise and (hint == 1 or ones):
                    types.append("constexpr")
                    constants[path] = 1
                    continue
                types.append(tensor_type if kind == TENSOR else kind)
                if hint == 16 and p.specialise and (kind.startswith("*") or not ones):
                    attrs[path] = [["tt.divisibility", 16]]
            signature[p.name] = tuple(types) if isinstance(p.types, tuple) else types[0]
        return signature, constants, attrs


# Triton's names of the tensor element types the launchers pass.
_ELEMENT_TYPES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.uint8": "u8",
                  "torch.float64": "fp64"}


def element_type(dtype):
    """Triton's name of a torch dtype the launchers pass ("fp32", "fp16", "bf16", "u8", "fp64")."""
    return _ELEMENT_TYPES[str(dtype)]


def _specialisation(kind, value):
    """(compile type, hint) of one argument as Triton specialises it at launch: a tensor by its element type (16:
    allocations are 16-byte aligned), an integer 1 when it equals 1 and 16 when divisible by 16."""
    if kind.startswith("*"):
        return "*" + element_type(value.dtype), 16
    if kind == "i32":
        return kind, 1 if value == 1 else 16 if value % 16 == 0 else None
    return kind, None


_RECORDERS = []


@contextlib.contextmanager
def recording(callback, sms=None):
    """Inside this block every launch calls ``callback(spec, kernel, grid, arguments)`` instead of running, and
    launchers size their grids for a GPU of ``sms`` SMs (fused_unet.plan: a whole step on meta tensors)."""
    _RECORDERS.append((callback, sms))
    try:
        yield
    finally:
        _RECORDERS.pop()


def recording_active():
    return bool(_RECORDERS)


def recorded_sms():
    """The SM count a recording sizes grids for (None outside one)."""
    return _RECORDERS[-1][1] if _RECORDERS else None


def _fixed(**flags):
    return [flags]


_TAPS = [dict(KH=3, KW=3, PAD=1), dict(KH=1, KW=1, PAD=0), dict(KH=7, KW=7, PAD=3)]
# An input-grad's offset is in its placement (per phase of a strided conv: kernels.conv._input_grad_phase).
_GRAD_TAPS = [dict(KH=3, KW=3, PAD=0), dict(KH=1, KW=1, PAD=0), dict(KH=2, KW=2, PAD=0)]
_STRIDES = [dict(STRIDE=1), dict(STRIDE=2)]
_EVEN = [dict(EVEN_K=False), dict(EVEN_K=True)]
_BIAS = [dict(HAS_BIAS=True), dict(HAS_BIAS=False)]
# Codes as the plain ints the launchers pass, heaviest first.
_NO_ACT, _NO_UP = int(Act.NONE), int(UpMode.NONE)
# A conv epilogue's activations (codes.EPILOGUE_ACTIVATIONS); a pending norm's may be any of the table.
_ACT_CODES = [int(a) for a in (Act.LEAKY_RELU, Act.RELU, Act.NONE)]
_ACTS = [dict(ACT=a) for a in _ACT_CODES]
_PENDING_ACT_CODES = _ACT_CODES + [int(a) for a in (Act.GELU_TANH, Act.GELU, Act.SILU, Act.PRELU)]
_UP_MODES = [dict(UP_MODE=int(m))
             for m in (UpMode.BILINEAR_ALIGN_CORNERS, UpMode.BILINEAR, UpMode.NEAREST, UpMode.NONE)]
# A pending norm's activation and its leaky slope (a constexpr of the GEMM kernels: kernels.common.pending_activation).
_IN_ACTS = [dict(IN_ACT=a, IN_NEG_SLOPE=0.01 if a == int(Act.LEAKY_RELU) else 0.0) for a in _PENDING_ACT_CODES]
_NO_IN_ACT = dict(IN_ACT=_NO_ACT, IN_NEG_SLOPE=0.0)
# A source read with its pending norm + activation, or as stored.
_IN_NORM = [dict(NORM_INPUT=True, **a) for a in _IN_ACTS] + [dict(NORM_INPUT=False, **_NO_IN_ACT)]
# A pending norm's scale and shift per channel (batch norm) or per (image, channel) (instance / group norm): the GEMM
# kernels' flag (how they read the tables, codes.NormTable), and the elementwise kernels'.
_NORM_TABLES = [dict(NORM_TABLE=int(t)) for t in (NormTable.CHANNEL, NormTable.IMAGE_PAIR, NormTable.GATHER)]
_CHANNEL_TABLE, _GATHER_TABLE = _NORM_TABLES[0], _NORM_TABLES[2]
# The weight-grad gathers a bilinear source's tables (its IMAGE_PAIR spilled on sm_80 with Triton 3.8).
_WEIGHT_GRAD_NORM_TABLES = [_CHANNEL_TABLE] + [dict(NORM_TABLE=int(NormTable.IMAGE_PAIR), UP_MODE=int(m))
                                               for m in (UpMode.NEAREST, UpMode.NONE)] + [_GATHER_TABLE]
_PER_SAMPLE_ELEMENTWISE = [dict(PER_SAMPLE=False), dict(PER_SAMPLE=True)]
# The max-pools: the U-Net's 2x2, the ResNet stem's 3x3 with padding 1 (both stride 2).
_POOL_WINDOWS = [dict(WINDOW=2), dict(WINDOW=3)]
# The weight-grad's input operand: read through its geometry (and pending norm), or flat channels_last.
_FLAT = [dict(FLAT_INPUT=False), dict(FLAT_INPUT=True)]
# A source of few channels (one source, not up-sampled) runs its taps as one K range (kernels.conv._few_channels).
_FLAT_TAPS = [dict(FLAT_TAPS=False), dict(FLAT_TAPS=True)]
# The weight-grad's few-channel input: every (tap, channel) on the columns of one tile, read through its strides.
_TAPS_ON_N = [dict(TAPS_ON_N=False), dict(TAPS_ON_N=True, FLAT_INPUT=False, NORM_INPUT=False, **_CHANNEL_TABLE,
                                          UP_MODE=_NO_UP, **_NO_IN_ACT)]
# A ResNet downsample's 1x1 projection summed into the second conv's accumulator (conv2d_forward only), or none.
_NO_PROJECTION = dict(PROJ=False, PROJ_STRIDE=1)
# (Not first: the heaviest variant, compiled at every config and dtype, stays the U-Net's; the doctor's target
# compiles the projection at every fp16 config.)
_PROJECTIONS = [_NO_PROJECTION, dict(PROJ=True, PROJ_STRIDE=2), dict(PROJ=True, PROJ_STRIDE=1)]
_FORWARD = dict(PHASES=False, FUSE_POOL=False)
# A residual tensor added in the epilogue (ResNet / diffusion blocks: conv2d_forward only), or none.
_RESIDUAL = [dict(RESIDUAL=False), dict(RESIDUAL=True)]
_NO_RESIDUAL = dict(RESIDUAL=False)
_ONE_SOURCE = dict(TWO_SOURCES=False, UP_MODE=_NO_UP, NORM_INPUT2=False)
# The statistics a conv's epilogue writes for the norm after it (codes.Statistics), or none.
_NO_STATS = int(Statistics.NONE)
_STATS = [dict(STATS=int(Statistics.CHANNEL)), dict(STATS=int(Statistics.IMAGE))]
_INPUT_GRAD = dict(PHASES=False, HAS_BIAS=False, RESIDUAL=False, ACT=_NO_ACT, FUSE_POOL=False, STATS=_NO_STATS,
                   **_NO_PROJECTION,
                   NORM_INPUT=False, **_CHANNEL_TABLE, **_NO_IN_ACT, **_ONE_SOURCE)
# A transposed conv's forward: the input-grad's GEMMs, with a bias, an activation and a pending norm.
_TRANSPOSED_FORWARD = {k: v for k, v in _INPUT_GRAD.items()
                       if k not in ("HAS_BIAS", "ACT", "NORM_INPUT", "NORM_TABLE", "IN_ACT", "IN_NEG_SLOPE",
                                    "TWO_SOURCES", "NORM_INPUT2")}
# A transposed conv of a concatenation (MONAI UNet's up layers): the skip a second source, pending or not (not
# first, as _PROJECTIONS: the doctor's every-config sweep stays on the one-source variant).
_TRANSPOSED_SOURCES = [dict(TWO_SOURCES=False, NORM_INPUT2=False), dict(TWO_SOURCES=True, NORM_INPUT2=True),
                       dict(TWO_SOURCES=True, NORM_INPUT2=False)]
_GEMM_SETTINGS = (flag("DOT_DTYPE"), flag("INPUT_PRECISION", tuned=True), block("BLOCK_M"), block("BLOCK_N"),
                  block("BLOCK_K"))

# Kernel sizes and paddings are shapes, not choices (compile_matrix.SHAPE_FLAGS): 3x3, 1x1 and 7x7 stand for every
# size.
CONV2D_IMPLICIT_GEMM = KernelSpec(
    "conv2d_implicit_gemm",
    (tensor("x_ptr"), tensor("x2_ptr"), tensor("w_ptr"), tensor("bias_ptr"), tensor("y_ptr"), tensor("pool_ptr"),
     tensor("pool_argmax_ptr", "*u8"), pending_norm_tables("in_norm"), pending_norm_tables("in2_norm"),
     tensor("one_ptr", "*fp32"), tensor("stats_ptr", "*fp32"), tensor("res_ptr"), tensor("proj_ptr"),
     tensor("proj_w_ptr"), integer("BATCH"), integer("H_OUT"), integer("W_OUT"), integer("H_IN"), integer("W_IN"),
     integer("C_IN", 16, tuned=True), integer("C_IN2", 16, tuned=True), integer("C_OUT", 16, tuned=True),
     integer("C_PROJ", 16, tuned=True), integer("H_PROJ"), integer("W_PROJ"),
     integers("k_offsets", 16, 16), integers("x2_offsets", None, None),
     integer("PIXEL_BUCKET", tuned=True, specialise=False), PLACEMENT,
     real("NEG_SLOPE"), value_flag("IN_NEG_SLOPE"),
     strides("x_strides"), strides("x2_strides"), integers("w_strides", 16, 16), strides("y_strides"),
     strides("pool_strides"), strides("res_strides"), strides("proj_strides"), integer("proj_w_stride", 16),
     flag("KH", tuned=True), flag("KW"), flag("STRIDE", tuned=True), flag("PAD"), flag("PHASES", tuned=True),
     flag("HAS_BIAS"), flag("RESIDUAL"), flag("PROJ", tuned=True), flag("PROJ_STRIDE"), flag("ACT"),
     flag("TWO_SOURCES"), flag("UP_MODE", tuned=True),
     flag("FUSE_POOL", tuned=True),
     flag("NORM_INPUT", tuned=True), flag("NORM_INPUT2", tuned=True), flag("NORM_TABLE", tuned=True),
     flag("IN_ACT", tuned=True),
     flag("STATS", tuned=True), derived("EVEN_K"), flag("FLAT_TAPS", tuned=True), *_GEMM_SETTINGS),
    sites={
        "conv2d_forward": [_fixed(**_FORWARD, **_ONE_SOURCE, STATS=_NO_STATS), _EVEN, _TAPS, _STRIDES, _BIAS, _RESIDUAL,
                           _ACTS, _IN_NORM, _NORM_TABLES, _FLAT_TAPS, _PROJECTIONS],
        "conv2d_stats_forward": [_fixed(**_FORWARD, **_ONE_SOURCE, **_NO_RESIDUAL, **_NO_PROJECTION, ACT=_NO_ACT),
                                 _STATS, _EVEN, _TAPS, _STRIDES, _BIAS, _IN_NORM, _NORM_TABLES, _FLAT_TAPS],
        "conv2d_pool_forward": [_fixed(**dict(_FORWARD, FUSE_POOL=True, STRIDE=1), **_ONE_SOURCE, **_NO_RESIDUAL,
                                       **_NO_PROJECTION, STATS=_NO_STATS, NORM_INPUT=False, **_CHANNEL_TABLE,
                                       **_NO_IN_ACT), _EVEN, _TAPS, _BIAS, _ACTS, _FLAT_TAPS],
        # Without a skip (TWO_SOURCES False): the conv of the up-sampled source alone.
        "concat_conv2d_forward": [
            _fixed(**_FORWARD, **_NO_RESIDUAL, **_NO_PROJECTION, STRIDE=1),
            [dict(TWO_SOURCES=True), dict(TWO_SOURCES=False)],
            _TAPS[:2],  # a 3x3, or a 1x1 projection of a concatenation (MONAI's UnetResBlock after a cat)
            _EVEN, _UP_MODES, _BIAS,
            [dict(STATS=_NO_STATS, **act) for act in _ACTS] + [dict(ACT=_NO_ACT, **stats) for stats in _STATS],
            [dict(NORM_INPUT=True), dict(NORM_INPUT=False)], [dict(NORM_INPUT2=True), dict(NORM_INPUT2=False)],
            _IN_ACTS, _NORM_TABLES,
            [dict(FLAT_TAPS=False), dict(FLAT_TAPS=True, TWO_SOURCES=False, UP_MODE=_NO_UP, NORM_INPUT2=False)]],
        "conv2d_input_grad": [_fixed(STRIDE=1, **_INPUT_GRAD), _EVEN, _GRAD_TAPS, _FLAT_TAPS],
        # A transposed conv of any stride: the input-grad's phases with a bias and an activation in the epilogue.
        "conv_transpose2d_forward": [_fixed(STRIDE=1, **_TRANSPOSED_FORWARD), _EVEN, _GRAD_TAPS, _BIAS, _ACTS,
                                     _IN_NORM, _NORM_TABLES, _TRANSPOSED_SOURCES,
                                     [dict(FLAT_TAPS=False), dict(FLAT_TAPS=True, TWO_SOURCES=False,
                                                                  NORM_INPUT2=False)]],
        "conv_transpose2x2_forward": [_fixed(**dict(_FORWARD, PHASES=True, STRIDE=1), **_ONE_SOURCE, **_NO_RESIDUAL,
                                             **_NO_PROJECTION, STATS=_NO_STATS, KH=1, KW=1, PAD=0, FLAT_TAPS=False),
                                      _EVEN, _BIAS, _ACTS, _IN_NORM, _NORM_TABLES],
        "conv_transpose2x2_input_grad": [_fixed(KH=2, KW=2, PAD=0, STRIDE=2, **_INPUT_GRAD), _EVEN, _FLAT_TAPS],
    },
    gemm=True)

CONV2D_WEIGHT_GRAD = KernelSpec(
    "conv2d_weight_grad",
    (tensor("g_ptr"), tensor("x_ptr"), pending_norm_tables("in_norm"), tensor("one_ptr", "*fp32"),
     tensor("dw_ptr", "*fp32"),
     integer("BATCH"), integer("H_A"), integer("W_A"), integer("H_B"), integer("W_B"),
     integer("C_A", 16, tuned=True), integer("C_B", 16, tuned=True),
     integer("PIXEL_BUCKET", tuned=True, specialise=False),
     # The magic numbers are 1 for every power-of-two divisor: specialised, they would arrive as Python ints.
     integer("W_MAGIC", specialise=False), integer("W_SHIFT"), integer("H_MAGIC", specialise=False),
     integer("H_SHIFT"), PLACEMENT, value_flag("IN_NEG_SLOPE"), strides("x_strides"),
     flag("KH", tuned=True), flag("KW"), flag("STRIDE", tuned=True), flag("PAD"), flag("GRAD_OPERAND", tuned=True),
     flag("UP_MODE", tuned=True), flag("NORM_INPUT", tuned=True), flag("NORM_TABLE", tuned=True),
     flag("IN_ACT", tuned=True),
     flag("FLAT_INPUT", tuned=True), flag("TAPS_ON_N", tuned=True), *_GEMM_SETTINGS),
    sites={
        # A concatenating conv launches once per source: the (up-sampled) up, then the skip.
        "conv2d_weight_grad": [_fixed(GRAD_OPERAND=1), _TAPS, _STRIDES, _UP_MODES, _IN_NORM, _WEIGHT_GRAD_NORM_TABLES,
                               _FLAT, _TAPS_ON_N],
        "conv_transpose2x2_weight_grad": [_fixed(KH=2, KW=2, PAD=0, STRIDE=2, GRAD_OPERAND=2, UP_MODE=_NO_UP,
                                                 TAPS_ON_N=False), _IN_NORM, _NORM_TABLES, _FLAT],
    },
    gemm=True)

CONV_OUTPUT_GRAD = KernelSpec(
    "conv_output_grad",
    (tensor("g_ptr"), tensor("out_ptr"), tensor("pool_grad_ptr"), tensor("argmax_ptr", "*u8"), tensor("dz_ptr"),
     tensor("partial_ptr", "*fp32"), integer("PIXELS"), integer("C", 16, tuned=True), integer("H"), integer("W"),
     real("NEG_SLOPE"), strides("g_strides"), strides("out_strides"), strides("pool_grad_strides"),
     strides("argmax_strides"), flag("ACT"), flag("POOL_GRAD"), flag("BIAS_GRAD"), block("BLOCK_P"), block("BLOCK_C")),
    sites={"conv_output_grad": [_ACTS, [dict(POOL_GRAD=True), dict(POOL_GRAD=False)],
                                [dict(BIAS_GRAD=True), dict(BIAS_GRAD=False)]]})

# The up-sampling adjoint's gather window per UP_MODE: the up-sampled positions that can read one source index
# (nearest 2; bilinear 2i-1 .. 2i+2; bilinear with align_corners up to 2 / SCALE + 1 <= 7, one more for rounding).
UPSAMPLE_WINDOWS = {UpMode.NEAREST: 2, UpMode.BILINEAR: 4, UpMode.BILINEAR_ALIGN_CORNERS: 8}

UPSAMPLE2X_BACKWARD = KernelSpec(
    "upsample2x_backward",
    (tensor("g_ptr"), tensor("dx_ptr"), integer("PIXELS"), integer("C", 16, tuned=True), integer("H"), integer("W"),
     integer("H_UP"), integer("W_UP"), real("SCALE_H"), real("SCALE_W"), strides("g_strides"), strides("dx_strides"),
     flag("UP_MODE", tuned=True), flag("WINDOW"), block("BLOCK_P"), block("BLOCK_C")),
    sites={"upsample2x_backward": [[dict(UP_MODE=int(mode), WINDOW=window) for mode, window
                                    in sorted(UPSAMPLE_WINDOWS.items(), reverse=True)]]})

MAX_POOL = KernelSpec(
    "max_pool",
    (tensor("x_ptr"), pending_norm_tables("in_norm"), tensor("y_ptr"), tensor("argmax_ptr", "*u8"),
     integer("TOTAL"), integer("C", 16, tuned=True), integer("H"), integer("W"), integer("H_OUT", tuned=True),
     integer("W_OUT", tuned=True), real("NEG_SLOPE"), strides("x_strides"), strides("y_strides"), flag("NORM"),
     flag("PER_SAMPLE"), flag("ACT"), flag("WINDOW"), block("BLOCK")),
    sites={"max_pool_forward": [[dict(NORM=True, ACT=a) for a in _PENDING_ACT_CODES] + [dict(NORM=False, ACT=_NO_ACT)],
                                _PER_SAMPLE_ELEMENTWISE, _POOL_WINDOWS]})

MAX_POOL_BACKWARD = KernelSpec(
    "max_pool_backward",
    (tensor("grad_y_ptr"), tensor("argmax_ptr", "*u8"), tensor("grad_x_ptr"), integer("TOTAL"),
     integer("C", 16, tuned=True), integer("H"), integer("W"), integer("H_OUT", tuned=True),
     integer("W_OUT", tuned=True), strides("g_strides"), strides("argmax_strides"), strides("x_strides"),
     flag("WINDOW"), block("BLOCK")),
    sites={"max_pool_backward": [_POOL_WINDOWS]})

# After a norm's activation: a residual added, then a conv epilogue's activation (its output's sign gives the
# gradient), or neither.
_RESIDUAL_OUT_ACTS = [dict(RESIDUAL=True, OUT_ACT=a) for a in _ACT_CODES]
_NO_RESIDUAL_OUT_ACT = dict(RESIDUAL=False, OUT_ACT=_NO_ACT)
# The residual: a tensor, or a pending norm's y (a ResNet projection's: no activation; a PReLU's is the heaviest).
_TENSOR_RESIDUAL = dict(RES_NORM=False, RES_ACT=_NO_ACT)
_RESIDUAL_NORMS = [dict(RES_NORM=True, RES_ACT=int(Act.PRELU)), dict(RES_NORM=True, RES_ACT=_NO_ACT), _TENSOR_RESIDUAL]

PENDING_NORM = KernelSpec(
    "pending_norm",
    (tensor("y_ptr"), pending_norm_tables("norm"), tensor("res_ptr"), pending_norm_tables("res_norm"),
     tensor("out_ptr"), integer("PIXELS"), integer("C", 16, tuned=True), integer("H"), integer("W"), real("NEG_SLOPE"),
     real("RES_NEG_SLOPE"), real("OUT_NEG_SLOPE"), strides("y_strides"), strides("res_strides"),
     strides("out_strides"), flag("ACT"), flag("OUT_ACT"), flag("PER_SAMPLE"), flag("RESIDUAL"), flag("RES_NORM"),
     flag("RES_ACT"), block("BLOCK_P"), block("BLOCK_C")),
    sites={"pending_norm": [[dict(ACT=a) for a in _PENDING_ACT_CODES],
                            _RESIDUAL_OUT_ACTS + [_NO_RESIDUAL_OUT_ACT], _PER_SAMPLE_ELEMENTWISE, _RESIDUAL_NORMS]})

BATCH_NORM_ACT_BACKWARD = KernelSpec(
    "batch_norm_act_backward",
    (tensor("g_ptr"), tensor("y_ptr"), pending_norm_tables("norm"), tensor("res_ptr"),
     pending_norm_tables("res_norm"), tensor("out_ptr"), tensor("dy_ptr"), tensor("dres_ptr"),
     tensor("partial_ptr", "*fp32"), tensor("res_partial_ptr", "*fp32"), integer("PIXELS"),
     integer("C", 16, tuned=True), integer("H"), integer("W"), real("NEG_SLOPE"), real("RES_NEG_SLOPE"),
     real("OUT_NEG_SLOPE"), strides("g_strides"), strides("y_strides"), strides("res_strides"),
     strides("out_strides"), strides("dy_strides"), strides("dres_strides"), flag("ACT"), flag("OUT_ACT"),
     flag("PER_SAMPLE"), flag("RESIDUAL"), flag("RES_NORM"), flag("RES_ACT"), block("BLOCK_P"), block("BLOCK_C")),
    sites={"batch_norm_act_input_grad": [[dict(ACT=a) for a in _PENDING_ACT_CODES], _PER_SAMPLE_ELEMENTWISE,
                                         _fixed(**_NO_RESIDUAL_OUT_ACT, **_TENSOR_RESIDUAL)],
           "residual_norm_act_input_grad": [[dict(ACT=a) for a in _PENDING_ACT_CODES], _RESIDUAL_OUT_ACTS,
                                            _PER_SAMPLE_ELEMENTWISE, _RESIDUAL_NORMS]})

CHANNEL_STATISTICS = KernelSpec(
    "channel_statistics",
    (tensor("y_ptr"), tensor("stats_ptr", "*fp32"), integer("PIXELS"), integer("C", 16, tuned=True), integer("H"),
     integer("W"), strides("y_strides"), block("BLOCK_P"), block("BLOCK_C")),
    sites={"channel_statistics": [[{}]]})

NORM_STATISTICS = KernelSpec(
    "norm_statistics",
    (tensor("parts_ptr", "*fp32"), tensor("partial_ptr", "*fp64"), tensor_pair("affine"), tensor_pair("norm", "*fp32"),
     tensor("stat_ptr", "*fp64"), tensor_pair("running"), integer("TILES"), integer("C", 16, tuned=True),
     integer("G"), integer("WIDTH"), integer("TILES_PER_SPLIT", 16), integer("IMAGE_PIXELS"), integer("GROUP_ROWS"),
     real("EPS"), real("MOMENTUM"), flag("STAGE"), flag("RUNNING"), flag("ROW_PARTS"), block("BLOCK_T"),
     block("BLOCK_S")),
    # A split's first launch (STAGE 1) never finalises, so never updates running statistics; STAGE 3 (an instance
    # norm's running statistics) does nothing else.
    sites={"norm_statistics": [[dict(STAGE=0, RUNNING=False), dict(STAGE=0, RUNNING=True),
                                dict(STAGE=1, RUNNING=False), dict(STAGE=2, RUNNING=False),
                                dict(STAGE=2, RUNNING=True), dict(STAGE=3, RUNNING=True)],
                               [dict(ROW_PARTS=False), dict(ROW_PARTS=True)]]})

NORM_STATISTICS_BACKWARD = KernelSpec(
    "norm_statistics_backward",
    (tensor_pair("grad", "*fp32"), tensor("stat_ptr", "*fp64"), tensor("gamma_ptr"),
     tensor_pair("coefficients", "*fp32"), tensor_pair("affine_grad"), integer("N"), integer("C", 16, tuned=True),
     integer("G"), integer("WIDTH"), integer("COUNT"), block("BLOCK_S")),
    sites={"norm_statistics_backward": [[{}]]})

# Every kernel the launchers run, in the doctor's order.
KERNELS = (CONV2D_IMPLICIT_GEMM, CONV2D_WEIGHT_GRAD, CONV_OUTPUT_GRAD, UPSAMPLE2X_BACKWARD, MAX_POOL,
           MAX_POOL_BACKWARD, PENDING_NORM, BATCH_NORM_ACT_BACKWARD, CHANNEL_STATISTICS,
           NORM_STATISTICS, NORM_STATISTICS_BACKWARD)

# The doctor's yardsticks (kernels.reference): compiled, never launched.
MATMUL = KernelSpec(
    "matmul", (tensor("a_ptr"), tensor("b_ptr"), tensor("c_ptr"), integer("M", 16), integer("N", 16),
               integer("K", 16), integer("stride_am", 16), integer("stride_bk", 16), integer("stride_cm", 16),
               block("BLOCK_M"), block("BLOCK_N"), block("BLOCK_K")))
NESTED_CONV3X3 = KernelSpec(
    "nested_conv3x3", (tensor("x_ptr"), tensor("w_ptr"), tensor("y_ptr"), integer("PIXELS", 16), integer("H", 16),
                       integer("W", 16), integer("C_IN", 16), integer("C_OUT", 16), block("BLOCK_M"), block("BLOCK_N"),
                       block("BLOCK_K")))
