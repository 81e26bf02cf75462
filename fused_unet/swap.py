"""One call to put the fused modules into a model you already have."""
from torch import nn

from fused_unet import nn as fnn

# Exact torch classes and their drop-in fused subclasses (subclasses of these torch classes are left alone:
# their forward may do something else).
_SWAPS = {nn.Conv2d: fnn.Conv2d, nn.MaxPool2d: fnn.MaxPool2d, nn.ConvTranspose2d: fnn.ConvTranspose2d}


def swap_modules(model, fuse_relu=True):
    """Replace, in place, every ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.ConvTranspose2d`` of ``model`` by its
    ``fused_unet.nn`` subclass — same parameters, buffers, hooks and state_dict keys — and, with ``fuse_relu``,
    fold an ``nn.ReLU`` or ``nn.LeakyReLU`` (slope >= 0) that directly follows a conv inside an ``nn.Sequential``
    into that conv's epilogue (the activation module becomes ``nn.Identity``). Configurations the kernels do not
    cover keep running the torch forward (one warning each).
    Returns ``model`` and a count of what was swapped."""
    counts = {"Conv2d": 0, "MaxPool2d": 0, "ConvTranspose2d": 0, "ReLU fused": 0}
    for module in model.modules():
        fused = _SWAPS.get(type(module))
        if fused is not None:
            module.__class__ = fused  # the fused class only adds behaviour, so the instance keeps all its state
            if fused is not fnn.MaxPool2d:
                fused._adopt(module)
            counts[fused.__name__] += 1
    if fuse_relu:
        for module in model.modules():
            if isinstance(module, nn.Sequential):
                counts["ReLU fused"] += _fuse_relus(module)
    return model, counts


def _fuse_relus(seq):
    fused = 0
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        conv, act = seq._modules[first], seq._modules[second]
        if not isinstance(conv, (fnn.Conv2d, fnn.ConvTranspose2d)) or conv.activation is not None:
            continue
        if type(act) is nn.ReLU:
            conv.activation = "relu"
        elif type(act) is nn.LeakyReLU and act.negative_slope >= 0:
            conv.activation, conv.negative_slope = "leaky_relu", act.negative_slope
        else:
            continue
        seq._modules[second] = nn.Identity()
        fused += 1
    return fused
