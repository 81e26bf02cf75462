"""Property tests: random shapes (1..40 pixels a side, odd and even), memory layouts and options of every public
op and module against float64 eager PyTorch. Two Hypothesis profiles (tests/conftest.py): ``ci`` (default, in
``pytest -q``: a few derandomised examples per test) and ``long`` (``HYPOTHESIS_PROFILE=long``: hundreds, for a
GPU or a night). A failing example found by either is kept below as an ``@example`` regression test."""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, strategies as st  # noqa: E402

from tests.conftest import check_against_float64, make_tensor  # noqa: E402
from fused_unet import eager, functional as FF, nn as fnn  # noqa: E402

SIDE = st.integers(1, 40)
CHANNELS = st.integers(1, 9)
LAYOUTS = st.sampled_from(["contiguous", "channels_last", "strided"])
ACTIVATIONS = st.sampled_from([None, "relu", "leaky_relu"])


def _small(h, w, n=1):
    """Keep the interpreter's work bounded: large sides come with a batch of 1."""
    return 1 if h * w > 400 else n


@given(n=st.integers(1, 2), c_in=CHANNELS, c_out=CHANNELS, h=SIDE, w=SIDE, k=st.sampled_from([1, 3, 5]),
       activation=ACTIVATIONS, layout=LAYOUTS)
@example(n=1, c_in=1, c_out=1, h=1, w=1, k=5, activation="relu", layout="strided")  # a kernel larger than the image
def test_conv2d_random_shapes(n, c_in, c_out, h, w, k, activation, layout):
    x = make_tensor((_small(h, w, n), c_in, h, w), layout=layout, requires_grad=True)
    weight = make_tensor((c_out, c_in, k, k), requires_grad=True)
    b = make_tensor((c_out,), requires_grad=True)
    check_against_float64(lambda x, w, b: FF.conv2d(x, w, b, activation, 0.1),
                          lambda x, w, b: eager.conv2d(x, w, b, activation, 0.1), [x, weight, b], torch.float32)


@given(n=st.integers(1, 2), c_up=st.integers(1, 6), c_skip=st.integers(1, 6), c_out=st.integers(1, 6),
       h=st.integers(1, 20), w=st.integers(1, 20), extra=st.tuples(st.integers(0, 1), st.integers(0, 1)),
       up_mode=st.sampled_from([None, "nearest", "bilinear"]), align_corners=st.booleans(), up_first=st.booleans(),
       layout=LAYOUTS)
def test_concat_conv2d_random_shapes(n, c_up, c_skip, c_out, h, w, extra, up_mode, align_corners, up_first, layout):
    factor = 2 if up_mode else 1
    n = _small(factor * h, factor * w, n)
    up = make_tensor((n, c_up, h, w), layout=layout, requires_grad=True)
    skip = make_tensor((n, c_skip, factor * h + extra[0], factor * w + extra[1]), layout=layout, requires_grad=True)
    weight = make_tensor((c_out, c_up + c_skip, 3, 3), requires_grad=True)
    kwargs = dict(up_mode=up_mode, align_corners=align_corners, up_first=up_first)
    check_against_float64(lambda u, s, w: FF.concat_conv2d(u, s, w, None, "relu", **kwargs),
                          lambda u, s, w: eager.concat_conv2d(u, s, w, None, "relu", 0.01, up_mode, align_corners,
                                                              up_first), [up, skip, weight], torch.float32)


@given(n=st.integers(1, 2), c_in=st.integers(1, 6), c_out=st.integers(1, 6), h=st.integers(2, 40),
       w=st.integers(2, 40), activation=ACTIVATIONS, layout=LAYOUTS)
def test_conv2d_pool_random_shapes(n, c_in, c_out, h, w, activation, layout):
    x = make_tensor((_small(h, w, n), c_in, h, w), layout=layout, requires_grad=True)
    weight = make_tensor((c_out, c_in, 3, 3), requires_grad=True)
    check_against_float64(lambda x, w: FF.conv2d_pool(x, w, None, activation, 0.1),
                          lambda x, w: eager.conv2d_pool(x, w, None, activation, 0.1), [x, weight], torch.float32)


