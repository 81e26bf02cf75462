"""torch.compile: the launchers are custom ops (fused_unet.ops) that pass torch.library.opcheck, and a compiled
fused UNet traces as one graph and matches the float64 reference, forward and backward."""
import copy

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
    wide = make_tensor((2, 3, 8, 9))  # images of 72 pixels: per-image statistics straddle them
    pooled, argmax = ops.max_pool_forward(x, 2)
    y_pooled, y_argmax = ops.max_pool_forward(y, 2)
    pooled3, argmax3 = ops.max_pool_forward(x, 3)
    scale, shift = make_tensor((3,)).abs() + 0.5, make_tensor((3,))  # a pending batch norm of x
    norm = dict(in_scale=scale, in_shift=shift, in_activation="leaky_relu", in_negative_slope=0.1)
    prelu = dict(in_scale=scale, in_shift=shift, in_activation="prelu", in_slope=make_tensor((3,)))  # MONAI's ADN
    count = torch.full((2, 4, 1, 6), 8.0, device=DEVICE)  # per-tile (count, mean, M2) of 2 images x 4 tiles
    parts = torch.cat([count, make_tensor((2, 4, 1, 6)), torch.rand(2, 4, 1, 6, device=DEVICE) * count], 2)
    return [
        (ops.conv2d_forward, (x, w, b, "relu", 0.0)), (ops.conv2d_forward, (x, w, None, None, 0.0)),
        (ops.conv2d_forward, (x, w, b, "relu", 0.0), dict(proj_x=make_tensor((2, 5, 10, 11)),
                                                          proj_weight=make_tensor((4, 5, 1, 1)), proj_stride=2)),
        (ops.conv2d_pool_forward, (x, w, b, "leaky_relu", 0.1)),
        (ops.concat_conv2d_forward, (up, skip, wc, b, "relu", 0.0, "bilinear", False, False)),
        (ops.conv_output_grad, (y, y, "relu", 0.0, None, None, True)),
        (ops.conv_output_grad, (y, y, "leaky_relu", 0.1, y_pooled, y_argmax, False)),
        (ops.conv2d_input_grad, (y, w)),
        (ops.conv2d_weight_grad, (y, x, w)),
        (ops.conv2d_weight_grad, (y, up, wc, skip, "nearest", False, True)),
        (ops.conv_transpose2x2_forward, (xt, wt, b[:3], "relu", 0.0)),
        (ops.conv_transpose2x2_input_grad, (yt, wt)),
        (ops.conv_transpose2x2_weight_grad, (yt, xt, wt)),
        (ops.conv_transpose2d_forward, (xt, make_tensor((4, 3, 3, 3)), b[:3], "leaky_relu", 0.1),
         dict(stride=2, padding=1, output_padding=1)),
        (ops.max_pool_forward, (x, 2)), (ops.max_pool_backward, (pooled, argmax, list(x.shape), 2)),
        (ops.max_pool_forward, (x, 3)), (ops.max_pool_backward, (pooled3, argmax3, list(x.shape), 3)),
        (ops.conv2d_stats_forward, (x, w, b), norm), (ops.conv2d_forward, (x, w, b, "relu", 0.0), norm),
        (ops.conv2d_stats_forward, (wide, w, b), dict(per_image=True)),  # an instance norm's, from the epilogue
        (ops.norm_statistics, (ops.conv2d_stats_forward(wide, w, b, per_image=True)[1], 4, make_tensor((4,)),
                               make_tensor((4,)), 1e-5), dict(images=[2, 72])),
        (ops.concat_conv2d_stats_forward, (up, skip, wc, None, "nearest", False, True),
         dict(up_scale=scale[:2], up_shift=shift[:2], in_activation="relu")),
        (ops.conv2d_weight_grad, (y, x, w), norm),
        (ops.conv_transpose2x2_forward, (make_tensor((2, 3, 3, 2)), wt[:3], None, None, 0.0), norm),
        (ops.conv_transpose2d_forward, (make_tensor((2, 3, 3, 2)), make_tensor((3, 2, 4, 4)), None, None, 0.0),
         dict(norm, stride=2, padding=1)),
        (ops.conv_transpose2d_forward, (make_tensor((2, 3, 3, 2)), make_tensor((5, 2, 3, 3)), None, None, 0.0),
         dict(norm, stride=2, padding=1, output_padding=1, skip=make_tensor((2, 2, 3, 2)), skip_scale=scale[:2],
              skip_shift=shift[:2])),  # of a concatenation (MONAI UNet's up layers)
        (ops.max_pool_forward, (x, 2), norm), (ops.max_pool_forward, (x, 3), norm),
        (ops.batch_norm_act_input_grad, (x, x, scale, shift, "leaky_relu", 0.1)),
        (ops.conv2d_forward, (x, w, b, None, 0.0), prelu), (ops.conv2d_weight_grad, (y, x, w), prelu),
        (ops.concat_conv2d_forward, (up, skip, wc, b, None, 0.0, "nearest", False, True),
         dict(up_scale=scale[:2], up_shift=shift[:2], skip_scale=scale[:1], skip_shift=shift[:1],
              in_activation="prelu", up_slope=prelu["in_slope"][:2], skip_slope=prelu["in_slope"][:1])),
        (ops.max_pool_forward, (x, 3), prelu),
        (ops.batch_norm_act_input_grad, (x, x, scale, shift, "prelu", 0.0), dict(slope=prelu["in_slope"])),
        (ops.residual_norm_act_input_grad, (x, x, scale, shift), dict(activation="prelu", slope=prelu["in_slope"])),
        (ops.pending_norm, (x, scale, shift, "prelu"), dict(slope=prelu["in_slope"])),
        (ops.upsample2x_backward, (make_tensor((2, 3, 6, 4)), [2, 3, 3, 2], "bilinear", True)),
        (ops.upsample2x_backward, (make_tensor((2, 3, 6, 4)), [2, 3, 3, 2], "nearest")),
        (ops.pending_norm, (x, scale, shift), dict(residual=x)),  # a norm's backward term added to a gradient
        # A ResNet block's end with its projection's norm pending (per image: mixed tables), and its backward.
        (ops.pending_norm, (x, scale, shift, "relu", 0.0, x, "relu"),
         dict(res_scale=scale.expand(2, -1).contiguous(), res_shift=shift.expand(2, -1).contiguous())),
        (ops.residual_norm_act_input_grad, (x, x, scale, shift, x, "relu", 0.0, "relu"),
         dict(residual=x, res_scale=scale, res_shift=shift, res_activation="prelu", res_slope=prelu["in_slope"])),
        (ops.norm_statistics, (parts, 3, make_tensor((6,)), make_tensor((6,)), 1e-5)),  # group norm, 2 per group
        (ops.norm_statistics, (parts[:1], 6, make_tensor((6,)), make_tensor((6,)), 1e-5, make_tensor((6,)),
                               make_tensor((6,)).abs(), 0.1)),  # a batch norm's, its running statistics updated
        (ops.norm_statistics, (parts, 6, make_tensor((6,)), make_tensor((6,)), 1e-5, make_tensor((6,)),
                               make_tensor((6,)).abs(), 0.1), dict(images=[parts.shape[0], 30])),  # an instance norm's
    ]


