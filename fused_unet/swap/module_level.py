"""The module level of ``swap``: exact torch.nn classes become their fused_unet.nn subclasses; 3D layers are named."""
from torch import nn

from fused_unet import nn as fnn

# Exact torch classes and their drop-in fused subclasses (subclasses of these torch classes are left alone:
# their forward may do something else), with the check of what the kernels cover.
_SWAPS = {nn.Conv2d: (fnn.Conv2d, fnn.conv2d_config_unsupported),
          nn.MaxPool2d: (fnn.MaxPool2d, fnn.max_pool2d_config_unsupported),
          nn.ConvTranspose2d: (fnn.ConvTranspose2d, fnn.conv_transpose2d_config_unsupported)}


# Volumetric layers (MONAI's default spatial_dims=3, nnU-Net's 3D plans): named in the report, never swapped.
_THREE_D = (nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.AvgPool3d, nn.BatchNorm3d, nn.InstanceNorm3d)


def _swap_classes(model, report, roots):
    """The module level, but not inside modules torch.compile captured (their graphs already run the fused ops;
    a new class would make torch.compile capture them again, unfused); ReLU folding only where no graph rewrite
    ran."""
    compiled = {id(m) for root in roots["compile"] for m in root.modules()}
    rewritten = compiled | {id(m) for root in roots["fx"] for m in root.modules()}
    for name, module in model.named_modules():
        if isinstance(module, _THREE_D):
            report.add_left_alone((f"{name or 'model'} ({type(module).__name__})", "3D: not supported yet"))
            continue
        entry = _SWAPS.get(type(module))
        if entry is None:
            continue
        fused, unsupported = entry
        why = unsupported(module)
        if why:
            report.add_left_alone((f"{name or 'model'} ({type(module).__name__})", why))
            continue
        if id(module) in compiled:
            continue
        module.__class__ = fused  # the fused class only adds behaviour, so the instance keeps all its state
        if fused is not fnn.MaxPool2d:
            fused._adopt(module)
        report.swapped[fused.__name__] += 1
    for module in model.modules():
        if isinstance(module, nn.Sequential) and id(module) not in rewritten:
            report.swapped["ReLU fused"] += _fuse_relus(module)


def _fuse_relus(seq):
    fused = 0
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        conv, act = seq._modules[first], seq._modules[second]
        if not isinstance(conv, (fnn.Conv2d, fnn.ConvTranspose2d)) or conv.activation is not None:
            continue
        activation = _module_activation(act)
        if activation is None:
            continue
        conv.activation, conv.negative_slope = activation
        seq._modules[second] = nn.Identity()
        fused += 1
    return fused


def _module_activation(module, after_norm=False):
    """(name, negative slope) of an activation module the kernels fuse: ReLU, LeakyReLU (slope >= 0), and after a
    norm SiLU and GELU (codes.EPILOGUE_ACTIVATIONS: a conv's own epilogue takes the first two only)."""
    if type(module) is nn.ReLU:
        return "relu", 0.01
    if type(module) is nn.LeakyReLU and module.negative_slope >= 0:
        return "leaky_relu", float(module.negative_slope)
    if after_norm and type(module) is nn.SiLU:
        return "silu", 0.01
    if after_norm and type(module) is nn.GELU and module.approximate in ("none", "tanh"):
        return ("gelu_tanh" if module.approximate == "tanh" else "gelu"), 0.01
    return None
