"""The backend rule: CUDA tensor -> Triton kernels; CPU tensor with TRITON_INTERPRET=1 -> the same Triton
kernels, interpreted; CPU otherwise -> the eager PyTorch fallback (``fused_unet.eager``). Meta tensors run the
fused autograd Functions shape-only (each launch's output allocation, no data): what they save for backward
can be measured for any size without a GPU (``fused_unet.utils.saved_activation_bytes``)."""
import contextlib
import importlib.util

import torch

from fused_unet.kernels import interpreter_requested

BACKENDS = ("triton", "triton-interpreter", "eager", "meta")
_DESCRIPTIONS = {
    "triton": "Triton kernels, compiled for the GPU",
    "triton-interpreter": "the same Triton kernels, run by the Triton interpreter on the CPU (slow; for checking)",
    "eager": "eager PyTorch fallback (torch.nn.functional; no fused kernels)",
    "meta": "the fused autograd Functions on meta tensors: shapes and saved tensors only, no data",
}
_forced_eager = 0


def interpreter_enabled():
    """Whether the kernels run under the Triton interpreter. Triton reads TRITON_INTERPRET when the kernels are
    first imported (the first fused call), so the variable must not change after that."""
    return interpreter_requested()


# Looked up once, at import: torch.compile 2.11 cannot trace importlib and broke the graph at every fused op.
_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def triton_available():
    return _TRITON_AVAILABLE


def backend(tensor_or_device):
    """``"triton"``, ``"triton-interpreter"``, ``"eager"`` or ``"meta"``: what fused ops do with this tensor /
    device."""
    device = tensor_or_device.device if isinstance(tensor_or_device, torch.Tensor) else torch.device(tensor_or_device)
    if _forced_eager or not triton_available():
        return "eager"
    if device.type == "meta":
        return "meta"
    if interpreter_enabled():
        return "triton-interpreter"
    return "triton" if device.type == "cuda" else "eager"


def describe(tensor_or_device):
    """One line for logs and headers, e.g. ``triton-interpreter (the same Triton kernels, ...)``."""
    name = backend(tensor_or_device)
    return f"{name} ({_DESCRIPTIONS[name]})"


@contextlib.contextmanager
def force_eager():
    """Run every fused op through the eager fallback inside this block (e.g. fast CPU training)."""
    global _forced_eager
    _forced_eager += 1
    try:
        yield
    finally:
        _forced_eager -= 1
