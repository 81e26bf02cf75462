"""conv2d (+bias, +activation): forward, input-grad, weight-grad and bias-grad against float64 eager PyTorch."""
import pytest
import torch

from tests.conftest import DEVICE, DTYPES, LAYOUTS, check_against_float64, gpu_only, make_tensor
from fused_unet import eager, functional as FF

# (batch, C_in, H, W, C_out, kernel): odd and even H/W, batch 1 and 3, C_in 1 and 3, channels not multiples of 16.
SHAPES = [(1, 1, 7, 9, 5, 3), (3, 3, 17, 13, 20, 3), (2, 4, 16, 16, 8, 1), (1, 6, 5, 4, 3, 5), (2, 40, 6, 7, 33, 3)]


def _inputs(shape, dtype, layout="contiguous", bias=True):
    n, c_in, h, w, c_out, k = shape
    x = make_tensor((n, c_in, h, w), dtype, layout, requires_grad=True)
    weight = make_tensor((c_out, c_in, k, k), dtype, requires_grad=True, scale=(c_in * k * k) ** -0.5)
    b = make_tensor((c_out,), dtype, requires_grad=True) if bias else None
    return x, weight, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias,activation", [(True, "relu"), (False, None), (True, "leaky_relu"), (False, "relu")])
def test_conv2d_matches_float64(shape, dtype, bias, activation):
    x, weight, b = _inputs(shape, dtype, bias=bias)
    check_against_float64(lambda x, w, b: FF.conv2d(x, w, b, activation, 0.2),
                          lambda x, w, b: eager.conv2d(x, w, b, activation, 0.2), [x, weight, b], dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_conv2d_any_input_layout(layout, dtype):
    x, weight, b = _inputs((2, 3, 9, 11, 7, 3), dtype, layout)
    out = check_against_float64(lambda x, w, b: FF.conv2d(x, w, b, "relu"),
                                lambda x, w, b: eager.conv2d(x, w, b, "relu"), [x, weight, b], dtype)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_conv2d_non_contiguous_weight_and_grad_output():
    x, weight, b = _inputs((2, 5, 6, 7, 4, 3), torch.float32)
    w_t = weight.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # same values, odd strides
    out = FF.conv2d(x, w_t, b, "relu")
    grad = torch.randn(out.shape[::-1], device=DEVICE).permute(3, 2, 1, 0)  # a non-contiguous upstream gradient
    gx, gw = torch.autograd.grad(out, [x, w_t], grad)
    xr, wr = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = eager.conv2d(xr, wr, b.detach().double(), "relu")
    rgx, rgw = torch.autograd.grad(ref, [xr, wr], grad.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gx.double(), rgx, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw.double(), rgw, atol=1e-4, rtol=1e-4)


def test_conv2d_only_some_inputs_need_grad():
    x, weight, b = _inputs((1, 3, 5, 5, 4, 3), torch.float32)
    x.requires_grad_(False)
    out = FF.conv2d(x, weight, b, "relu")
    gw, = torch.autograd.grad(out.sum(), [weight])
    ref = eager.conv2d(x.double(), weight.detach().double().requires_grad_(), b.double(), "relu")
    assert gw.shape == weight.shape and out.shape == ref.shape


def test_conv2d_weight_grad_is_deterministic():
    x, weight, b = _inputs((3, 8, 19, 21, 12, 3), torch.float32)
    out = FF.conv2d(x, weight, b, "relu")
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, [weight, b], grad, retain_graph=True)
    second = torch.autograd.grad(out, [weight, b], grad)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_conv2d_activation_keeps_nan_like_torch(activation):
    x = torch.full((1, 1, 3, 3), -1.0, device=DEVICE)
    x[0, 0, 1, 1] = float("nan")
    weight = torch.ones(1, 1, 1, 1, device=DEVICE)
    out = FF.conv2d(x, weight, None, activation, 0.5)
    torch.testing.assert_close(out, eager.conv2d(x, weight, None, activation, 0.5), equal_nan=True)


def test_conv2d_empty_batch():
    out = FF.conv2d(torch.randn(0, 3, 4, 4, device=DEVICE), torch.randn(2, 3, 3, 3, device=DEVICE))
    assert out.shape == (0, 2, 4, 4)


