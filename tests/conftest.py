"""Test set-up: the Triton interpreter on CPU-only machines, the per-dtype tolerance table and the float64
reference helpers. TRITON_INTERPRET must be set before any kernel module is imported."""
import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def _patch_the_language_once_per_launch():
    """The Triton interpreter patches triton.language again at every call of a @triton.jit helper inside a kernel
    (inspect.getmembers of tl, tl.tensor and tl.math: ~0.2 ms a call, a fifth of an interpreted whole-model test),
    where the launch around it has patched the same modules already. Inside a launch a helper's patch runs only
    for a language module not patched yet (tl.zeros' own tl.core); a Triton without this structure (the private
    ``_patch_lang``) runs as it is."""
    import functools
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    patch_lang = getattr(interpreter, "_patch_lang", None)
    if patch_lang is None or getattr(patch_lang, "once_per_launch", False):
        return
    patched = None  # the language modules the running launch has patched; None between launches

    @functools.lru_cache(maxsize=None)
    def languages(fn):
        return frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))

    class _LaunchScope:
        def __init__(self, scope):
            self.scope = scope

        def restore(self):
            nonlocal patched
            patched = None
            self.scope.restore()

    def patch_once(fn):
        nonlocal patched
        if patched is None:  # a launch
            scope = _LaunchScope(patch_lang(fn))
            patched = set(languages(fn))
            return scope
        if languages(fn) - patched:  # a helper reading a module the launch did not patch (kept, as Triton does)
            patched |= languages(fn)
            return patch_lang(fn)
        return None  # the helper's call ignores what it gets

    patch_once.once_per_launch = True
    interpreter._patch_lang = patch_once


if DEVICE == "cpu":
    _patch_the_language_once_per_launch()

import fused_unet  # noqa: E402
from fused_unet import verify  # noqa: E402

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
# fp32 whole networks: within fused_unet.verify.EAGER_ERROR_FACTOR times eager PyTorch fp32's own largest error
# against float64 on the same input (assert_within_eager_error; the library's rule, which the demo checks too).
# Low precision against a baseline: at most this many elements may miss both per-element rules (a ReLU or
# max-pool decision flipped by a rounding); a wrong tile (16x16 = 256 elements) never passes.
LOW_PRECISION_OUTLIERS = 8

# Hypothesis profiles for tests/test_fuzz.py: "ci" (default; derandomised, so a CI run is repeatable) and "long"
# (HYPOTHESIS_PROFILE=long: a GPU session or a night). The GPU box has no hypothesis: the fuzz tests skip there.
try:
    from hypothesis import HealthCheck, settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", max_examples=6, deadline=None, derandomize=True, print_blob=True,
                                          suppress_health_check=[HealthCheck.too_slow])
    _hypothesis_settings.register_profile("long", max_examples=400, deadline=None, print_blob=True,
                                          suppress_health_check=[HealthCheck.too_slow])
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:
    pass

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


@pytest.fixture(autouse=True)
def _interpreter_overflow_check(request):
    """Tests marked ``whole_model`` run the Triton interpreter without its int32 overflow check of every add, sub
    and mul, which doubles an interpreted kernel's cost; every kernel also runs with it in the op tests, at the same
    small sizes (sizes near 2^31 are held by int64 index math, tests/test_errors.py)."""
    if DEVICE != "cpu" or request.node.get_closest_marker("whole_model") is None:
        yield
        return
    import dataclasses

    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    checked = builder.options
    builder.options = dataclasses.replace(checked, sanitize_overflow=False)
    try:
        yield
    finally:
        builder.options = checked


@pytest.fixture(autouse=True)
def _seeded():
    # Every test draws the same data whatever ran before it: a failure reproduces with the test alone.
    torch.manual_seed(0)


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


def _off_tolerance(actual, expected, tol_key, factor=1.0):
    """(elements outside the dtype's tolerance, |error|, atol, rtol, scale) of ``actual`` against ``expected``."""
    atol, rtol = TOLERANCES[tol_key]
    atol, rtol = atol * factor, rtol * factor
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual - expected).abs()
    bad = ~(err <= atol * scale + rtol * expected.abs())
    return bad & ~(actual.isnan() & expected.isnan()), err, atol, rtol, scale


