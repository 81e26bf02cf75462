"""Every registered GPU config, run through the interpreter (which runs any block size) on shapes that span several
tiles in M and N, several channel blocks and several weight-grad splits; and results that do not depend on what
the autotuner tried before it chose (each config back to back on the same buffers, then the chosen one)."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import DEVICE, check_against_float64, make_tensor
from fused_unet import eager, functional as FF
from fused_unet.kernels import configs, conv, norm, pool

# Every config of each kernel (the op tests run the kernels with the interpreter's overflow check: conftest).
pytestmark = [pytest.mark.skipif(DEVICE != "cpu", reason="forces configs on the interpreter; a GPU autotunes them"),
              pytest.mark.whole_model]


@contextlib.contextmanager
def forced(kernel, cfg):
    """Launch ``kernel`` (an autotuner) with ``cfg`` only."""
    saved = kernel.configs
    kernel.configs = [cfg]
    try:
        yield
    finally:
        kernel.configs = saved


@contextlib.contextmanager
def emulated_autotuner(kernel, trials, chosen):
    """Each launch of ``kernel`` first runs every config of ``trials`` that the autotuner's pruning keeps for it
    (configs.fits) on the same arguments (as its benchmark does, on the same output and workspace buffers), then
    ``chosen`` after the autotuner's own reset."""
    run = kernel.run

    def tuning_run(*args, **kwargs):
        for cfg in [c for c in trials if configs.fits(c, kwargs)]:
            with forced(kernel, cfg):
                run(*args, **kwargs)
        # The autotuner zeroes the workspaces its trials wrote (reset_to_zero) before the chosen config runs.
        kernel.pre_hook({**dict(zip(kernel.arg_names, args)), **kwargs}, reset_only=True)
        with forced(kernel, chosen):
            return run(*args, **kwargs)

    # The autotuner holds every candidate while it tunes: launchers size their workspaces from that list.
    saved, kernel.configs = kernel.configs, list(trials) + [chosen]
    kernel.run = tuning_run
    try:
        yield
    finally:
        del kernel.run
        kernel.configs = saved


@pytest.fixture
def two_splits(monkeypatch):
    # The weight-grad splits its pixels over programs on a GPU; make it do so here.
    monkeypatch.setattr(conv, "_weight_grad_split", lambda *args: 2)


