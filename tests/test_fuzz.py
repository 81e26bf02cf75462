"""Property test: random small conv shapes against float64 eager PyTorch."""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from tests.conftest import check_against_float64, make_tensor  # noqa: E402
from fused_unet import eager, functional as FF  # noqa: E402


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 2), c_in=st.integers(1, 9), c_out=st.integers(1, 9), h=st.integers(1, 9),
       w=st.integers(1, 9), k=st.sampled_from([1, 3, 5]), relu=st.booleans(),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_conv2d_random_shapes(n, c_in, c_out, h, w, k, relu, layout):
    x = make_tensor((n, c_in, h, w), layout=layout, requires_grad=True)
    weight = make_tensor((c_out, c_in, k, k), requires_grad=True)
    b = make_tensor((c_out,), requires_grad=True)
    check_against_float64(lambda x, w, b: FF.conv2d(x, w, b, relu=relu),
                          lambda x, w, b: eager.conv2d(x, w, b, relu=relu), [x, weight, b], torch.float32)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 2), c_in=st.integers(1, 9), c_out=st.integers(1, 9), h=st.integers(1, 7),
       w=st.integers(1, 7), c_skip=st.integers(1, 5), relu=st.booleans(),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_up_concat_random_shapes(n, c_in, c_out, h, w, c_skip, relu, layout):
    x = make_tensor((n, c_in, h, w), layout=layout, requires_grad=True)
    skip = make_tensor((n, c_skip, 2 * h, 2 * w), layout=layout, requires_grad=True)
    weight = make_tensor((c_in, c_out, 2, 2), requires_grad=True)
    b = make_tensor((c_out,), requires_grad=True)
    check_against_float64(lambda x, s, w, b: FF.up_concat(x, s, w, b, relu=relu),
                          lambda x, s, w, b: eager.up_concat(x, s, w, b, relu=relu), [x, skip, weight, b],
                          torch.float32)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 9), h=st.integers(2, 11), w=st.integers(2, 11),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_max_pool_random_shapes(n, c, h, w, layout):
    x = make_tensor((n, c, h, w), layout=layout, requires_grad=True)
    check_against_float64(FF.max_pool2x2, eager.max_pool2x2, [x], torch.float32)