@pytest.mark.parametrize("case", range(len(_cases())))
def test_custom_ops_pass_opcheck(case):
    op, args, *kwargs = _cases()[case]
    torch.library.opcheck(op, args, *kwargs,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("options", [dict(up_mode="transpose"), dict(up_mode="bilinear", norm="batch")])
def test_compiled_fused_unet_is_one_graph_and_matches_reference(options):
    torch.manual_seed(0)
    model = fused_unet.UNet(3, 2, base_channels=4, depth=1, **options).to(DEVICE)
    reference = fused_unet.ReferenceUNet(3, 2, base_channels=4, depth=1, **options).to(DEVICE, torch.float64)
    reference.load_state_dict(model.state_dict())
    x = make_tensor((2, 3, 8, 10), requires_grad=True)
    state = copy.deepcopy(model.state_dict())
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons[:3]
    model.load_state_dict(state)  # explain ran a step: the running statistics start again from the reference's
    out = torch.compile(model)(x)
    out.sum().backward()
    x_ref = x.detach().double().requires_grad_()
    ref = reference(x_ref)
    ref.sum().backward()
    assert_close(out, ref, torch.float32, "compiled logits", MODEL_TOLERANCE_FACTOR)
    assert_close(x.grad, x_ref.grad, torch.float32, "compiled grad x", MODEL_TOLERANCE_FACTOR)
    for (name, p), r in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, r.grad, torch.float32, f"compiled grad {name}", MODEL_TOLERANCE_FACTOR)
    for (name, b), r in zip(model.named_buffers(), reference.buffers()):  # updated in place by a custom op
        assert_close(b.double(), r.double(), torch.float32, f"compiled buffer {name}", MODEL_TOLERANCE_FACTOR)
