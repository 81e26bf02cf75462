"""Is a fused model right? One training step against the same model in float64, judged by eager PyTorch's own
error: the rule the test suite holds whole networks to, and what ``fused-unet demo`` checks.

The largest error of the logits and of every gradient (input and parameters) against float64 must stay within
EAGER_ERROR_FACTOR times the largest error eager PyTorch makes in the same dtype on the same input. A fixed
tolerance let a 1000x regression of BatchNorm gradients at batch 1 pass; eager's own error scales with what the
network does (depth, normalisation, batch size), so the bound does too."""
import copy

import torch

EAGER_ERROR_FACTOR = 16
# Stands for eager being exact where a different summation order is not (relative to the floor's scale).
EAGER_ERROR_FLOOR = 1e-7


def model_triplet(model, reference):
    """(model, its float64 reference, eager PyTorch's own run in model's dtype), ``reference`` taking model's
    weights."""
    dtype = next(model.parameters()).dtype
    reference.load_state_dict(model.state_dict())
    return model, reference.double(), copy.deepcopy(reference).to(dtype)


def run_step(model, x, grad):
    """Logits and the gradients of (x, *parameters) of one forward + backward in ``model``'s dtype. ``grad``: the
    upstream gradient, or a function of the logits' shape that returns it."""
    dtype = next(model.parameters()).dtype
    x = x.detach().to(dtype).requires_grad_()
    out = model(x)
    out.backward((grad(out.shape) if callable(grad) else grad).to(out.device, dtype))
    return out, [x.grad] + [p.grad for p in model.parameters()]


def eager_error_ratio(actual, expected, baseline, scale=None):
    """(largest error of ``actual`` against the float64 ``expected``, that error over eager's (``baseline``),
    floored at EAGER_ERROR_FLOOR of ``scale``, by default the largest value); (0, 0) for empty tensors."""
    expected = expected.detach().double()
    if not expected.numel():
        return 0.0, 0.0
    scale = expected.abs().max().item() if scale is None else scale
    err = (actual.detach().double() - expected).abs().max().item()
    base = (baseline.detach().double() - expected).abs().max().item()
    return err, err / max(base, EAGER_ERROR_FLOOR * scale, 1e-300)


def floor_scales(names, expected):
    """Per gradient name ("grad PARAMETER"; others are their own), the largest value among the float64 gradients of
    its module's parameters: a conv bias before a batch-statistics norm has a gradient that cancels to 0 in exact
    arithmetic, which fp32 eager may hit exactly by luck; its rounding is on the scale of its weight's gradient."""
    def module(name):
        return name.rsplit(".", 1)[0] if name.startswith("grad ") and "." in name else name

    largest = {}
    for name, r in zip(names, expected):
        if r is not None and r.numel():
            largest[module(name)] = max(largest.get(module(name), 0.0), r.detach().abs().max().item())
    return [largest.get(module(name)) for name in names]


def step_errors(models, x, grad):
    """One step of (model, reference, baseline) from ``model_triplet`` (``grad`` as run_step takes it): {name:
    (largest error, ratio to eager's)} for the logits and every gradient the reference has (names: "logits",
    "grad x", "grad PARAMETER")."""
    model, reference, baseline = models
    (out, grads), (ref, ref_grads), (base_out, base_grads) = (run_step(m, x, grad) for m in models)
    if out.shape != ref.shape:
        raise ValueError(f"the model's logits are {tuple(out.shape)}, the reference's {tuple(ref.shape)}")
    names = ["logits", "grad x"] + [f"grad {name}" for name, _ in model.named_parameters()]
    expected = [ref] + ref_grads
    errors = {}
    for name, a, r, b, scale in zip(names, [out] + grads, expected, [base_out] + base_grads,
                                    floor_scales(names, expected)):
        if r is not None:
            errors[name] = eager_error_ratio(torch.zeros_like(r) if a is None else a, r, b, scale)
    for m in models:
        m.zero_grad(set_to_none=True)
    return errors


def check_model(model, reference, x, seed=0):
    """``model`` (fp32) against ``reference`` (the same architecture in eager PyTorch, given model's weights here)
    on input ``x`` for one random upstream gradient: {"errors": step_errors, "worst": (name, ratio), "ok"}."""
    models = model_triplet(model, reference.to(x.device))

    def grad(shape):  # the same draw for each of the three runs
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    errors = step_errors(models, x, grad)
    worst = max(errors, key=lambda name: errors[name][1])
    return {"errors": errors, "worst": (worst, errors[worst][1]), "ok": errors[worst][1] <= EAGER_ERROR_FACTOR}
