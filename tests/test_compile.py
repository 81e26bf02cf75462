"""torch.compile: the launchers are custom ops (fused_unet.ops) that pass torch.library.opcheck, and a compiled
fused UNet traces as one graph and matches the float64 reference, forward and backward."""
import pytest
import torch

import fused_unet
from fused_unet import ops
from tests.conftest import DEVICE, MODEL_TOLERANCE_FACTOR, assert_close, make_tensor


def _cases():
    x, w, b = make_tensor((2, 3, 5, 6)), make_tensor((4, 3, 3, 3)), make_tensor((4,))
    y = torch.relu(make_tensor((2, 4, 5, 6)))
    xt, wt = make_tensor((2, 4, 3, 2)), make_tensor((4, 3, 2, 2))
    yt = torch.relu(make_tensor((2, 3, 6, 4)))
    up, skip, wc = make_tensor((2, 2, 2, 3)), make_tensor((2, 1, 5, 6)), make_tensor((4, 3, 3, 3))
    pooled, argmax = ops.max_pool2x2_forward(x)
    y_pooled, y_argmax = ops.max_pool2x2_forward(y)
    return [
        (ops.conv2d_forward, (x, w, b, "relu", 0.0)), (ops.conv2d_forward, (x, w, None, None, 0.0)),
        (ops.conv2d_pool_forward, (x, w, b, "leaky_relu", 0.1)),
        (ops.concat_conv2d_forward, (up, skip, wc, b, "relu", 0.0, "bilinear", False, False)),
        (ops.conv2d_input_grad, (y, w, y, "relu", 0.0, None, None)),
        (ops.conv2d_input_grad, (y, w, y, "relu", 0.0, y_pooled, y_argmax)),
        (ops.conv2d_weight_grad, (y, x, w, y, "relu", 0.0, True, None, None, None, None, False, True)),
        (ops.conv2d_weight_grad, (y, x, w, None, None, 0.0, False, y_pooled, y_argmax, None, None, False, True)),
        (ops.conv2d_weight_grad, (y, up, wc, y, "relu", 0.0, True, None, None, skip, "nearest", False, True)),
        (ops.conv_transpose2x2_forward, (xt, wt, b[:3], "relu", 0.0)),
        (ops.conv_transpose2x2_input_grad, (yt, wt, yt, "relu", 0.0)),
        (ops.conv_transpose2x2_weight_grad, (yt, xt, wt, yt, "relu", 0.0, True)),
        (ops.max_pool2x2_forward, (x,)), (ops.max_pool2x2_backward, (pooled, argmax, list(x.shape))),
    ]


@pytest.mark.parametrize("case", range(len(_cases())))
def test_custom_ops_pass_opcheck(case):
    op, args = _cases()[case]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("up_mode", ["transpose", "bilinear"])
def test_compiled_fused_unet_is_one_graph_and_matches_reference(up_mode):
    torch.manual_seed(0)
    model = fused_unet.UNet(3, 2, base_channels=4, depth=1, up_mode=up_mode).to(DEVICE)
    reference = fused_unet.ReferenceUNet(3, 2, base_channels=4, depth=1, up_mode=up_mode).to(DEVICE, torch.float64)
    reference.load_state_dict(model.state_dict())
    x = make_tensor((2, 3, 8, 10), requires_grad=True)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    out = torch.compile(model)(x)
    out.sum().backward()
    x_ref = x.detach().double().requires_grad_()
    ref = reference(x_ref)
    ref.sum().backward()
    assert_close(out, ref, torch.float32, "compiled logits", MODEL_TOLERANCE_FACTOR)
    assert_close(x.grad, x_ref.grad, torch.float32, "compiled grad x", MODEL_TOLERANCE_FACTOR)
    for (name, p), r in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, r.grad, torch.float32, f"compiled grad {name}", MODEL_TOLERANCE_FACTOR)