@gpu_only
def test_conv2d_tf32_follows_cudnn_flag():
    # No activation: TF32's ~1e-3 rounding flips the ReLU decision of outputs near 0 against float64 (the first GPU
    # run saw 1-2 such outputs turn 618 input-gradient elements "wrong": the 3x3 x 64 footprint of their gradient).
    x, weight, b = _inputs((2, 64, 16, 16, 64, 3), torch.float32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        check_against_float64(lambda x, w, b: FF.conv2d(x, w, b),
                              lambda x, w, b: eager.conv2d(x, w, b), [x, weight, b], "tf32")
    finally:
        torch.backends.cudnn.allow_tf32 = False


@gpu_only
def test_conv2d_under_bf16_autocast():
    x, weight, b = _inputs((2, 16, 16, 16, 32, 3), torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = FF.conv2d(x, weight, b, "relu")
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


# (batch, C_in, H, W, C_out, kernel, stride, padding): ResNet's 7x7/s2 stem (3 channels) and 3x3/s2 and 1x1/s2
# down-sampling, nnU-Net's 3x3/s2, diffusers' 3x3/s2 without padding, 1x1 projections, even kernels, 'valid' convs;
# odd and even sizes, batch 1.
STRIDED_SHAPES = [(2, 3, 11, 9, 16, 7, 2, 3), (1, 8, 9, 7, 16, 3, 2, 1), (2, 8, 8, 6, 16, 1, 2, 0),
                  (1, 4, 5, 5, 4, 3, 2, 0), (2, 16, 5, 7, 8, 1, 1, 0), (1, 8, 6, 5, 8, 3, 1, 0),
                  (2, 8, 7, 8, 16, 2, 2, 0), (1, 5, 9, 9, 8, 4, 2, 1), (1, 4, 6, 5, 4, 5, 1, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", STRIDED_SHAPES, ids=lambda s: "k{5}s{6}p{7}-{0}x{1}x{2}x{3}".format(*s))
def test_strided_and_padded_conv2d_matches_float64(shape, dtype):
    *geometry, k, stride, padding = shape
    x, weight, b = _inputs((*geometry, k), dtype)
    out = check_against_float64(lambda x, w, b: FF.conv2d(x, w, b, "relu", stride=stride, padding=padding),
                                lambda x, w, b: eager.conv2d(x, w, b, "relu", stride=stride, padding=padding),
                                [x, weight, b], dtype)
    assert out.shape == torch.nn.functional.conv2d(x, weight, b, stride=stride, padding=padding).shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_strided_conv2d_any_input_layout_and_statistics(layout):
    # A stride-2 conv before a batch norm (ResNet's downsample path): its epilogue's statistics see its own output.
    x, weight, b = _inputs((2, 6, 9, 10, 16, 3), torch.float32, layout)
    y, stats = FF.conv2d_stats(x, weight, b, stride=2, padding=1)
    ref = eager.conv2d(x.double(), weight.double(), b.double(), stride=2, padding=1)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-4)
    from fused_unet.kernels import norm
    ones = torch.ones(16, device=DEVICE)
    mean, var, _ = norm.norm_statistics(stats[None], 16, ones, ones, 1e-5)[2][0]
    torch.testing.assert_close(mean, ref.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, ref.var((0, 2, 3), unbiased=False), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride,padding,message", [
    (3, 1, "stride must be 1 or 2"), ((2, 1), 1, "stride must be an int or a pair of equal ints"),
    (2, "same", "padding='same' needs an odd kernel and stride 1"), (1, 3, r"padding must be in \[0, 2\]"),
    (1, (1, 0), "padding must be an int or a pair of equal ints"), (1, -1, r"padding must be in \[0, 2\]")])
def test_conv2d_geometry_errors(stride, padding, message):
    x, weight, b = _inputs((1, 2, 5, 5, 3, 3), torch.float32)
    with pytest.raises((ValueError, TypeError), match=message):
        FF.conv2d(x, weight, b, stride=stride, padding=padding)


def test_conv2d_larger_kernel_than_input_is_an_error():
    x, weight, b = _inputs((1, 2, 2, 5, 3, 5), torch.float32)
    with pytest.raises(ValueError, match="smaller than the 5x5 kernel"):
        FF.conv2d(x, weight, b, padding=0)
    with pytest.raises(ValueError, match="square kernel"):
        FF.conv2d(x, torch.randn(3, 2, 3, 1), b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,activation,layout", [
    ((2, 8, 7, 9, 8, 3, 1, 1), "relu", "channels_last"),  # a ResNet basic block's second conv
    ((1, 8, 8, 6, 16, 1, 2, 0), None, "contiguous"),  # a downsample projection added to a branch
    ((2, 4, 9, 7, 16, 3, 2, 1), "leaky_relu", "strided")])
def test_conv2d_with_a_residual_matches_float64(shape, activation, layout, dtype):
    *geometry, k, stride, padding = shape
    x, weight, b = _inputs((*geometry, k), dtype)
    out_shape = torch.nn.functional.conv2d(x.detach(), weight.detach(), stride=stride, padding=padding).shape
    residual = make_tensor(out_shape, dtype, layout, requires_grad=True)
    check_against_float64(
        lambda x, w, b, r: FF.conv2d(x, w, b, activation, 0.1, stride=stride, padding=padding, residual=r),
        lambda x, w, b, r: eager.conv2d(x, w, b, activation, 0.1, stride=stride, padding=padding, residual=r),
        [x, weight, b, residual], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual_shape", [(2, 8, 1, 1), (1, 8, 1, 1)])
def test_conv2d_with_a_broadcast_residual_matches_float64(residual_shape, dtype):
    # A diffusion block's time embedding [N, C, 1, 1] (or one for the batch): read with zero strides, no copy;
    # its gradient is the prepared output gradient summed over the broadcast dimensions.
    x, weight, b = _inputs((2, 4, 7, 5, 8, 3), dtype)
    residual = make_tensor(residual_shape, dtype, requires_grad=True)
    check_against_float64(lambda x, w, b, r: FF.conv2d(x, w, b, "relu", residual=r),
                          lambda x, w, b, r: eager.conv2d(x, w, b, "relu", residual=r), [x, weight, b, residual],
                          dtype)


def test_conv2d_residual_must_have_the_output_shape():
    x, weight, b = _inputs((1, 2, 6, 6, 3, 3), torch.float32)
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(1, 3, 3, 3\) or broadcast"):
        FF.conv2d(x, weight, b, stride=2, padding=1, residual=torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match=r"got \(2, 3, 1, 1\)"):  # it may not widen the output
        FF.conv2d(x, weight, b, stride=2, padding=1, residual=torch.randn(2, 3, 1, 1))
    with pytest.raises(TypeError, match="residual has dtype torch.float16"):
        FF.conv2d(x, weight, b, residual=torch.randn(1, 3, 6, 6, dtype=torch.float16))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,block_size,proj_stride,layout,bias", [
    ((2, 8, 5, 7, 16, 3), (10, 14), 2, "channels_last", (True, True)),  # ResNet: conv2(h) + downsample(x)
    ((1, 3, 9, 6, 8, 3), (17, 11), 2, "strided", (False, True)),  # odd: floor((17 - 1) / 2) + 1 = 9 rows
    ((2, 4, 6, 5, 6, 3), (6, 5), 1, "contiguous", (True, False))])  # diffusers' conv_shortcut: stride 1
