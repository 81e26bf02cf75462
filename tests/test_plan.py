"""fused-unet plan: a training step's launches recorded on meta tensors (nothing runs), compiled for sm_90 and
timed statically; the numbers add up, and a wasteful tile or a loop without MMA overlap scores worse."""
import json

import pytest
import torch
import triton

import fused_unet
from fused_unet import static_plan
from fused_unet.kernels import conv, specs

pytest.importorskip("triton.backends.nvidia")
UNET = dict(in_channels=3, num_classes=2, base_channels=16, depth=1, norm="batch")


def _meta_unet():
    with torch.device("meta"):
        model = fused_unet.UNet(**UNET).to(torch.bfloat16)
    return model, torch.empty(2, 3, 32, 32, device="meta", dtype=torch.bfloat16)


def test_a_recorded_launch_does_not_run():
    calls = []
    x, w = torch.zeros(1, 16, 5, 5), torch.ones(16, 16, 3, 3)
    with specs.recording(lambda *launch: calls.append(launch), sms=132):
        y = conv.conv2d_forward(x, w)
    assert len(calls) == 1
    spec, kernel, grid, args = calls[0]
    assert spec is specs.CONV2D_IMPLICIT_GEMM and kernel is conv.conv2d_implicit_gemm_kernel
    assert args["C_IN"] == 16 and args["y_ptr"] is y and len(grid(dict(BLOCK_M=64, BLOCK_N=64))) == 2


def test_the_step_is_every_launch_of_forward_and_backward():
    model, x = _meta_unet()
    launches = static_plan.record_step(model, x, "train", sms=132)
    sites = [(launch.pass_, launch.site) for launch in launches]
    assert ("forward", "conv2d_pool_forward") not in sites  # a pending norm pools in its own kernel
    assert ("forward", "concat_conv2d_forward") in sites and ("backward", "conv2d_weight_grad") in sites
    assert all(launch.layer for launch in launches)
    inference = static_plan.record_step(model, x, "infer", sms=132)
    assert {launch.pass_ for launch in inference} == {"forward"}
    assert "conv2d_stats_forward" not in {launch.site for launch in inference}  # eval: running statistics


def _conv_launch():
    model, x = _meta_unet()
    return next(launch for launch in static_plan.record_step(model, x, "train", sms=132)
                if launch.site == "conv2d_stats_forward" and launch.args["C_IN"] == 16)


def _cfg(m, n, k=16):
    return triton.Config(dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k), num_warps=4, num_stages=2)


REPORT = dict(ok=True, headroom=1.5, wgmma_wait=1, blocks_per_sm=1)


def test_a_wasteful_tile_scores_worse():
    # 16 output channels on a 256-wide N tile: 1/16 of the MMA work is useful.
    launch, hardware = _conv_launch(), static_plan.HARDWARE["sm_90"]
    fitting = static_plan.estimate(launch, _cfg(64, 16), REPORT, hardware)
    wasteful = static_plan.estimate(launch, _cfg(64, 256), REPORT, hardware)
    assert fitting["useful"] == 1.0 and wasteful["useful"] == pytest.approx(1 / 16)
    assert wasteful["bounds"]["tensor"] > 10 * fitting["bounds"]["tensor"]


def test_a_loop_waiting_for_its_own_mma_is_bounded_by_no_overlap():
    launch, hardware = _conv_launch(), static_plan.HARDWARE["sm_90"]
    overlapped = static_plan.estimate(launch, _cfg(64, 16), REPORT, hardware)
    serial = static_plan.estimate(launch, _cfg(64, 16), dict(REPORT, wgmma_wait=0), hardware)
    assert overlapped["issue"] == 1.0 and serial["issue"] == pytest.approx(1.5 / 2.5)


def test_per_sample_norm_tables_count_as_l2_bytes():
    # An instance norm's scale and shift over images of at least a tile's rows: two [BLOCK_K] rows a step (a batch
    # norm's: one, and a gate per row); over smaller images gathered as [BLOCK_M, BLOCK_K] fp32 tiles beside the A
    # tile (NormTable.GATHER), which move more bytes from L2.
    def l2(norm, size):
        with torch.device("meta"):
            model = fused_unet.UNet(**dict(UNET, norm=norm)).to(torch.bfloat16)
        image = torch.empty(2, 3, size, size, device="meta", dtype=torch.bfloat16)
        launch = next(launch for launch in static_plan.record_step(model, image, "train", sms=132)
                      if launch.site.startswith("conv2d") and launch.args["NORM_INPUT"] and launch.pass_ == "forward")
        return static_plan.estimate(launch, _cfg(64, 16, 32), REPORT, static_plan.HARDWARE["sm_90"])["l2_bytes"]

    assert l2("batch", 32) < l2("instance", 32) < 1.2 * l2("batch", 32)
    assert l2("instance", 8) > 1.5 * l2("batch", 8)


def test_plan_of_a_small_unet_adds_up(tmp_path, monkeypatch):
    # Instance norm + LeakyReLU: the statistics from the conv's epilogue, the slope a constexpr of the compiles.
    monkeypatch.setattr(static_plan, "_CACHE", tmp_path)
    model = fused_unet.UNet(**dict(UNET, norm="instance", activation="leaky_relu"))
    result = static_plan.plan(model, torch.empty(2, 3, 32, 32), "bf16", "train", candidates=1)
    rows = result["launches"]
    assert rows and {r["pass"] for r in rows} == {"forward", "backward"}
    for r in rows:
        assert r["limit"] == max(r["bounds"], key=r["bounds"].get)
        assert r["ms"] == pytest.approx(r["bounds"][r["limit"]] + static_plan.HARDWARE["sm_90"]["launch_us"] * 1e-3)
    step = result["step"]
    assert step["ms"] == pytest.approx(sum(r["ms"] for r in rows))
    assert step["flops"] == sum(r["flops"] for r in rows) > 0 and 0 < step["fraction_of_peak"] < 1
    assert step["limit_ms"] < step["ms"]
    json.dumps(result)
    assert next(model.parameters()).device.type == "cpu"  # the model itself is not touched
    assert "step (train, batch 2, bf16)" in static_plan.format_plan(result, top=3)


@pytest.mark.parametrize("kwargs, error", [(dict(dtype="int8"), ValueError), (dict(mode="eval"), ValueError),
                                            (dict(arch="sm_70"), ValueError), (dict(example_input="x"), TypeError)])
def test_bad_plan_arguments(kwargs, error):
    arguments = {"model": fused_unet.UNet(**UNET), "example_input": torch.empty(1, 3, 8, 8), **kwargs}
    with pytest.raises(error, match=next(iter(kwargs))):
        static_plan.plan(**arguments)
