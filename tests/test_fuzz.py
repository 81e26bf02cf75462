"""Property tests: random small shapes of every fused op against float64 eager PyTorch."""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from tests.conftest import check_against_float64, make_tensor  # noqa: E402
from fused_unet import eager, functional as FF  # noqa: E402


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 2), c_in=st.integers(1, 9), c_out=st.integers(1, 9), h=st.integers(1, 9),
       w=st.integers(1, 9), k=st.sampled_from([1, 3, 5]), activation=st.sampled_from([None, "relu", "leaky_relu"]),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_conv2d_random_shapes(n, c_in, c_out, h, w, k, activation, layout):
    x = make_tensor((n, c_in, h, w), layout=layout, requires_grad=True)
    weight = make_tensor((c_out, c_in, k, k), requires_grad=True)
    b = make_tensor((c_out,), requires_grad=True)
    check_against_float64(lambda x, w, b: FF.conv2d(x, w, b, activation, 0.1),
                          lambda x, w, b: eager.conv2d(x, w, b, activation, 0.1), [x, weight, b], torch.float32)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 2), c_up=st.integers(1, 6), c_skip=st.integers(1, 6), c_out=st.integers(1, 6),
       h=st.integers(1, 5), w=st.integers(1, 5), extra=st.tuples(st.integers(0, 1), st.integers(0, 1)),
       up_mode=st.sampled_from([None, "nearest", "bilinear"]), align_corners=st.booleans(), up_first=st.booleans(),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_concat_conv2d_random_shapes(n, c_up, c_skip, c_out, h, w, extra, up_mode, align_corners, up_first, layout):
    factor = 2 if up_mode else 1
    up = make_tensor((n, c_up, h, w), layout=layout, requires_grad=True)
    skip = make_tensor((n, c_skip, factor * h + extra[0], factor * w + extra[1]), layout=layout, requires_grad=True)
    weight = make_tensor((c_out, c_up + c_skip, 3, 3), requires_grad=True)
    kwargs = dict(up_mode=up_mode, align_corners=align_corners, up_first=up_first)
    check_against_float64(lambda u, s, w: FF.concat_conv2d(u, s, w, None, "relu", **kwargs),
                          lambda u, s, w: eager.concat_conv2d(u, s, w, None, "relu", 0.01, up_mode, align_corners,
                                                              up_first), [up, skip, weight], torch.float32)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 2), c_in=st.integers(1, 6), c_out=st.integers(1, 6), h=st.integers(2, 9),
       w=st.integers(2, 9), activation=st.sampled_from([None, "relu", "leaky_relu"]))
def test_conv2d_pool_random_shapes(n, c_in, c_out, h, w, activation):
    x = make_tensor((n, c_in, h, w), requires_grad=True)
    weight = make_tensor((c_out, c_in, 3, 3), requires_grad=True)
    check_against_float64(lambda x, w: FF.conv2d_pool(x, w, None, activation, 0.1),
                          lambda x, w: eager.conv2d_pool(x, w, None, activation, 0.1), [x, weight], torch.float32)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 9), h=st.integers(2, 11), w=st.integers(2, 11),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_max_pool_random_shapes(n, c, h, w, layout):
    x = make_tensor((n, c, h, w), layout=layout, requires_grad=True)
    check_against_float64(FF.max_pool2x2, eager.max_pool2x2, [x], torch.float32)