@given(n=st.integers(1, 2), c=CHANNELS, h=st.integers(2, 40), w=st.integers(2, 40), layout=LAYOUTS)
def test_max_pool_random_shapes(n, c, h, w, layout):
    x = make_tensor((n, c, h, w), layout=layout, requires_grad=True)
    check_against_float64(FF.max_pool2x2, eager.max_pool2x2, [x], torch.float32)


@given(n=st.integers(1, 2), c_in=st.integers(1, 6), c_out=st.integers(1, 6), h=st.integers(1, 20),
       w=st.integers(1, 20), activation=ACTIVATIONS, layout=LAYOUTS)
def test_conv_transpose2x2_random_shapes(n, c_in, c_out, h, w, activation, layout):
    x = make_tensor((_small(2 * h, 2 * w, n), c_in, h, w), layout=layout, requires_grad=True)
    weight = make_tensor((c_in, c_out, 2, 2), requires_grad=True)
    b = make_tensor((c_out,), requires_grad=True)
    check_against_float64(lambda x, w, b: FF.conv_transpose2x2(x, w, b, activation, 0.1),
                          lambda x, w, b: eager.conv_transpose2x2(x, w, b, activation, 0.1), [x, weight, b],
                          torch.float32)


@given(n=st.integers(2, 3), c_in=st.integers(1, 6), c_out=st.integers(1, 6), h=SIDE, w=SIDE,
       activation=ACTIVATIONS, training=st.booleans(), layout=LAYOUTS)
def test_conv_batchnorm_module_random_shapes(n, c_in, c_out, h, w, activation, training, layout):
    """The drop-in module with BatchNorm (batch statistics in training, folded running statistics in eval)."""
    n = 2 if h * w > 400 else n
    module = fnn.Conv2d(c_in, c_out, 3, padding=1, norm="batch", activation=activation, negative_slope=0.1)
    with torch.no_grad():
        module.bn.weight.uniform_(0.5, 1.5), module.bn.bias.uniform_(-0.5, 0.5)
        module.bn.running_mean.uniform_(-0.5, 0.5), module.bn.running_var.uniform_(0.5, 2)
    module.train(training)
    reference = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm2d(c_out))
    reference[0].load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("bn.")})
    reference[1].load_state_dict({k[3:]: v for k, v in module.state_dict().items() if k.startswith("bn.")})
    reference.double().train(training)
    x = make_tensor((n, c_in, h, w), layout=layout, requires_grad=True)
    check_against_float64(module, lambda x: eager.activate(reference(x), activation, 0.1), [x], torch.float32,
                          factor=4)
    if training:  # running statistics updated like nn.BatchNorm2d's
        for name in ("running_mean", "running_var"):
            assert torch.allclose(getattr(module.bn, name).double(), getattr(reference[1], name), atol=1e-5)


@given(c_up=st.integers(1, 6), c_skip=st.integers(1, 6), h=st.integers(1, 12), w=st.integers(1, 12),
       up_mode=st.sampled_from([None, "nearest", "bilinear"]), up_first=st.booleans())
def test_up_concat_module_random_shapes(c_up, c_skip, h, w, up_mode, up_first):
    factor = 2 if up_mode else 1
    module = fnn.UpConcatConv2d(c_up + c_skip, 4, up_mode=up_mode, up_first=up_first)
    up = make_tensor((2, c_up, h, w), requires_grad=True)
    skip = make_tensor((2, c_skip, factor * h, factor * w), requires_grad=True)
    weight, bias = module.weight.detach(), module.bias.detach()
    check_against_float64(module, lambda u, s: eager.concat_conv2d(u, s, weight.double(), bias.double(), "relu", 0.01,
                                                                   up_mode, False, up_first), [up, skip],
                          torch.float32)
