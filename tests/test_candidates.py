"""The backward GEMM candidates: our Triton kernels and aten's convolution_backward compute the same gradients
(each forced in turn, against float64), and on a GPU the faster one is chosen once per shape."""
import types

import pytest
import torch

from tests.conftest import DTYPES, check_against_float64, make_tensor
from fused_unet import candidates, eager, functional as FF


def _cases(dtype):
    x = make_tensor((2, 6, 9, 7), dtype, "channels_last", requires_grad=True)
    w = make_tensor((5, 6, 3, 3), dtype, requires_grad=True, scale=0.2)
    b = make_tensor((5,), dtype, requires_grad=True)
    wt = make_tensor((6, 4, 2, 2), dtype, requires_grad=True, scale=0.3)
    return [
        (lambda x, w, b: FF.conv2d(x, w, b, "relu"), lambda x, w, b: eager.conv2d(x, w, b, "relu"), [x, w, b]),
        (lambda x, w, b: FF.conv2d_pool(x, w, b, "leaky_relu", 0.1),
         lambda x, w, b: eager.conv2d_pool(x, w, b, "leaky_relu", 0.1), [x, w, b]),
        (lambda x, w, b: FF.conv_transpose2x2(x, w, b, "relu"),
         lambda x, w, b: eager.conv_transpose2x2(x, w, b, "relu"), [x, wt, b[:4]]),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", candidates.CANDIDATES)
@pytest.mark.parametrize("case", range(3))
def test_each_candidate_matches_float64(name, case, dtype):
    fused, reference, inputs = _cases(dtype)[case]
    with candidates.force(name):
        check_against_float64(fused, reference, inputs, dtype, baseline=dtype != torch.float32)


def test_the_faster_candidate_is_chosen_once_per_shape():
    timed = []

    def timer(fn):
        timed.append(fn)
        return fn()

    like = types.SimpleNamespace(device=torch.device("cuda"), shape=(2, 3), dtype=torch.float16)
    pick = dict(triton=lambda: 5.0, aten=lambda: 2.0)
    assert candidates.run("test_role", (like,), pick, timer) == 2.0
    assert candidates.run("test_role", (like,), pick, timer) == 2.0
    assert len(timed) == 2, "each candidate is timed once per shape"
    assert candidates.chosen()["test_role (2, 3) float16"] == "aten"
    with candidates.force("triton"):
        assert candidates.run("test_role", (like,), pick, timer) == 5.0


def test_force_names_a_candidate():
    with pytest.raises(ValueError, match="name must be one of"):
        with candidates.force("cudnn"):
            pass
