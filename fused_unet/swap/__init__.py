"""Put the fused kernels into a U-Net you already have: ``swap(model)``.

Two levels, both in place; parameters, buffers and state_dict keys do not change.

1. Dataflow fusions, wherever ``torch.fx`` traces a module's forward and the trace provably computes what the
   forward does (both run on a probe input, in training and eval mode, and must agree: a trace can silently take
   one branch of Python that looks at types, shapes or ``self.training``), else wherever ``torch.compile`` can
   capture it (guarded graphs, rewritten by the same patterns, run without Inductor):
   conv (+ BatchNorm2d / InstanceNorm2d / GroupNorm) (+ ReLU / LeakyReLU) -> one fused conv; such a chain
   followed by a 2x2 max-pool -> the conv+pool kernel; up-sampling (x2 ``F.interpolate`` / ``nn.Upsample``, nearest or bilinear, or a tensor
   already at the skip's size, e.g. a transposed conv's output) (+ ``F.pad`` to the skip's size) + ``torch.cat``
   + conv chain -> the concatenating conv. A normalised output read only by fused layers stays pending
   (normalised while they read it). The rewritten forward is bound to the module instance; each fused call
   checks its run-time conditions (sizes, dtypes) and otherwise runs the original ops.
2. Module level: every remaining supported ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.ConvTranspose2d`` becomes its
   ``fused_unet.nn`` subclass, and a ReLU / LeakyReLU after a conv in an ``nn.Sequential`` that was not traced
   folds into it.
A module neither can capture keeps its forward; its children are tried one by one. The report says what was
fused, what was left alone and why."""
from torch import nn

from fused_unet.swap.capture import _fuse_tree, _probe
from fused_unet.swap.module_level import _SWAPS, _swap_classes
from fused_unet.swap.report import Fusion, SwapReport
from fused_unet.swap.runtime import SHAPE_ONLY

__all__ = ["Fusion", "SHAPE_ONLY", "SwapReport", "swap", "swap_modules"]

def swap(model, example_input=None, fuse=True):
    """Swap the fused kernels into ``model`` (in place) and return ``(model, report)``.

    ``example_input``: a tensor (or tuple of forward arguments) the model accepts, used to check each torch.fx
    trace against the model's own forward; without it a random batch of 2 images at 64 / 128 / 256 pixels with
    the first conv's input channels is tried. ``fuse=False``: module level only."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    report = SwapReport(type(model).__name__)
    roots = {"fx": [], "compile": []}
    if fuse and any(type(m) in _SWAPS for m in model.modules()):  # else nothing to fuse (a fused_unet model, say)
        inputs, why = _probe(model, example_input)
        if inputs is None:
            report.untraced.append(("", why))
        else:
            _fuse_tree(model, "", inputs, report, roots)
    _swap_classes(model, report, roots)
    return model, report


def swap_modules(model, fuse_relu=True):
    """Module level only: every supported ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.ConvTranspose2d`` becomes its
    ``fused_unet.nn`` subclass, and with ``fuse_relu`` a ReLU / LeakyReLU (slope >= 0) right after a conv in an
    ``nn.Sequential`` folds into the conv (the activation module becomes ``nn.Identity``). Returns ``model`` and
    the counts; ``swap`` does this plus the dataflow fusions."""
    report = SwapReport(type(model).__name__)
    _swap_classes(model, report, {"fx": [] if fuse_relu else [model], "compile": []})
    return model, report.swapped
