"""torch.autograd.gradcheck of every fused autograd Function (tiny shapes, through the interpreter on a CPU).
The kernels compute in fp32 / fp16 / bf16, never float64: gradcheck feeds float64, the op casts to fp32 and back,
and the finite-difference step and tolerances are sized for fp32 (eps 1e-2; a float64 step of 1e-6 would vanish
in fp32 rounding). Piecewise-linear ops are checked where no decision (ReLU sign, pool argmax) lies within eps:
the activations' backward is covered against float64 eager PyTorch elsewhere."""
import warnings

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

from fused_unet import functional as FF
from tests.conftest import DEVICE

GRADCHECK = dict(eps=1e-2, atol=2e-3, rtol=2e-3, fast_mode=True)


def _in_fp32(op):
    def run(*inputs):
        out = op(*(t.float() if isinstance(t, torch.Tensor) else t for t in inputs))
        out = out if isinstance(out, tuple) else (out,)
        return tuple(FF.materialize(o).double() for o in out)
    return run


def _inputs(*shapes):
    return [torch.randn(shape, device=DEVICE, dtype=torch.float64, requires_grad=True) for shape in shapes]


def _spread(*shape):
    """Values at least 0.1 apart: no max-pool decision changes under a step of eps."""
    n = torch.tensor(shape).prod().item()
    values = (torch.randperm(n, device=DEVICE).double() * 0.1 - 0.05 * n).reshape(shape)
    return values.requires_grad_()


CASES = {
    "conv2d": (lambda x, w, b: FF.conv2d(x, w, b), lambda: _inputs((1, 2, 5, 4), (3, 2, 3, 3), (3,))),
    "conv2d_pool": (lambda x, w: FF.conv2d_pool(x, w, None, None), lambda: [_spread(1, 1, 4, 4), torch.tensor(
        [[[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]], dtype=torch.float64, device=DEVICE,
        requires_grad=True)]),
    "concat_conv2d": (lambda u, s, w: FF.concat_conv2d(u, s, w, None, None, up_mode="bilinear"),
                      lambda: _inputs((1, 2, 2, 3), (1, 1, 5, 6), (2, 3, 3, 3))),
    "conv_transpose2x2": (lambda x, w, b: FF.conv_transpose2x2(x, w, b), lambda: _inputs((1, 2, 3, 2), (2, 3, 2, 2),
                                                                                        (3,))),
    "max_pool2x2": (FF.max_pool2x2, lambda: [_spread(1, 2, 4, 5)]),
    "batch_norm_then_conv": (
        lambda x, w, g, b, w2: FF.conv2d(FF.batch_norm(*FF.conv2d_stats(x, w), g, b), w2),
        lambda: _inputs((2, 2, 4, 4), (3, 2, 3, 3), (3,), (3,), (2, 3, 3, 3))),
}


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name):
    op, make = CASES[name]
    inputs = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input is not double": the kernels are fp32 by design
        assert torch.autograd.gradcheck(_in_fp32(op), inputs, **GRADCHECK)


def test_gradcheck_catches_a_wrong_gradient():
    class Halved(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * 0.5

    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(_in_fp32(lambda x: FF.conv2d(Halved.apply(x), torch.ones(1, 1, 1, 1, device=x.device))),
                                 _inputs((1, 1, 3, 3)), **GRADCHECK)
