"""Argument validation shared by the launchers and the eager fallback (plain PyTorch, no Triton)."""
import torch

from . import codes

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Inside the kernels pixel indices are int32 (N*H*W <= 2^31 - 1) and so are offsets within one input image;
# offsets into outputs and output gradients are int64 (a 3 -> 64 conv at 8192^2 writes 4.3e9 elements per image).
MAX_INT32 = 2**31 - 1


ACTIVATIONS = tuple(codes.ACTIVATIONS)
EPILOGUE_ACTIVATIONS = codes.EPILOGUE_ACTIVATIONS
UP_MODES = tuple(codes.UP_MODES)
POOL_PADDING = codes.POOL_PADDING


def check_tensor(name, t, ndim, *, dtype_like=None, device_like=None, like_name="the input x"):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        layout = {1: "[C]", 4: "[N, C, H, W]"}.get(ndim, f"{ndim}-D")
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if dtype_like is not None and t.dtype != dtype_like.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {like_name} has {dtype_like.dtype}; cast them to one dtype")
    if device_like is not None and t.device != device_like.device:
        raise ValueError(f"{name} is on {t.device} but {like_name} is on {device_like.device}; mixed devices")
    if ndim == 4 and t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one channel, got shape {tuple(t.shape)}")
    if ndim == 4 and max(t.shape[1] * t.shape[2] * t.shape[3], t.shape[0] * t.shape[2] * t.shape[3]) > MAX_INT32:
        raise ValueError(f"{name} of shape {tuple(t.shape)}: one image, or N*H*W pixels, exceeds 2^31 - 1")


def check_bias(bias, channels, x):
    if bias is None:
        return
    check_tensor("bias", bias, 1, dtype_like=x, device_like=x)
    if bias.shape[0] != channels:
        raise ValueError(f"bias must have shape [{channels}] (one per output channel), got {tuple(bias.shape)}")


def check_activation(activation, negative_slope, epilogue=False, channels=None):
    """An activation name of codes.ACTIVATIONS; with ``epilogue`` (a conv's own output) one of EPILOGUE_ACTIVATIONS.
    A PReLU's ``negative_slope`` is its weight: a floating tensor of 1 or ``channels`` slopes."""
    names = EPILOGUE_ACTIVATIONS if epilogue else ACTIVATIONS
    if activation not in names:
        hint = (" (silu, gelu and prelu fuse after a norm: the conv's epilogue keeps only its output, and their "
                "backward needs the input)") if activation in ACTIVATIONS else ""
        raise ValueError(f"activation must be one of {names}, got {activation!r}{hint}")
    if activation == "prelu":
        if not isinstance(negative_slope, torch.Tensor) or not negative_slope.is_floating_point():
            raise TypeError(f"a prelu's negative_slope must be its weight, a floating-point tensor, got "
                            f"{type(negative_slope).__name__}")
        if negative_slope.numel() not in (1, channels):
            raise ValueError(f"a prelu's negative_slope must hold 1 or {channels} slopes (one per channel), got "
                             f"shape {tuple(negative_slope.shape)}")
        return
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"negative_slope must be a float, got {type(negative_slope).__name__}")
    if activation == "leaky_relu" and not negative_slope >= 0:
        raise ValueError(f"negative_slope must be >= 0 for the fused leaky_relu (its backward reads the sign of the "
                         f"output), got {negative_slope}")


# The conv kernel keeps which kernel rows / columns of a pixel fall inside the image as bits of an int32.
MAX_KERNEL_SIZE = 31


def _check_odd_kernel(weight):
    kh, kw = weight.shape[2], weight.shape[3]
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"weight must have an odd square kernel (1x1, 3x3, ...), got {kh}x{kw}")
    if kh > MAX_KERNEL_SIZE:
        raise ValueError(f"weight's kernel may be at most {MAX_KERNEL_SIZE}x{MAX_KERNEL_SIZE}, got {kh}x{kw}")


