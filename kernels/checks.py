"""Argument validation shared by the launchers and the eager fallback (plain PyTorch, no Triton)."""
import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Inside the kernels the batch offset is int64; offsets within one image and pixel indices are int32.
MAX_INT32 = 2**31 - 1


def check_tensor(name, t, ndim, *, dtype_like=None, device_like=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        layout = {1: "[C]", 4: "[N, C, H, W]"}.get(ndim, f"{ndim}-D")
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if dtype_like is not None and t.dtype != dtype_like.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the input x has {dtype_like.dtype}; cast them to one dtype")
    if device_like is not None and t.device != device_like.device:
        raise ValueError(f"{name} is on {t.device} but the input x is on {device_like.device}; mixed devices")
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


def check_conv2d(x, weight, bias, stride=1, padding="same"):
    """Stride-1 'same' convolution with an odd square kernel, groups 1."""
    check_tensor("x", x, 4)
    check_tensor("weight", weight, 4, dtype_like=x, device_like=x)
    c_out, c_in, kh, kw = weight.shape
    if c_in != x.shape[1]:
        raise ValueError(f"weight expects {c_in} input channels ([C_out, C_in, k, k]) but x has {x.shape[1]}")
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"weight must have an odd square kernel (1x1, 3x3, ...), got {kh}x{kw}")
    if stride != 1:
        raise ValueError(f"stride must be 1, got {stride}")
    if padding not in ("same", kh // 2):
        raise ValueError(f"padding must be 'same' or {kh // 2} for a {kh}x{kw} kernel, got {padding!r}")
    check_bias(bias, c_out, x)


def check_conv_transpose2x2(x, weight, bias):
    """Transposed convolution, kernel 2x2, stride 2, no padding, groups 1."""
    check_tensor("x", x, 4)
    check_tensor("weight", weight, 4, dtype_like=x, device_like=x)
    c_in, c_out, kh, kw = weight.shape
    if c_in != x.shape[1]:
        raise ValueError(f"weight expects {c_in} input channels ([C_in, C_out, 2, 2]) but x has {x.shape[1]}")
    if (kh, kw) != (2, 2):
        raise ValueError(f"weight must have a 2x2 kernel ([C_in, C_out, 2, 2]), got {kh}x{kw}")
    check_bias(bias, c_out, x)


def check_up_concat(x, skip, weight, bias):
    check_conv_transpose2x2(x, weight, bias)
    check_tensor("skip", skip, 4, dtype_like=x, device_like=x)
    if skip.shape[0] != x.shape[0]:
        raise ValueError(f"skip has batch {skip.shape[0]} but x has batch {x.shape[0]}")
    expected = (2 * x.shape[2], 2 * x.shape[3])
    if tuple(skip.shape[2:]) != expected:
        raise ValueError(f"skip must have spatial size {expected} (twice x's), got {tuple(skip.shape[2:])}")


def check_max_pool2x2(x):
    check_tensor("x", x, 4)
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"x must be at least 2x2 for a 2x2 max-pool, got spatial size {tuple(x.shape[2:])}")
