"""conv + BatchNorm2d and/or ReLU / LeakyReLU -> one fused conv."""
from fused_unet.swap.runtime import _fused_conv


def match(g, chain):
    return True if chain.bn is not None or chain.activation is not None else None


def rewrite(g, chain, found):
    conv, bn = chain.fused_args(g)
    g.replace(chain.nodes, _fused_conv, (chain.conv.args[0], conv, bn), chain.epilogue())
    g.report.add_fusion("conv" + chain.suffix(), "conv2d", tuple(g.name(n) for n in chain.nodes))