def _square(name, value):
    """An int, or a pair of equal ints (a square kernel's stride or padding), as one int."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or a pair of equal ints, got {value!r}")
    return value


def conv_geometry(k, stride=1, padding="same"):
    """(stride, zero padding) as ints of a conv with a square k x k kernel: stride 1 or 2; padding an int in [0, k),
    "valid" (0) or "same" (k // 2: odd k, stride 1)."""
    stride = _square("stride", stride)
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if padding == "same":
        if k % 2 == 0 or stride != 1:
            raise ValueError(f"padding='same' needs an odd kernel and stride 1, got a {k}x{k} kernel at stride "
                             f"{stride}; give the padding as an int")
        return stride, k // 2
    if padding == "valid":
        return stride, 0
    padding = _square("padding", padding)
    if not 0 <= padding < k:
        raise ValueError(f"padding must be in [0, {k - 1}] for a {k}x{k} kernel, got {padding}")
    return stride, padding


def _check_square_weight(x, weight, transposed, skip=None):
    """x (and ``skip``: then cat([x, skip], 1)) and a square weight (1x1 up to MAX_KERNEL_SIZE) that reads its
    channels: [C_out, C_in, k, k], or [C_in, C_out, k, k] when ``transposed``. Returns (its output channels, k)."""
    check_tensor("x", x, 4)
    check_tensor("weight", weight, 4, dtype_like=x, device_like=x)
    channels, source = x.shape[1], "x"
    if skip is not None:
        check_tensor("skip", skip, 4, dtype_like=x, device_like=x, like_name="x")
        if skip.shape[0] != x.shape[0] or skip.shape[2:] != x.shape[2:]:
            raise ValueError(f"skip {tuple(skip.shape)} must have x's batch and size {tuple(x.shape)} (they are "
                             "concatenated along the channels)")
        channels, source = x.shape[1] + skip.shape[1], "cat([x, skip], 1)"
    c_in, c_out = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])
    if c_in != channels:
        layout = "[C_in, C_out, k, k]" if transposed else "[C_out, C_in, k, k]"
        raise ValueError(f"weight expects {c_in} input channels ({layout}) but {source} has {channels}")
    kh, kw = weight.shape[2], weight.shape[3]
    if kh != kw or not 1 <= kh <= MAX_KERNEL_SIZE:
        raise ValueError(f"weight must have a square kernel of 1x1 up to {MAX_KERNEL_SIZE}x{MAX_KERNEL_SIZE}, "
                         f"got {kh}x{kw}")
    return c_out, kh


def check_conv2d(x, weight, bias, stride=1, padding="same"):
    """Convolution with a square kernel (1x1 up to MAX_KERNEL_SIZE), stride 1 or 2, zero padding, groups 1; returns
    (stride, padding) as ints (conv_geometry)."""
    c_out, k = _check_square_weight(x, weight, transposed=False)
    stride, padding = conv_geometry(k, stride, padding)
    if min(x.shape[2], x.shape[3]) + 2 * padding < k:
        raise ValueError(f"x of spatial size {tuple(x.shape[2:])} with padding {padding} is smaller than the "
                         f"{k}x{k} kernel: the output would be empty")
    check_bias(bias, c_out, x)
    return stride, padding