def assert_close(actual, expected, tol_key, name="tensor", factor=1.0, baseline=None):
    """allclose against a float64 reference; on failure, print the worst elements (Liger-Kernel style).
    ``baseline``: PyTorch's own result in the same low precision; an element no further from the reference than
    twice PyTorch's own error passes too (a whole fp16 network can flip a ReLU mask, in PyTorch as in ours), and
    up to LOW_PRECISION_OUTLIERS elements may miss both rules (a decision flipped in ours but not in PyTorch's)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().double(), expected.detach().double()
    bad, err, atol, rtol, scale = _off_tolerance(actual, expected, tol_key, factor)
    allowed = 0
    if baseline is not None:
        base_err = (baseline.detach().double() - expected).abs()
        bad &= ~(err <= 2 * base_err + atol * scale)
        allowed = LOW_PRECISION_OUTLIERS
    if int(bad.sum()) > allowed:
        worst = torch.argsort(err.flatten().nan_to_num(float("inf")), descending=True)[:5]
        lines = [f"  at {tuple(torch.unravel_index(i, err.shape))}: got {actual.flatten()[i]:.6g}, "
                 f"expected {expected.flatten()[i]:.6g}, |diff| {err.flatten()[i]:.3g}" for i in worst]
        pytest.fail(f"{name}: {int(bad.sum())}/{bad.numel()} elements off (atol {atol * scale:.3g}, rtol {rtol:.3g})"
                    f" for {tol_key}:\n" + "\n".join(lines))


def check_against_float64(fused, reference, inputs, tol_key, factor=1.0, baseline=False):
    """Run ``fused(*inputs)`` and ``reference`` on float64 copies; compare the output(s) and the gradient of every
    input that requires grad, for one random upstream gradient per output. ``baseline``: also run ``reference``
    in the inputs' own dtype; PyTorch's own error there bounds ours (see assert_close)."""
    outs = fused(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grad_outs = [torch.randn(o.shape, device=o.device).to(o.dtype) for o in outs]
    diff_index = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(outs, [inputs[i] for i in diff_index], grad_outs) if diff_index else ()
    ref_outs, ref_grads = _reference_run(reference, inputs, diff_index, grad_outs, torch.float64)
    base_outs, base_grads = _reference_run(reference, inputs, diff_index, grad_outs, None) if baseline else \
        ([None] * len(outs), [None] * len(grads))
    for i, (out, ref_out, base) in enumerate(zip(outs, ref_outs, base_outs)):
        assert out.dtype == inputs[0].dtype
        assert_close(out, ref_out, tol_key, f"output {i}", factor, base)
    for i, (g, r, base) in enumerate(zip(grads, ref_grads, base_grads)):
        assert g.dtype == inputs[diff_index[i]].dtype
        assert_close(g, r, tol_key, f"grad of differentiable input {i}", factor, base)
    return outs[0] if len(outs) == 1 else outs


def _reference_run(reference, inputs, diff_index, grad_outs, dtype):
    """Outputs and input gradients of ``reference`` on detached copies of ``inputs`` (cast to ``dtype``)."""
    copies = [t.detach().to(dtype or t.dtype).requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
              for t in inputs]
    outs = reference(*copies)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = torch.autograd.grad(outs, [copies[i] for i in diff_index], [g.to(o.dtype) for g, o in zip(grad_outs, outs)]) \
        if diff_index else ()
    return outs, grads


model_triplet = verify.model_triplet


def assert_within_eager_error(actual, expected, baseline, name, scale=None):
    """The largest error of ``actual`` against the float64 ``expected`` is at most EAGER_ERROR_FACTOR times eager
    PyTorch's own (``baseline``, same dtype, same input): fused_unet.verify's rule (``scale``: its floor's)."""
    err, ratio = verify.eager_error_ratio(actual, expected, baseline, scale)
    assert ratio <= verify.EAGER_ERROR_FACTOR, (
        f"{name}: largest error {err:.3g} is {ratio:.0f}x eager PyTorch's own (largest value "
        f"{expected.detach().abs().max().item():.3g}); at most {verify.EAGER_ERROR_FACTOR}x is allowed")


def compare_step(models, x, grad, label="", factor=MODEL_TOLERANCE_FACTOR, check_grads=True):
    """One forward + backward of (model, reference, baseline) from ``model_triplet``; the logits and (with
    ``check_grads``) the gradient of x and of every parameter must match the reference: in low precision within
    twice the baseline's own error (assert_close), in fp32 within the tolerance and within EAGER_ERROR_FACTOR
    times the fp32 baseline's own largest error (assert_within_eager_error). Where eager fp32 itself misses the
    tolerance (a ReLU whose float64 input is exactly 0: fp32 rounding picks its side), the eager rule alone holds."""
    model, reference, baseline = models
    dtype = next(model.parameters()).dtype
    (out, grads), (ref, ref_grads), (base_out, base_grads) = (verify.run_step(m, x, grad) for m in models)
    low_precision = dtype != torch.float32
    assert out.shape == ref.shape
    names = ["logits"] + [f"grad {name}" for name in ["x"] + [name for name, _ in model.named_parameters()]]
    expected = [ref] + ref_grads
    for name, a, r, b, scale in zip(names, [out] + (grads if check_grads else []), expected, [base_out] + base_grads,
                                    verify.floor_scales(names, expected)):
        if r is None:  # a parameter the forward does not use (e.g. encoder stages below the decoder's depth)
            assert a is None, f"{label}{name}: the reference has none"
            continue
        if low_precision or not _off_tolerance(b, r, dtype, factor)[0].any():
            assert_close(a, r, dtype, f"{label}{name}", factor, b if low_precision else None)
        if not low_precision:
            assert_within_eager_error(a, r, b, f"{label}{name}", scale)
    for m in models:
        m.zero_grad(set_to_none=True)


def record_launches(monkeypatch):
    """The list that (kernel name, keyword arguments) of every kernel launch from now on goes to (each kernel's
    ``run``, as the launchers call it)."""
    from fused_unet import doctor

    seen = []
    for name, kernel in doctor.kernels().items():
        original = kernel.run

        def run(*args, _name=name, _original=original, **kwargs):
            seen.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", run)
    return seen
