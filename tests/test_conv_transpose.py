"""Transposed convs (+bias, +activation): the 2x2 stride-2 one (one GEMM of four phases) and any square kernel of
stride 1 or 2 (the phases of the conv it transposes); forward and every gradient against float64."""
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import DEVICE, DTYPES, LAYOUTS, check_against_float64, make_tensor
from fused_unet import eager, functional as FF

# (batch, C_in, H, W, C_out)
SHAPES = [(1, 1, 3, 5, 4), (3, 3, 8, 8, 17), (2, 24, 5, 4, 6), (1, 40, 1, 1, 33)]


def _inputs(shape, dtype, layout="contiguous", bias=True):
    n, c_in, h, w, c_out = shape
    x = make_tensor((n, c_in, h, w), dtype, layout, requires_grad=True)
    weight = make_tensor((c_in, c_out, 2, 2), dtype, requires_grad=True, scale=c_in ** -0.5)
    b = make_tensor((c_out,), dtype, requires_grad=True) if bias else None
    return x, weight, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias,activation", [(True, "relu"), (False, None), (True, "leaky_relu")])
def test_conv_transpose_matches_float64(shape, dtype, bias, activation):
    x, weight, b = _inputs(shape, dtype, bias=bias)
    out = check_against_float64(lambda x, w, b: FF.conv_transpose2x2(x, w, b, activation, 0.2),
                                lambda x, w, b: eager.conv_transpose2x2(x, w, b, activation, 0.2), [x, weight, b],
                                dtype)
    assert out.shape == (shape[0], shape[4], 2 * shape[2], 2 * shape[3])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_transpose_any_layout(layout):
    x, weight, b = _inputs((2, 5, 3, 4, 6), torch.float32, layout)
    check_against_float64(lambda x, w, b: FF.conv_transpose2x2(x, w, b, "relu"),
                          lambda x, w, b: eager.conv_transpose2x2(x, w, b, "relu"), [x, weight, b], torch.float32)


def test_conv_transpose_empty_batch():
    out = FF.conv_transpose2x2(torch.randn(0, 3, 4, 4, device=DEVICE), torch.randn(3, 2, 2, 2, device=DEVICE))
    assert out.shape == (0, 2, 8, 8)


# (kernel, stride, padding, output_padding): MONAI's up-sampling, Linknet's, a stride-1 one, a kernel at the stride
# with an output_padding, a 5x5, a 1x1.
GEOMETRIES = [(3, 2, 1, 1), (4, 2, 1, 0), (3, 1, 1, 0), (2, 2, 0, 1), (5, 2, 2, 1), (1, 1, 0, 0)]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,bias,activation", [((1, 1, 3, 5, 4), True, "relu"), ((2, 3, 4, 1, 17), False, None),
                                                   ((3, 24, 5, 4, 6), True, "leaky_relu")])
def test_any_transposed_conv_matches_float64(geometry, dtype, shape, bias, activation):
    # Batch 1 and 3, 1 / 3 / 24 input channels, odd and 1-pixel sizes.
    k, stride, padding, output_padding = geometry
    n, c_in, h, w, c_out = shape
    x = make_tensor((n, c_in, h, w), dtype, requires_grad=True)
    weight = make_tensor((c_in, c_out, k, k), dtype, requires_grad=True, scale=(c_in * k * k) ** -0.5)
    b = make_tensor((c_out,), dtype, requires_grad=True) if bias else None
    out = check_against_float64(
        lambda x, w, b: FF.conv_transpose2d(x, w, b, stride, padding, output_padding, activation, 0.2),
        lambda x, w, b: eager.conv_transpose2d(x, w, b, activation, 0.2, stride, padding, output_padding),
        [x, weight, b], dtype)
    assert out.shape[2:] == tuple((size - 1) * stride - 2 * padding + k + output_padding for size in (h, w))


@pytest.mark.parametrize("layout,norm", [("contiguous", "instance"), ("channels_last", "batch"),
                                         ("strided", "instance")])