def conv_output_size(size, kernel, stride, padding):
    """Output rows (or columns) of a conv of ``size`` input rows: floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def concat_grid(up, skip, up_mode):
    """The conv's input grid (N, H, W) of cat([pad(upsample(up)), skip]): the skip's, or without a skip the
    up-sampled size of up."""
    if skip is not None:
        return skip.shape[0], skip.shape[2], skip.shape[3]
    factor = 1 if up_mode is None else 2
    return up.shape[0], factor * up.shape[2], factor * up.shape[3]


def conv_output_shape(x_shape, weight_shape, stride, padding):
    """(N, C_out, H_out, W_out) of a conv of an input of ``x_shape`` with a [C_out, C_in, k, k] weight."""
    k = weight_shape[2]
    return (x_shape[0], weight_shape[0], *(conv_output_size(size, k, stride, padding) for size in x_shape[2:4]))


def check_residual(residual, x, weight, stride, padding):
    """A conv's residual input (None: none), checked as ``check_added`` for the conv's output shape."""
    return check_added(residual, x, conv_output_shape(x.shape, weight.shape, stride, padding))


def check_added(residual, like, shape, like_name="the input x"):
    """A residual added to an output of ``shape`` (None: none): 4-D, ``like``'s dtype and device, of that shape
    or broadcast to it (a time embedding [N, C, 1, 1]). Returns it expanded to ``shape`` (a view: zero strides)."""
    if residual is None:
        return None
    check_tensor("residual", residual, 4, dtype_like=like, device_like=like, like_name=like_name)
    shape = tuple(shape)
    if any(r not in (1, s) for r, s in zip(residual.shape, shape)):
        raise ValueError(f"residual must have the output's shape {shape} or broadcast to it (a size of 1 where they "
                         f"differ), got {tuple(residual.shape)}")
    return residual.expand(shape)


def check_conv_transpose2x2(x, weight, bias):
    """Transposed convolution, kernel 2x2, stride 2, no padding, groups 1."""
    check_tensor("x", x, 4)
    check_tensor("weight", weight, 4, dtype_like=x, device_like=x)
    c_in, c_out, kh, kw = weight.shape
    if c_in != x.shape[1]:
        raise ValueError(f"weight expects {c_in} input channels ([C_in, C_out, 2, 2]) but x has {x.shape[1]}")
    if (kh, kw) != (2, 2):
        raise ValueError(f"weight must have a 2x2 kernel ([C_in, C_out, 2, 2]), got {kh}x{kw}")
    if 4 * x.shape[0] * x.shape[2] * x.shape[3] > MAX_INT32:
        raise ValueError(f"x of shape {tuple(x.shape)}: the output's N*H*W pixels (4 per input pixel) exceed 2^31 - 1")
    check_bias(bias, c_out, x)


def check_projection(proj_x, proj_weight, proj_bias, proj_stride, x, weight, stride, padding):
    """A ``functional.Projection`` summed into a conv of x: a 1x1 conv (weight [C_out, C_p, 1, 1], stride 1 or 2) of
    an input of x's batch, dtype and device whose output has the conv's shape."""
    check_tensor("projection.x", proj_x, 4, dtype_like=x, device_like=x)
    check_tensor("projection.weight", proj_weight, 4, dtype_like=x, device_like=x)
    if tuple(proj_weight.shape) != (weight.shape[0], proj_x.shape[1], 1, 1):
        raise ValueError(f"projection.weight must be [{weight.shape[0]}, {proj_x.shape[1]}, 1, 1] (the conv's output "
                         f"channels, projection.x's channels, 1x1), got {tuple(proj_weight.shape)}")
    if isinstance(proj_stride, bool) or proj_stride not in (1, 2):
        raise ValueError(f"projection.stride must be 1 or 2, got {proj_stride!r}")
    check_bias(proj_bias, weight.shape[0], x)
    out = conv_output_shape(x.shape, weight.shape, stride, padding)
    proj_out = conv_output_shape(proj_x.shape, proj_weight.shape, proj_stride, 0)
    if proj_out != out:
        raise ValueError(f"projection of {tuple(proj_x.shape)} at stride {proj_stride} gives {tuple(proj_out)}, not "
                         f"the conv's output {tuple(out)}")


def check_conv_transpose2d(x, weight, bias, stride, padding, output_padding, skip=None):
    """Transposed convolution with a square [C_in, C_out, k, k] weight (k up to MAX_KERNEL_SIZE), stride 1 or 2 (at
    most k), zero padding in [0, k), output_padding below the stride, groups 1, of x (or of cat([x, skip], 1));
    returns (stride, padding, output_padding) as ints."""
    c_out, k = _check_square_weight(x, weight, transposed=True, skip=skip)
    stride, padding = conv_geometry(k, stride, padding)
    if stride > k:
        raise ValueError(f"stride {stride} is larger than the {k}x{k} kernel: some outputs would see no input")
    output_padding = _square("output_padding", output_padding)
    if not 0 <= output_padding < stride:
        raise ValueError(f"output_padding must be in [0, {stride - 1}] at stride {stride}, got {output_padding}")
    size = [(n - 1) * stride - 2 * padding + k + output_padding for n in x.shape[2:4]]
    if min(size) < 1:
        raise ValueError(f"x of spatial size {tuple(x.shape[2:])} with padding {padding} gives an empty output "
                         f"{tuple(size)}")
    if x.shape[0] * size[0] * size[1] > MAX_INT32 or c_out * size[0] * size[1] > MAX_INT32:
        raise ValueError(f"x of shape {tuple(x.shape)}: the output's N*H*W pixels, or one image, exceed 2^31 - 1")
    check_bias(bias, c_out, x)
    return stride, padding, output_padding


def check_concat_conv2d(up, skip, weight, bias, up_mode, align_corners):
    """'same' conv of cat([up, skip], 1): up (up-sampled x2 when up_mode is set) fits inside the skip; without a
    skip (None), the conv of the up-sampled up alone."""
    check_tensor("up", up, 4)
    if skip is not None:
        check_tensor("skip", skip, 4, dtype_like=up, device_like=up, like_name="up")
    check_tensor("weight", weight, 4, dtype_like=up, device_like=up, like_name="up")
    if up_mode not in UP_MODES:
        raise ValueError(f"up_mode must be one of {UP_MODES}, got {up_mode!r}")
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be a bool, got {type(align_corners).__name__}")
    if skip is None:
        if up_mode is None:
            raise ValueError("up_mode must be 'nearest' or 'bilinear' when there is no skip (use conv2d otherwise)")
        if weight.shape[1] != up.shape[1]:
            raise ValueError(f"weight expects {weight.shape[1]} input channels ([C_out, C_in, k, k]) but up has "
                             f"{up.shape[1]}")
    else:
        if skip.shape[0] != up.shape[0]:
            raise ValueError(f"skip has batch {skip.shape[0]} but up has batch {up.shape[0]}")
        factor = 1 if up_mode is None else 2
        up_size = (factor * up.shape[2], factor * up.shape[3])
        if up_size[0] > skip.shape[2] or up_size[1] > skip.shape[3]:
            raise ValueError(f"up{' up-sampled x2' if factor == 2 else ''} has spatial size {up_size}, larger than "
                             f"the skip's {tuple(skip.shape[2:])}; it is zero-padded (centred) to the skip's size, "
                             "not cropped")
        c_in = up.shape[1] + skip.shape[1]
        if weight.shape[1] != c_in:
            raise ValueError(f"weight expects {weight.shape[1]} input channels ([C_out, C_in, k, k]) but up has "
                             f"{up.shape[1]} and skip {skip.shape[1]} ({c_in} concatenated)")
    _check_odd_kernel(weight)
    check_bias(bias, weight.shape[0], up)


def check_pending(name, y, scale, shift, activation, negative_slope):
    """A Normalized input: y plus fp32 scale and shift, one per channel (batch norm) or per (image, channel)
    (instance / group norm); a PReLU's slopes fp32, one per channel, on y's device."""
    check_tensor(f"{name}.y", y, 4)
    shapes = (tuple(y.shape[1:2]), tuple(y.shape[:2]))
    for part, t in (("scale", scale), ("shift", shift)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) not in shapes or t.dtype != torch.float32:
            raise ValueError(f"{name}.{part} must be a float32 tensor of shape [{y.shape[1]}] (one per channel of "
                             f"{name}.y) or [{y.shape[0]}, {y.shape[1]}] (per image and channel), got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if t.device != y.device:
            raise ValueError(f"{name}.{part} is on {t.device} but {name}.y is on {y.device}; mixed devices")
    if scale.shape != shift.shape:
        raise ValueError(f"{name}.scale {tuple(scale.shape)} and {name}.shift {tuple(shift.shape)} differ in shape")
    check_activation(activation, negative_slope, channels=y.shape[1])
    if activation == "prelu" and (tuple(negative_slope.shape) != (y.shape[1],) or
                                  negative_slope.dtype != torch.float32 or negative_slope.device != y.device):
        raise ValueError(f"{name}.negative_slope of a prelu must be float32 [{y.shape[1]}] on {y.device} (one slope "
                         f"per channel; functional's norms make it so), got {negative_slope.dtype} "
                         f"{tuple(negative_slope.shape)} on {negative_slope.device}")


def check_group_norm(y, groups, weight, bias):
    """A group (or instance) norm of y: ``groups`` divides y's channels; affine parameters one per channel."""
    check_tensor("y", y, 4)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or y.shape[1] % groups:
        raise ValueError(f"num_groups must be a positive integer dividing y's {y.shape[1]} channels, got {groups!r}")
    if y.shape[2] * y.shape[3] == 0 and y.numel():
        raise ValueError(f"y has no pixels to normalise, got spatial size {tuple(y.shape[2:])}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (y.shape[1],)):
            raise ValueError(f"{name} must be a tensor of shape [{y.shape[1]}] (one per channel of y), got "
                             f"{tuple(getattr(t, 'shape', ())) if isinstance(t, torch.Tensor) else type(t).__name__}")


def check_max_pool(x, window):
    if window not in POOL_PADDING:
        raise ValueError(f"window must be 2 or 3 (a 2x2 / stride-2 or a 3x3 / stride-2 / padding-1 max-pool), got "
                         f"{window!r}")
    check_tensor("x", x, 4)
    check_pool_size(x, window)


def pool_min_size(window):
    """The smallest height / width a stride-2 max-pool of ``window`` (and its padding) takes: one window inside."""
    return window - 2 * POOL_PADDING[window]


def check_pool_size(x, window=2):
    size = pool_min_size(window)
    if x.shape[2] < size or x.shape[3] < size:
        raise ValueError(f"x must be at least {size}x{size} for a {window}x{window} max-pool, got spatial size "
                         f"{tuple(x.shape[2:])}")