def test_conv2d_with_a_projection_matches_float64(shape, block_size, proj_stride, layout, bias, dtype):
    # Two GEMMs into one accumulator: the block input's 1x1 (/2) projection computed in the second conv's kernel.
    n, c_in, h, w, c_out, _ = shape
    x, weight, b = _inputs(shape, dtype, bias=bias[0])
    block_input = make_tensor((n, c_in + 1, *block_size), dtype, layout, requires_grad=True)
    proj_weight = make_tensor((c_out, c_in + 1, 1, 1), dtype, requires_grad=True, scale=0.5)
    proj_bias = make_tensor((c_out,), dtype, requires_grad=True) if bias[1] else None

    def fused(x, w, b, px, pw, pb):
        return FF.conv2d(x, w, b, "relu", projection=FF.Projection(px, pw, pb, proj_stride))

    def reference(x, w, b, px, pw, pb):
        projected = torch.nn.functional.conv2d(px, pw, pb, stride=proj_stride)
        return eager.conv2d(x, w, b, "relu", residual=projected)

    out = check_against_float64(fused, reference, [x, weight, b, block_input, proj_weight, proj_bias], dtype)
    assert out.shape == (n, c_out, h, w)


def test_bad_projection_is_rejected():
    x, weight, b = _inputs((1, 2, 4, 4, 3, 3), torch.float32)
    block_input = make_tensor((1, 5, 8, 8))
    with pytest.raises(TypeError, match="projection must be a fused_unet.functional.Projection"):
        FF.conv2d(x, weight, b, projection=(block_input, make_tensor((3, 5, 1, 1))))
    with pytest.raises(ValueError, match=r"projection.weight must be \[3, 5, 1, 1\]"):
        FF.conv2d(x, weight, b, projection=FF.Projection(block_input, make_tensor((3, 5, 3, 3)), stride=2))
    with pytest.raises(ValueError, match="projection.stride must be 1 or 2, got 4"):
        FF.conv2d(x, weight, b, projection=FF.Projection(block_input, make_tensor((3, 5, 1, 1)), stride=4))
    with pytest.raises(ValueError, match=r"gives \(1, 3, 8, 8\), not the conv's output \(1, 3, 4, 4\)"):
        FF.conv2d(x, weight, b, projection=FF.Projection(block_input, make_tensor((3, 5, 1, 1))))
    with pytest.raises(TypeError, match="projection.x has dtype torch.float16"):
        FF.conv2d(x, weight, b, projection=FF.Projection(block_input.half(), make_tensor((3, 5, 1, 1)), stride=2))
