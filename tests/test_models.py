"""UNet (fused kernels) vs ReferenceUNet (plain torch.nn) with shared weights, forward and backward."""
import pytest
import torch

from tests.conftest import DEVICE, compare_step, gpu_only, model_triplet
from fused_unet import ReferenceUNet, UNet
from fused_unet.utils import saved_activation_bytes

pytestmark = pytest.mark.whole_model  # Whole models: the interpreter without its overflow check (conftest)


def _pair(dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    return model_triplet(UNet(**kwargs).to(DEVICE, dtype), ReferenceUNet(**kwargs).to(DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=gpu_only)])
@pytest.mark.parametrize("kwargs,size", [
    (dict(in_channels=3, num_classes=2, base_channels=4, depth=2), (16, 16)),
    (dict(in_channels=1, num_classes=3, base_channels=4, depth=3, double_conv=False), (17, 13)),
])
def test_unet_matches_reference_forward_and_backward(kwargs, size, dtype):
    models = _pair(dtype, **kwargs)
    x = torch.randn(2, kwargs["in_channels"], *size, device=DEVICE)
    grad = torch.randn(2, kwargs["num_classes"], *size, device=DEVICE)
    compare_step(models, x, grad)


def test_state_dict_round_trip_both_ways():
    model = UNet(3, 2, base_channels=4, depth=2)
    reference = ReferenceUNet(3, 2, base_channels=4, depth=2)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert all(a.shape == b.shape for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    reference.load_state_dict(model.state_dict())
    again = UNet(3, 2, base_channels=4, depth=2)
    again.load_state_dict(reference.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_segment_returns_class_ids():
    model = UNet(3, 4, base_channels=4, depth=1).to(DEVICE)
    batch = torch.randn(2, 3, 9, 7, device=DEVICE)
    masks = model.segment(batch)
    assert masks.shape == (2, 9, 7) and masks.dtype == torch.int64
    assert masks.min() >= 0 and masks.max() < 4
    single = model.segment(batch[0])
    assert single.shape == (9, 7) and torch.equal(single, masks[0])


def test_any_size_works_including_1x1():
    model = UNet(3, 2, base_channels=4, depth=2).to(DEVICE)
    assert model(torch.randn(1, 3, 1, 1, device=DEVICE)).shape == (1, 2, 1, 1)


@pytest.mark.parametrize("kwargs,match", [(dict(depth=0), "depth"), (dict(base_channels=-1), "base_channels"),
                                          (dict(in_channels=1.5), "in_channels"), (dict(up_mode="bicubic"), "up_mode"),
                                          (dict(activation="gelu"), "activation")])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_bad_model_input():
    model = UNet(3, 2, base_channels=4, depth=1)
    with pytest.raises(ValueError, match=r"x must be \[N, 3, H, W\]"):
        model(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kwargs", [dict(up_mode="bilinear"), dict(up_mode="nearest"),
                                    dict(activation="leaky_relu", negative_slope=0.2)])
def test_unet_options_match_reference(kwargs, dtype):
    kwargs = dict(in_channels=3, num_classes=2, base_channels=4, depth=2, **kwargs)
    test_unet_matches_reference_forward_and_backward(kwargs, (12, 10), dtype)


@pytest.mark.parametrize("up_mode", ["bilinear", "nearest"])
def test_state_dict_keys_match_for_every_up_mode(up_mode):
    model = UNet(3, 2, base_channels=4, depth=2, up_mode=up_mode)
    reference = ReferenceUNet(3, 2, base_channels=4, depth=2, up_mode=up_mode)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert not any(".up." in key for key in model.state_dict())


# Eval mode with BatchNorm is the no-norm path (folded); fp16 without a norm: a tiny fp16 batch-norm U-Net's
# gradients are noise, PyTorch's own included (test_norm).
@pytest.mark.parametrize("norm,batch,dtype", [("batch", 2, torch.float32), ("instance", 1, torch.float32),
                                              (None, 1, torch.float16)])
def test_residual_unet_matches_reference_in_both_modes(norm, batch, dtype):
    # ResNet basic blocks in the encoder: the skip added in the second conv's epilogue, where the widths change a
    # 1x1 conv + norm computed in that conv's kernel (eval, no norm: two GEMMs, one accumulator), or in the kernel
    # that applies its pending norm (training: the projection's norm read pending); odd sizes, batch 1.
    kwargs = dict(in_channels=3, num_classes=2, base_channels=4, depth=2, norm=norm, block="residual")
    models = _pair(dtype, **kwargs)
    x = torch.randn(batch, 3, 13, 10, device=DEVICE)
    grad = torch.randn(batch, 2, 13, 10, device=DEVICE)
    for mode in (True, False):
        for m in models:
            m.train(mode)
        compare_step(models, x, grad, f"train={mode}: ")


def test_residual_unet_state_dict_matches_reference():
    model = UNet(3, 2, base_channels=4, depth=2, norm="batch", block="residual")
    reference = ReferenceUNet(**model.config)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert "encoder.0.proj.weight" in model.state_dict() and "encoder.0.conv2.bn.running_mean" in model.state_dict()
    with pytest.raises(ValueError, match="block must be one of"):
        UNet(block="dense")
    with pytest.raises(ValueError, match="needs double_conv=True"):
        UNet(block="residual", double_conv=False)


def test_residual_unet_saves_no_residual_for_backward():
    # Each block's add keeps y and its output's sign, not the residual: the projection's normalised output is freed
    # after the add (0.577x of eager measured; 0.657x when the residual was saved).
    kwargs = dict(in_channels=3, num_classes=2, base_channels=64, depth=4, norm="batch", block="residual")
    x = torch.empty(2, 3, 256, 256, device="meta", requires_grad=True)
    fused = saved_activation_bytes(UNet(**kwargs).to("meta"), x)
    reference = saved_activation_bytes(ReferenceUNet(**kwargs).to("meta"), x)
    assert fused <= 0.6 * reference, f"the residual U-Net saves {fused / reference:.3f}x the eager model's activations"


class _SlightlyOff(UNet):
    """A U-Net 1e-4 off: far within a fixed 1e-2 tolerance, 1000x eager fp32's own error."""

    def forward(self, x):
        return super().forward(x) * (1 + 1e-4)


def test_verify_holds_a_model_to_eager_fp32s_own_error():
    # The library's check (fused_unet.verify, used by `fused-unet demo`): the fused UNet passes, a model off by
    # 1e-4 fails although a fixed 1e-2 tolerance (the demo's old check) would pass it.
    from fused_unet import verify

    kwargs = dict(in_channels=3, num_classes=2, base_channels=4, depth=1, norm="batch")
    x = torch.randn(1, 3, 12, 10, device=DEVICE)
    good = verify.check_model(UNet(**kwargs).to(DEVICE), ReferenceUNet(**kwargs), x)
    assert good["ok"] and good["worst"][1] <= verify.EAGER_ERROR_FACTOR
    bad = verify.check_model(_SlightlyOff(**kwargs).to(DEVICE), ReferenceUNet(**kwargs), x)
    assert not bad["ok"] and bad["errors"]["logits"][1] > 100


def test_a_gradient_that_cancels_to_zero_is_floored_by_its_modules_scale():
    # A conv bias before a batch-statistics norm: its float64 gradient is ~1e-15, and fp32 eager may round it to
    # exactly 0; ours (~1e-6, fp32 rounding) is judged on the scale of its weight's gradient, a wrong one still fails.
    from fused_unet import verify

    names = ["logits", "grad x", "grad conv.weight", "grad conv.bias", "grad bn.bias"]
    expected = [torch.ones(2), torch.ones(2), torch.full((2,), 5.0), torch.full((2,), 1e-15), torch.full((2,), 0.5)]
    scales = verify.floor_scales(names, expected)
    assert scales == [1.0, 1.0, 5.0, 5.0, 0.5]
    exact = torch.zeros(2, dtype=torch.float64)
    assert verify.eager_error_ratio(exact + 1e-6, expected[3], exact, scales[3])[1] <= verify.EAGER_ERROR_FACTOR
    assert verify.eager_error_ratio(exact + 1e-3, expected[3], exact, scales[3])[1] > verify.EAGER_ERROR_FACTOR
