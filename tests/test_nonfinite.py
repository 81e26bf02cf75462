"""NaN and +-Inf propagate through the fused ops exactly as through eager PyTorch: the same elements of every output
and every gradient are NaN, +Inf or -Inf, and the finite ones agree (an up-sampled -Inf meets weights of both
signs: NaN in both)."""
import pytest
import torch

from tests.conftest import DEVICE, make_tensor
from fused_unet import eager, functional as FF

# The interpreter computes with NumPy, which warns on every NaN and Inf it meets.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _nonfinite_input(shape):
    x = make_tensor(shape)
    x[0, 1, 2, 3] = float("nan")
    x[-1, 2, 4, 4] = float("inf")
    x[-1, 0, 0, 0] = -float("inf")  # inside the concatenations' up-sampled corner x[:, :, :3, :3]
    return x


def _run(op, inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outs = op(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = torch.autograd.grad([o.sum() for o in outs], leaves)
    return list(outs) + list(grads)


def _assert_same_nonfinite(actual, expected, name):
    for kind in ("isnan", "isposinf", "isneginf"):
        assert torch.equal(getattr(actual, kind)(), getattr(expected, kind)()), f"{name}: {kind} differs"
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite].double(), expected[finite].double(), atol=1e-4, rtol=1e-3)


def _batch_norm_block(conv2d, conv2d_stats, batch_norm):
    def block(x, w1, w2):
        y, stats = conv2d_stats(x, w1)
        return conv2d(batch_norm(y, stats), w2)
    return block


def _eager_batch_norm(y, stats):
    scale, shift, _, _ = eager.batch_norm_scale_shift(y, torch.ones(y.shape[1], device=DEVICE),
                                                      torch.zeros(y.shape[1], device=DEVICE), 1e-5)
    return eager.pending_norm(y, scale, shift, "relu")


CASES = {
    "conv + relu": (lambda x, w, b: FF.conv2d(x, w, b, "relu"), lambda x, w, b: eager.conv2d(x, w, b, "relu")),
    "conv + leaky_relu": (lambda x, w, b: FF.conv2d(x, w, b, "leaky_relu", 0.1),
                          lambda x, w, b: eager.conv2d(x, w, b, "leaky_relu", 0.1)),
    "conv + relu + pool": (lambda x, w, b: FF.conv2d_pool(x, w, b, "relu"),
                           lambda x, w, b: eager.conv2d_pool(x, w, b, "relu")),
    "concat, nearest": (lambda x, w, b: FF.concat_conv2d(x[:, :, :3, :3], x, w, b, "relu", up_mode="nearest"),
                        lambda x, w, b: eager.concat_conv2d(x[:, :, :3, :3], x, w, b, "relu", up_mode="nearest")),
    "concat, bilinear": (lambda x, w, b: FF.concat_conv2d(x[:, :, :3, :3], x, w, b, "relu", up_mode="bilinear"),
                         lambda x, w, b: eager.concat_conv2d(x[:, :, :3, :3], x, w, b, "relu", up_mode="bilinear")),
}


@pytest.mark.parametrize("case", CASES)
def test_nan_and_inf_propagate_like_eager(case):
    fused, reference = CASES[case]
    c_in = 8 if case.startswith("concat") else 4
    inputs = [_nonfinite_input((2, 4, 6, 7)), make_tensor((5, c_in, 3, 3), scale=0.2), make_tensor((5,))]
    for i, (a, e) in enumerate(zip(_run(fused, inputs), _run(reference, inputs))):
        _assert_same_nonfinite(a, e, f"{case} tensor {i}")


def test_nan_and_inf_propagate_through_batch_norm_like_eager():
    inputs = [make_tensor((2, 4, 6, 7)), make_tensor((5, 4, 3, 3), scale=0.2), make_tensor((3, 5, 3, 3), scale=0.2)]
    inputs[0][0, 1, 0, 0] = float("inf")  # corner: reaches a few outputs of every channel, so every statistic
    fused = _batch_norm_block(FF.conv2d, FF.conv2d_stats, lambda y, s: FF.batch_norm(y, s, activation="relu"))
    reference = _batch_norm_block(eager.conv2d, lambda x, w: (eager.conv2d(x, w), None), _eager_batch_norm)
    for i, (a, e) in enumerate(zip(_run(fused, inputs), _run(reference, inputs))):
        _assert_same_nonfinite(a, e, f"batch norm tensor {i}")
