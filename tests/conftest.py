"""Test set-up: the Triton interpreter on CPU-only machines, the per-dtype tolerance table and the float64
reference helpers. TRITON_INTERPRET must be set before any kernel module is imported."""
import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

import fused_unet  # noqa: E402

# (atol, rtol) against a float64 reference computed from the same (already rounded) inputs. atol is scaled by
# the reference's largest magnitude. The low-precision rows are a few ulps of the output dtype, i.e. a small
# multiple of the rounding PyTorch's own kernels make; "tf32" is fp32 inputs on TF32 tensor cores.
TOLERANCES = {
    torch.float32: (1e-5, 1e-4),
    "tf32": (4e-3, 4e-3),
    torch.float16: (1e-3, 4e-3),
    torch.bfloat16: (8e-3, 3e-2),
}
# A whole network compounds one rounding per layer.
MODEL_TOLERANCE_FACTOR = 8

ON_GPU = DEVICE == "cuda"
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (the Triton interpreter's bf16/TF32 math is not faithful)")
DTYPES = [torch.float32, torch.float16,
          pytest.param(torch.bfloat16, marks=gpu_only)]
LAYOUTS = ["contiguous", "channels_last", "strided"]


@pytest.fixture(autouse=True, scope="session")
def _kernels_really_run():
    assert fused_unet.backend(DEVICE) != "eager", "tests must exercise the Triton kernels; is triton installed?"
    torch.backends.cudnn.allow_tf32 = False  # fp32 tests check IEEE fp32; the TF32 test turns it on itself
    yield


def make_tensor(shape, dtype=torch.float32, layout="contiguous", requires_grad=False, scale=1.0, device=DEVICE):
    """A random tensor in one of three memory layouts: NCHW-contiguous, channels_last, or a strided view."""
    if layout == "strided" and len(shape) == 4:
        base = torch.randn(*shape[:3], 2 * shape[3], device=device) * scale
        t = base.to(dtype)[..., ::2]
    else:
        t = (torch.randn(shape, device=device) * scale).to(dtype)
        if layout == "channels_last" and len(shape) == 4:
            t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def assert_close(actual, expected, tol_key, name="tensor", factor=1.0):
    """allclose against a float64 reference; on failure, print the worst elements (Liger-Kernel style)."""
    atol, rtol = TOLERANCES[tol_key]
    atol, rtol = atol * factor, rtol * factor
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual - expected).abs()
    bad = ~(err <= atol * scale + rtol * expected.abs())
    bad &= ~(actual.isnan() & expected.isnan())
    if bad.any():
        worst = torch.argsort(err.flatten().nan_to_num(float("inf")), descending=True)[:5]
        lines = [f"  at {tuple(torch.unravel_index(i, err.shape))}: got {actual.flatten()[i]:.6g}, "
                 f"expected {expected.flatten()[i]:.6g}, |diff| {err.flatten()[i]:.3g}" for i in worst]
        pytest.fail(f"{name}: {int(bad.sum())}/{bad.numel()} elements off (atol {atol * scale:.3g}, rtol {rtol:.3g})"
                    f" for {tol_key}:\n" + "\n".join(lines))


def check_against_float64(fused, reference, inputs, tol_key, factor=1.0):
    """Run ``fused(*inputs)`` and ``reference`` on float64 copies; compare the output and the gradient of every
    input that requires grad, for one random upstream gradient."""
    out = fused(*inputs)
    grad_out = torch.randn(out.shape, device=out.device).to(out.dtype)
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, diff, grad_out) if diff else ()
    ref_inputs = [t.detach().double().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
                  for t in inputs]
    ref_out = reference(*ref_inputs)
    ref_diff = [r for r, t in zip(ref_inputs, inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    ref_grads = torch.autograd.grad(ref_out, ref_diff, grad_out.double()) if diff else ()
    assert out.dtype == inputs[0].dtype
    assert_close(out, ref_out, tol_key, "output", factor)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g.dtype == diff[i].dtype
        assert_close(g, r, tol_key, f"grad of differentiable input {i}", factor)
    return out
