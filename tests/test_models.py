"""UNet (fused kernels) vs ReferenceUNet (plain torch.nn) with shared weights, forward and backward."""
import pytest
import torch

from tests.conftest import DEVICE, MODEL_TOLERANCE_FACTOR, assert_close, gpu_only
from fused_unet import ReferenceUNet, UNet


def _pair(dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    model = UNet(**kwargs).to(DEVICE, dtype)
    reference = ReferenceUNet(**kwargs).to(DEVICE, torch.float64)
    reference.load_state_dict(model.state_dict())
    return model, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=gpu_only)])
@pytest.mark.parametrize("kwargs,size", [
    (dict(in_channels=3, num_classes=2, base_channels=4, depth=2), (16, 16)),
    (dict(in_channels=1, num_classes=3, base_channels=4, depth=3, double_conv=False), (17, 13)),
])
def test_unet_matches_reference_forward_and_backward(kwargs, size, dtype):
    model, reference = _pair(dtype, **kwargs)
    x = torch.randn(2, kwargs["in_channels"], *size, device=DEVICE)
    x_fused = x.to(dtype).requires_grad_()
    x_ref = x_fused.detach().double().requires_grad_()
    out, ref = model(x_fused), reference(x_ref)
    assert out.shape == ref.shape == (2, kwargs["num_classes"], *size)
    grad = torch.randn(out.shape, device=DEVICE).to(dtype)
    out.backward(grad)
    ref.backward(grad.double())
    assert_close(out, ref, dtype, "logits", MODEL_TOLERANCE_FACTOR)
    assert_close(x_fused.grad, x_ref.grad, dtype, "grad x", MODEL_TOLERANCE_FACTOR)
    for (name, p), r in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, r.grad, dtype, f"grad {name}", MODEL_TOLERANCE_FACTOR)


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
                                          (dict(in_channels=1.5), "in_channels")])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_bad_model_input():
    model = UNet(3, 2, base_channels=4, depth=1)
    with pytest.raises(ValueError, match=r"x must be \[N, 3, H, W\]"):
        model(torch.randn(1, 1, 8, 8))
