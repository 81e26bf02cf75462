"""Per-op and per-block timings: fused kernels vs eager PyTorch (channels_last, autocast on the GPU)."""
import pytest
import torch

from bench.conftest import FULL, ON_GPU
import fused_unet
from fused_unet import eager, functional as FF, perf

DEVICE = "cuda" if ON_GPU else "cpu"

# (batch, channels, size): the encoder level of a base-64 U-Net at 512^2 for real runs; tiny for the smoke run.
SHAPE = (8, 64, 512) if FULL else (1, 16, 16)
DTYPE = torch.bfloat16 if ON_GPU else torch.float32


def _t(*shape):
    return torch.randn(shape, device=DEVICE, dtype=DTYPE).contiguous(
        memory_format=torch.channels_last) if len(shape) == 4 else torch.randn(shape, device=DEVICE, dtype=DTYPE)


def _ops():
    n, c, s = SHAPE
    x, w, b = _t(n, c, s, s), _t(c, c, 3, 3) * (9 * c) ** -0.5, _t(c)
    small, wt, skip = _t(n, 2 * c, s // 2, s // 2), _t(2 * c, c, 2, 2) * (2 * c) ** -0.5, _t(n, c, s, s)
    w2, w3 = _t(c, 2 * c, 3, 3) * (18 * c) ** -0.5, _t(c, 3 * c, 3, 3) * (27 * c) ** -0.5
    return {
        "conv_relu": (lambda: FF.conv2d(x, w, b, "relu"), lambda: eager.conv2d(x, w, b, "relu")),
        "conv_relu_pool": (lambda: FF.conv2d_pool(x, w, b, "relu"), lambda: eager.conv2d_pool(x, w, b, "relu")),
        "max_pool": (lambda: FF.max_pool2x2(x), lambda: eager.max_pool2x2(x)),
        "max_pool3x3": (lambda: FF.max_pool(x, 3), lambda: eager.max_pool(x, 3)),
        "conv_transpose": (lambda: FF.conv_transpose2x2(small, wt, b, "relu"),
                           lambda: eager.conv_transpose2x2(small, wt, b, "relu")),
        "up_concat_conv": (lambda: FF.concat_conv2d(FF.conv_transpose2x2(small, wt, b, "relu"), skip, w2, b, "relu"),
                           lambda: eager.concat_conv2d(eager.conv_transpose2x2(small, wt, b, "relu"), skip, w2, b,
                                                       "relu")),
        "bilinear_concat_conv": (
            lambda: FF.concat_conv2d(small, skip, w3, b, "relu", up_mode="bilinear"),
            lambda: eager.concat_conv2d(small, skip, w3, b, "relu", up_mode="bilinear")),
    }


def _run(benchmark, fn):
    def call():
        out = fn()
        if ON_GPU:
            torch.cuda.synchronize()
        return out

    if FULL:
        benchmark.extra_info.update(cuda_event_ms=perf.cuda_time_ms(fn), dtype=str(DTYPE), shape=list(SHAPE),
                                    gpu=torch.cuda.get_device_name())
    return benchmark.pedantic(call, rounds=20 if FULL else 1, warmup_rounds=5 if FULL else 0)


@pytest.mark.parametrize("contender", ["fused", "eager-cl"])
@pytest.mark.parametrize("op", list(_ops()))
def test_op_forward(benchmark, op, contender):
    benchmark.group = f"op:{op}"
    if contender == "fused":
        assert fused_unet.backend(DEVICE) != "eager"
    fused, plain = _ops()[op]
    out = _run(benchmark, fused if contender == "fused" else plain)
    for t in out if isinstance(out, tuple) else (out,):
        assert torch.isfinite(t.float()).all()


def _level(kind, norm, fused):
    """One U-Net level as a module: the encoder level (conv, conv + pool) or the decoder level (transposed conv,
    concatenating conv, conv) at SHAPE, fused (``UNet``'s modules) or eager (``ReferenceUNet``'s)."""
    n, c, s = SHAPE
    cls = fused_unet.UNet if fused else fused_unet.ReferenceUNet
    model = cls(c, 2, base_channels=c, depth=1, norm=norm)  # c input channels: the encoder level maps c -> c
    level = model.encoder[0] if kind == "encoder" else model.decoder[0]
    return level.to(DEVICE, DTYPE, memory_format=torch.channels_last)


@pytest.mark.parametrize("norm", [None, "batch"])
@pytest.mark.parametrize("contender", ["fused", "eager-cl"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_level_train_step(benchmark, kind, contender, norm):
    """Forward + backward of one level; on a GPU also its peak memory above the inputs (time: see _run)."""
    benchmark.group = f"level:{kind}:{norm or 'plain'}"
    n, c, s = SHAPE
    level = _level(kind, norm, contender == "fused")
    x = _t(n, c, s, s) if kind == "encoder" else _t(n, 2 * c, s // 2, s // 2)
    skip = _t(n, c, s, s)

    def step():
        out = level(x) if kind == "encoder" else level(x, skip)
        loss = sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))
                   if isinstance(o, torch.Tensor))
        loss.backward()

    if FULL:
        step()  # autotune outside the measurement
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        benchmark.extra_info["peak_memory_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    _run(benchmark, step)