def test_any_transposed_conv_any_layout_reading_a_pending_norm(layout, norm):
    # The norm (per image and channel, or per channel) and ReLU applied as the phases read x, zero where they pad.
    x = make_tensor((2, 5, 4, 3), layout=layout, requires_grad=True)
    weight = make_tensor((5, 6, 3, 3), requires_grad=True, scale=0.2)
    pending = {"instance": lambda x: FF.instance_norm(x, activation="relu"),
               "batch": lambda x: FF.batch_norm(x, None, activation="relu")}[norm]
    plain = {"instance": F.instance_norm, "batch": lambda x: F.batch_norm(x, None, None, training=True)}[norm]
    check_against_float64(lambda x, w: FF.conv_transpose2d(pending(x), w, None, 2, 1, 1),
                          lambda x, w: eager.conv_transpose2d(torch.relu(plain(x)), w, None, None, 0.0, 2, 1, 1),
                          [x, weight], torch.float32)


# (pending norm of x, of the skip): plain, one pending, both pending (per image and per channel beside each other),
# and both PReLUs with their own slopes.
_SKIP_NORMS = [(None, None), ("instance", None), (None, "batch"), ("batch", "instance"), ("prelu", "prelu")]


@pytest.mark.parametrize("norms", _SKIP_NORMS, ids=str)
@pytest.mark.parametrize("geometry", [(3, 2, 1, 1), (2, 2, 0, 0), (3, 1, 1, 0)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_conv_of_a_concatenation_matches_float64(norms, geometry, dtype):
    # MONAI UNet's up layer, conv_transpose2d(cat([x, skip], 1)), reading both tensors (each plain or with its
    # pending norm + activation); the 2x2/s2 geometry runs as phases too. Odd sizes, batch 2, a strided skip.
    k, stride, padding, output_padding = geometry
    x = make_tensor((2, 3, 5, 4), dtype, requires_grad=True)
    skip = make_tensor((2, 4, 5, 4), dtype, "strided", requires_grad=True)
    weight = make_tensor((7, 6, k, k), dtype, requires_grad=True, scale=(7 * k * k) ** -0.5)
    b = make_tensor((6,), dtype, requires_grad=True)
    slopes = [(torch.rand(c, device=DEVICE) * 0.5).to(dtype).requires_grad_("prelu" in norms) for c in (3, 4)]

    def pending(t, norm, slope):
        if norm == "instance":
            return FF.instance_norm(t, activation="leaky_relu", negative_slope=0.1)
        if norm == "batch":
            return FF.batch_norm(t, None, activation="leaky_relu", negative_slope=0.1)
        return FF.instance_norm(t, activation="prelu", negative_slope=slope) if norm == "prelu" else t

    def plain(t, norm, slope):
        if norm == "batch":
            return F.leaky_relu(F.batch_norm(t, None, None, training=True), 0.1)
        if norm is not None:
            t = F.instance_norm(t)
        return F.prelu(t, slope) if norm == "prelu" else F.leaky_relu(t, 0.1) if norm else t

    def fused(x, skip, w, b, x_slope, skip_slope):
        return FF.conv_transpose2d(pending(x, norms[0], x_slope), w, b, stride, padding, output_padding, "relu",
                                   skip=pending(skip, norms[1], skip_slope))

    def reference(x, skip, w, b, x_slope, skip_slope):
        cat = torch.cat([plain(x, norms[0], x_slope), plain(skip, norms[1], skip_slope)], 1)
        return eager.conv_transpose2d(cat, w, b, "relu", 0.0, stride, padding, output_padding)

    check_against_float64(fused, reference, [x, skip, weight, b, *slopes], dtype, baseline=dtype != torch.float32)


def test_bad_transposed_conv_of_a_concatenation_is_rejected():
    x, weight = make_tensor((1, 3, 4, 4)), make_tensor((7, 2, 3, 3))
    with pytest.raises(ValueError, match=r"skip \(1, 4, 4, 5\) must have x's batch and size"):
        FF.conv_transpose2d(x, weight, skip=make_tensor((1, 4, 4, 5)))
    with pytest.raises(ValueError, match=r"weight expects 7 input channels .* but cat\(\[x, skip\], 1\) has 6"):
        FF.conv_transpose2d(x, weight, skip=make_tensor((1, 3, 4, 4)))
    with pytest.raises(TypeError, match="skip has dtype torch.float16 but x has torch.float32"):
        FF.conv_transpose2d(x, weight, skip=make_tensor((1, 4, 4, 4), torch.float16))
    with pytest.raises(ValueError, match="x and skip are Normalized with different activations"):
        FF.conv_transpose2d(FF.instance_norm(x, activation="relu"), weight,
                            skip=FF.instance_norm(make_tensor((1, 4, 4, 4)), activation="silu"))
