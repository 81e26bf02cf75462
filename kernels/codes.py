"""The codes of the kernels' constexpr flags and the names the API gives them: one home for the kernels, their
launchers and configs, the input checks, the modules, the models and swap. Plain Python (no Triton)."""
import enum


class Act(enum.IntEnum):
    """ACT / IN_ACT: the activation of a conv's epilogue, or of a pending norm applied as a source is read."""
    NONE = 0
    RELU = 1
    LEAKY_RELU = 2
    SILU = 3
    GELU = 4  # erf form
    GELU_TANH = 5
    PRELU = 6  # a leaky ReLU whose slope is a learned table, one per channel (after a norm only)


class UpMode(enum.IntEnum):
    """UP_MODE: how a conv's first source is read onto its input grid (x2 up-sampled, or as it is)."""
    NONE = 0
    NEAREST = 1
    BILINEAR = 2
    BILINEAR_ALIGN_CORNERS = 3


class NormTable(enum.IntEnum):
    """NORM_TABLE: how a GEMM reads a pending norm's (scale, shift) as it normalises a source."""
    CHANNEL = 0  # [C] per channel (batch norm): one [K] row per step
    IMAGE_PAIR = 1  # [N, C] per (image, channel), a tile's rows in at most two images: two [K] rows per step
    GATHER = 2  # [N, C] per (image, channel), any rows (small images, few-channel sources): [rows, K] tiles


# The conv's statistics epilogue writes one workspace row per this many output pixels, whatever the tile (launches
# with statistics take the configs whose BLOCK_M is a multiple: configs.fits): the rows, and so the statistics, do
# not depend on the config. 12 bytes per channel per row: 64 keeps the workspace under 10% of a 16-bit activation.
STATS_ROWS = 64


class Statistics(enum.IntEnum):
    """STATS: the norm statistics a conv's epilogue writes (count, mean, M2 per STATS_ROWS output pixels)."""
    NONE = 0
    CHANNEL = 1  # per channel (batch norm): one workspace row per group of rows
    IMAGE = 2  # per (image, channel) (instance / group norm): a group's rows in its two images apart


# The API's names (None: no activation / not up-sampled).
ACTIVATIONS = {None: Act.NONE, "relu": Act.RELU, "leaky_relu": Act.LEAKY_RELU, "silu": Act.SILU, "gelu": Act.GELU,
               "gelu_tanh": Act.GELU_TANH, "prelu": Act.PRELU}
# A conv's own epilogue keeps only its output, and its backward reads the output's sign: the activations whose
# gradient that sign gives. Any of ACTIVATIONS may follow a norm (its backward recomputes the norm's output).
EPILOGUE_ACTIVATIONS = (None, "relu", "leaky_relu")
UP_MODES = {None: UpMode.NONE, "nearest": UpMode.NEAREST, "bilinear": UpMode.BILINEAR}
# The stride-2 max-pools the kernels run (WINDOW), window -> padding: the U-Net's 2x2, a ResNet stem's 3x3.
POOL_PADDING = {2: 0, 3: 1}
# How a U-Net's decoder up-samples (UNet(up_mode=...)): a 2x2 transposed conv, or an up-sampling the next conv reads.
DECODER_UP_MODES = ("transpose", "bilinear", "nearest")


def act_code(activation):
    """The ACT / IN_ACT constexpr of an activation name."""
    return int(ACTIVATIONS[activation])


def up_mode_code(up_mode, align_corners=False):
    """The UP_MODE constexpr of an up-sampling name (bilinear's align_corners is a mode of its own)."""
    mode = UpMode.BILINEAR_ALIGN_CORNERS if up_mode == "bilinear" and align_corners else UP_MODES[up_mode]
    return int(mode)


def image_statistics_fit(pixels_per_image):
    """Whether a conv's epilogue writes per-image statistics (Statistics.IMAGE) of images this large: a group of
    STATS_ROWS rows then spans at most two of them."""
    return pixels_per_image >= STATS_ROWS