@pytest.fixture
def splits_by_tile(monkeypatch):
    # As on a GPU, the split follows the tile launched: smaller tiles (more of them), more splits.
    monkeypatch.setattr(conv, "_weight_grad_split", lambda num_pix, tiles, sms: min(3, max(1, tiles // 9)))


def _conv_case(cfg, c_in, c_out):
    """x, weight, bias spanning 2+ row tiles of ``cfg`` (and 2 weight-grad splits of 256 pixels)."""
    side = max(17, int((2 * cfg.kwargs["BLOCK_M"]) ** 0.5) + 1)
    x = make_tensor((1, c_in, side, side), layout="channels_last", requires_grad=True)
    w = make_tensor((c_out, c_in, 3, 3), requires_grad=True, scale=(c_in * 9) ** -0.5)
    b = make_tensor((c_out,), requires_grad=True)
    return [x, w, b]


@pytest.mark.parametrize("cfg", configs.all_gpu_configs("conv2d_implicit_gemm"), ids=str)
def test_every_conv_config_forward_and_input_grad(cfg):
    # Two channel blocks without a channel mask forward; two column tiles; the input-grad's K (C_out) is masked.
    x, w, b = _conv_case(cfg, 2 * cfg.kwargs["BLOCK_K"], cfg.kwargs["BLOCK_N"] + 16)
    with forced(conv.conv2d_implicit_gemm_kernel, cfg):
        out = FF.conv2d(x, w, b, "relu")
        grad = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, [x], grad)
    xr, wr = x.detach().double().requires_grad_(), w.detach().double()
    ref = eager.conv2d(xr, wr, b.detach().double(), "relu")
    (rgx,) = torch.autograd.grad(ref, [xr], grad.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gx.double(), rgx, atol=1e-4, rtol=1e-4)


def _fused_ops(cfg):
    """(fused, eager, inputs) of the pool, concatenation and transposed-conv epilogues / prologues at 2+ tiles; the
    weights take no gradient (their kernel is not the one forced)."""
    m, n = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    side = 2 * max(5, int((2 * m) ** 0.5) // 2 + 1)
    x = make_tensor((1, 2 * cfg.kwargs["BLOCK_K"], side, side), layout="channels_last", requires_grad=True)
    w = make_tensor((n + 16, x.shape[1], 3, 3), scale=0.05)
    up = make_tensor((1, 8, side // 2, side // 2), requires_grad=True)
    wc = make_tensor((n + 16, 8 + x.shape[1], 3, 3), scale=0.05)
    wt = make_tensor((x.shape[1], n // 4 + 8, 2, 2), scale=0.05)
    return {
        "conv+pool": (lambda x, w: FF.conv2d_pool(x, w, None, "relu"),
                      lambda x, w: eager.conv2d_pool(x, w, None, "relu"), [x, w]),
        "concat nearest": (lambda u, s, w: FF.concat_conv2d(u, s, w, None, "relu", up_mode="nearest"),
                           lambda u, s, w: eager.concat_conv2d(u, s, w, None, "relu", up_mode="nearest"), [up, x, wc]),
        "transposed conv": (lambda x, w: FF.conv_transpose2x2(x, w, None, "relu"),
                            lambda x, w: eager.conv_transpose2x2(x, w, None, "relu"), [x, wt]),
    }


@pytest.mark.parametrize("op", ["conv+pool", "concat nearest", "transposed conv"])
@pytest.mark.parametrize("cfg", configs.all_gpu_configs("conv2d_implicit_gemm"), ids=str)
def test_every_conv_config_on_the_fused_epilogues_and_prologues(cfg, op):
    fused, reference, inputs = _fused_ops(cfg)[op]
    with forced(conv.conv2d_implicit_gemm_kernel, cfg):
        check_against_float64(fused, reference, inputs, torch.float32)


@pytest.mark.parametrize("cfg", configs.all_gpu_configs("conv2d_weight_grad"), ids=str)
def test_every_weight_grad_config(cfg, two_splits):
    # Two tiles of output channels (M) and of input channels (N) per tap, two pixel splits; no input-grad (its
    # kernel is not the one forced).
    x, w, b = _conv_case(cfg, cfg.kwargs["BLOCK_N"] + 16, cfg.kwargs["BLOCK_M"] + 16)
    x.requires_grad_(False)
    with forced(conv.conv2d_weight_grad_kernel, cfg):
        check_against_float64(lambda x, w, b: FF.conv2d(x, w, b, "relu"),
                              lambda x, w, b: eager.conv2d(x, w, b, "relu"), [x, w, b], torch.float32)


@pytest.mark.parametrize("kernel,cfg", [(kernel, cfg) for kernel in ("conv2d_implicit_gemm", "conv2d_weight_grad")
                                        for cfg in configs.all_gpu_configs(kernel)], ids=str)
def test_every_gemm_config_reads_a_per_sample_norm_across_images(kernel, cfg, two_splits):
    # Two 17x17 images: some tile's rows (weight-grad: pixel step) lie in both, each normalised with its own image's
    # statistics (NormTable.IMAGE_PAIR). The forward, or the weight's gradient only.
    y = make_tensor((2, 8, 17, 17), layout="channels_last")
    w = make_tensor((16, 8, 3, 3), requires_grad=kernel == "conv2d_weight_grad", scale=0.2)
    with forced(getattr(conv, f"{kernel}_kernel"), cfg):
        check_against_float64(lambda y, w: FF.conv2d(FF.instance_norm(y, activation="relu"), w),
                              lambda y, w: F.conv2d(F.relu(F.instance_norm(y)), w, padding=1), [y, w], torch.float32)


def _few_channels_case(cfg, c_in, kernel, weight_grad):
    """An NCHW input of ``c_in`` channels (taps run as one K range forward, on the weight-grad's columns) spanning
    2+ row tiles of ``cfg``, with 2+ output-channel tiles; the gradient of the weight (``weight_grad``) or of x."""
    side = max(9, int((2 * cfg.kwargs["BLOCK_M"]) ** 0.5) + 1)
    x = make_tensor((1, c_in, side, side + 1), requires_grad=not weight_grad)
    w = make_tensor((cfg.kwargs["BLOCK_N"] + 16, c_in, kernel, kernel), requires_grad=weight_grad,
                    scale=(c_in * kernel * kernel) ** -0.5)
    return [x, w, make_tensor((w.shape[0],))]


@pytest.mark.parametrize("cfg", configs.all_gpu_configs("conv2d_implicit_gemm"), ids=str)
def test_every_conv_config_on_a_few_channel_input(cfg):
    # 6 channels x 25 taps = 150 of K: several K tiles, each spanning taps; the input-grad's K is 16+ channels.
    with forced(conv.conv2d_implicit_gemm_kernel, cfg):
        check_against_float64(lambda x, w, b: FF.conv2d(x, w, b, "relu"),
                              lambda x, w, b: eager.conv2d(x, w, b, "relu"), _few_channels_case(cfg, 6, 5, False),
                              torch.float32)


@pytest.mark.parametrize("cfg", configs.all_gpu_configs("conv2d_weight_grad"), ids=str)
def test_every_weight_grad_config_on_a_few_channel_input(cfg, two_splits):
    # 15 channels x 9 taps = 135 columns of (tap, channel): 2+ column tiles of every config but the widest.
    x, _, _ = _few_channels_case(cfg, 15, 3, True)
    w = make_tensor((cfg.kwargs["BLOCK_M"] + 16, 15, 3, 3), requires_grad=True, scale=0.1)
    with forced(conv.conv2d_weight_grad_kernel, cfg):
        check_against_float64(lambda x, w: FF.conv2d(x, w, None, "relu"),
                              lambda x, w: eager.conv2d(x, w, None, "relu"), [x, w], torch.float32)


def test_weight_grad_split_fills_the_gpu():
    # The 64->64 weight-grad of a 512x512 batch-16 layer on 132 SMs: 9 tiles of 64x64 (one per tap).
    split = conv._weight_grad_split(16 * 512 * 512, 9, 132)
    assert 9 * split <= 132 and 9 * split >= 0.9 * 132
    # Enough tiles already: no split. Too few pixels to split: none either.
    assert conv._weight_grad_split(16 * 64 * 64, 1152, 132) == 1
    assert conv._weight_grad_split(2 * conv.WEIGHT_GRAD_PIXEL_CHUNK, 9, 132) == 1
    # Every split the kernel runs gives every program pixels.
    for pixels in (1000, 4096, 123457):
        for tiles in (1, 9, 40):
            split = conv._weight_grad_split(pixels, tiles, 132)
            assert (split - 1) * conv.weight_grad_pixels_per_split(pixels, split) < pixels


def test_weight_grad_workspace_of_a_trial_is_not_summed(splits_by_tile):
    # The trials' smaller row tiles split the pixels more ways than the chosen tile: their slices must not survive.
    x = make_tensor((2, 24, 12, 12), layout="channels_last", requires_grad=True)
    w = make_tensor((40, 24, 3, 3), requires_grad=True, scale=0.1)
    chosen = configs.GPU_CONFIGS["conv2d_weight_grad"]["16bit"][0]

    def weight_grad():
        return torch.autograd.grad(FF.conv2d(x, w, None).square().sum(), [w])[0]

    with forced(conv.conv2d_weight_grad_kernel, chosen):
        clean = weight_grad()
    with emulated_autotuner(conv.conv2d_weight_grad_kernel, configs.GPU_CONFIGS["conv2d_weight_grad"]["fp32"],
                            chosen):
        tuned = weight_grad()
    assert torch.equal(clean, tuned)
    wr = w.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(eager.conv2d(x.detach().double(), wr, None).square().sum(), [wr])
    torch.testing.assert_close(tuned.double(), ref, rtol=1e-4, atol=1e-3)


def _bn_step(x, w, skip):
    """A BatchNorm training step of a concatenating conv (statistics epilogue, pending norm, weight-grad)."""
    y, stats = FF.concat_conv2d_stats(x, skip, w, up_mode="nearest")
    z = FF.batch_norm(y, stats, activation="relu")
    out = FF.conv2d(z, w[:, :8], None)
    grads = torch.autograd.grad(out.square().sum(), [x, w, skip])
    return (y, stats, out, *grads)


def test_results_do_not_depend_on_what_the_autotuner_tried(two_splits):
    x = make_tensor((2, 8, 9, 9), requires_grad=True)
    skip = make_tensor((2, 8, 18, 18), layout="channels_last", requires_grad=True)
    w = make_tensor((8, 16, 3, 3), requires_grad=True, scale=0.1)
    chosen = {"conv": configs.GPU_CONFIGS["conv2d_implicit_gemm"]["16bit"][0],
              "wgrad": configs.GPU_CONFIGS["conv2d_weight_grad"]["16bit"][0]}
    with forced(conv.conv2d_implicit_gemm_kernel, chosen["conv"]), \
            forced(conv.conv2d_weight_grad_kernel, chosen["wgrad"]):
        clean = _bn_step(x, w, skip)
    # The trials run smaller row tiles than the chosen one: stale statistics rows would survive it.
    with emulated_autotuner(conv.conv2d_implicit_gemm_kernel, configs.GPU_CONFIGS["conv2d_implicit_gemm"]["fp32"],
                            chosen["conv"]), \
            emulated_autotuner(conv.conv2d_weight_grad_kernel, configs.GPU_CONFIGS["conv2d_weight_grad"]["fp32"],
                               chosen["wgrad"]):
        tuned = _bn_step(x, w, skip)
    for name, a, c in zip(["y", "stats", "out", "grad x", "grad w", "grad skip"], clean, tuned):
        assert torch.equal(a, c), f"{name} differs after the autotuner's trial runs"


@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per-image"])
@pytest.mark.parametrize("cfg", [c for c in configs.all_gpu_configs("conv2d_implicit_gemm")
                                 if configs.fits(c, dict(STATS=True))], ids=str)
def test_statistics_rows_do_not_depend_on_the_tile(cfg, per_image):
    # 11x13 pixels at batch 3: the rows of 64 pixels straddle images, and a 128- or 256-row tile holds three images.
    x = make_tensor((3, 16, 11, 13))
    w = make_tensor((48, 16, 3, 3), scale=0.1)
    with forced(conv.conv2d_implicit_gemm_kernel, cfg):
        y, stats = conv.conv2d_stats_forward(x, w, per_image=per_image)
    assert stats.shape[0] == conv.stats_rows(3 * 11 * 13) + (3 if per_image else 0)
    images = dict(images=(3, 11 * 13)) if per_image else {}
    parts = stats if per_image else stats[None]
    mean, var, _ = norm.norm_statistics(parts, 48, torch.ones(48), torch.ones(48), 1e-5, **images)[2].transpose(0, 1)
    ref = eager.conv2d(x.double(), w.double())
    dims = (2, 3) if per_image else (0, 2, 3)
    torch.testing.assert_close(mean, ref.mean(dims).reshape(mean.shape), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, ref.var(dims, unbiased=False).reshape(var.shape), atol=1e-5, rtol=1e-5)
    assert stats[:, 0].sum(0).eq(3 * 11 * 13).all()  # every row written, every pixel counted once


def test_every_statistics_launch_has_configs():
    kernel = "conv2d_implicit_gemm"
    for dtype in ("fp32", "tf32", "fp16"):
        assert configs.gpu_configs(kernel, dtype, dict(STATS=True))
    assert all(cfg.kwargs["BLOCK_M"] % configs.STATS_ROWS == 0 for cfg in configs.INTERPRETER_CONFIGS[kernel])


def test_fast_divisor_matches_integer_division():
    n = torch.tensor([0, 1, 2, 3, 7, 63, 64, 65, 1000, 2**20 + 3, 2**31 - 1], dtype=torch.int64)
    for d in [1, 2, 3, 5, 7, 9, 17, 64, 255, 256, 1000, 8191, 2**31 - 1]:
        magic, shift = conv.fast_divisor(d)
        m = magic % 2**32
        assert torch.equal((((n * m) >> 32) + n) >> shift, n // d), d


class _RecordingFlags(dict):
    """A launch's flags that remember which ones configs.fits asked for."""

    def __init__(self):
        super().__init__()
        self.read = set()

    def get(self, name, default=None):
        self.read.add(name)
        return default


@pytest.mark.parametrize("kernel", [conv.conv2d_implicit_gemm_kernel, conv.conv2d_weight_grad_kernel])
def test_autotune_keys_hold_every_flag_that_decides_which_configs_fit(kernel):
    # A cached choice is reused for every launch with the same key: a flag that changes which configs fit but is not
    # in the key let a STATS launch reuse a plain launch's 32-row tile on the GPU (statistics need 64-row groups).
    flags = _RecordingFlags()
    for cfg in configs.all_gpu_configs("conv2d_implicit_gemm"):
        configs.fits(cfg, flags, 80)
    assert flags.read & set(kernel.arg_names) <= set(kernel.keys)


def test_configs_stay_off_the_tiles_that_spilled_inside_their_loops():
    import triton.language as tl

    gemm = configs.GPU_CONFIGS["conv2d_implicit_gemm"]
    wide = gemm["16bit"][0]
    assert (wide.kwargs, wide.num_warps) == (dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64), 8)
    pending = dict(NORM_INPUT=True, IN_ACT=1)
    # sm_80, a pending norm beside a 128x128 accumulator with a 128x64 A tile (Triton 3.6: 18 local accesses a step).
    assert configs.fits(wide, {}, 80) and configs.fits(wide, pending, 90) and not configs.fits(wide, pending, 80)
    assert configs.gpu_configs("conv2d_implicit_gemm", "fp16", pending, 80)
    # IEEE fp32 (FMA) bilinear source with a pending norm: the 32x64 tile (sm_90, Triton 3.6).
    narrow = next(c for c in gemm["fp32"] if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) == (32, 64))
    bilinear = dict(pending, UP_MODE=2, DOT_DTYPE=tl.float32)
    assert not configs.fits(narrow, dict(bilinear, INPUT_PRECISION="ieee"))
    assert configs.fits(narrow, dict(bilinear, INPUT_PRECISION="tf32"))
    assert configs.gpu_configs("conv2d_implicit_gemm", "fp32", dict(bilinear, INPUT_PRECISION="ieee"))


@pytest.mark.parametrize("window", [2, 3])
@pytest.mark.parametrize("cfg", configs.all_gpu_configs("max_pool"), ids=str)
def test_every_max_pool_config(cfg, window):
    # 2+ programs forward (pooled elements) and backward (the 3x3 gather runs over x's elements), a pending norm.
    side = int(cfg.kwargs["BLOCK"] ** 0.5) + 3
    x = make_tensor((2, 4, side, side + 2), layout="channels_last", requires_grad=True)
    scale, shift = torch.rand(4, device=DEVICE) + 0.5, make_tensor((4,))

    def fused(x):
        return FF.max_pool(FF.Normalized(x, scale, shift, "leaky_relu", 0.1), window)

    def reference(x):
        z = torch.nn.functional.leaky_relu(x * scale.to(x.dtype)[:, None, None] + shift.to(x.dtype)[:, None, None], 0.1)
        return torch.nn.functional.max_pool2d(z, window, stride=2, padding=window - 2)

    for backward in configs.all_gpu_configs("max_pool_backward"):
        with forced(pool.max_pool_kernel, cfg), forced(pool.max_pool_backward_kernel, backward):
            check_against_float64(fused, reference, [x], torch.float32)
