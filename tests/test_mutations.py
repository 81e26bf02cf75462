"""Tests that cannot pass by accident: the comparison catches one wrong tile, and the float64 checks catch a kernel
launched with one flag or one operand wrong (bias dropped, taps in the wrong order, the activation's or the
pool's backward skipped)."""
import pytest
import torch

from tests.conftest import DEVICE, assert_close, check_against_float64, make_tensor
from fused_unet import eager, functional as FF
from fused_unet.kernels import conv, grad

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="patches the interpreted launchers")


def test_one_corrupted_tile_fails_the_low_precision_comparison():
    expected = torch.randn(32, 16, 64, 64, dtype=torch.float64)
    baseline = expected.half().double()  # PyTorch's own fp16 rounding
    assert_close(baseline.clone(), expected, torch.float16, baseline=baseline)
    corrupted = baseline.clone()
    corrupted[5, 3, 4:20, 2:18] *= 1.03  # one 16x16 tile 3% off: far past fp16 rounding, small in L2
    # A whole-tensor L2 rule (within twice PyTorch's own error) would let this tile pass.
    assert (corrupted - expected).norm() <= 2 * (baseline - expected).norm()
    with pytest.raises(pytest.fail.Exception, match="elements off"):
        assert_close(corrupted, expected, torch.float16, baseline=baseline)


def _conv_check(fused, reference):
    x = make_tensor((2, 3, 7, 6), requires_grad=True)
    w = make_tensor((4, 3, 3, 3), requires_grad=True, scale=0.3)
    b = make_tensor((4,), requires_grad=True)
    check_against_float64(fused, reference, [x, w, b], torch.float32)


def _mutate_launch(monkeypatch, kernel, **flags):
    run = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *args, **kwargs: run(*args, **{**kwargs, **flags}))


MUTATIONS = {
    "bias dropped": lambda mp: _mutate_launch(mp, conv.conv2d_implicit_gemm_kernel, HAS_BIAS=False),
    "taps in the wrong order": lambda mp: mp.setattr(conv, "_gemm_weight", lambda w: conv.torch.flip(
        w, (2, 3)).contiguous(memory_format=torch.channels_last)),
    "activation backward skipped": lambda mp: _mutate_launch(mp, grad.conv_output_grad_kernel, ACT=0),
    "pool backward skipped": lambda mp: _mutate_launch(mp, grad.conv_output_grad_kernel, POOL_GRAD=False),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_float64_checks_catch_a_mutated_launch(monkeypatch, mutation):
    def fused(x, w, b):
        y, pooled = FF.conv2d_pool(x, w, b, "relu")
        return y, pooled

    def reference(x, w, b):
        return eager.conv2d_pool(x, w, b, "relu")

    _conv_check(fused, reference)  # passes as launched
    MUTATIONS[mutation](monkeypatch)
    with pytest.raises(pytest.fail.Exception):
        _conv_check(fused, reference)
