"""torch.cat([a, b], 1) + a transposed conv -> the transposed conv reading both tensors (MONAI UNet's up layers read
the skip connection's concatenation so), without building the concatenation."""
from torch import nn

from fused_unet import nn as fnn
from fused_unet.swap.graph import arg
from fused_unet.swap.runtime import _fused_conv_transpose


def _parameters(g, node):
    """(weight, bias, stride, padding, output_padding) of a transposed conv node the kernels cover (an
    nn.ConvTranspose2d call: its parameters read by get_attr; a torch.conv_transpose2d call), else None."""
    m = g.module(node, nn.ConvTranspose2d)
    if m is None:
        geometry = g.conv_transpose(node)
        return geometry and (node.args[1], arg(node, 2, "bias"), *geometry)
    if fnn.conv_transpose2d_config_unsupported(m) is not None:
        return None
    with g.graph.inserting_before(node):
        weight, bias = (g.graph.get_attr(f"{node.target}.{name}") if getattr(m, name) is not None else None
                        for name in ("weight", "bias"))
    return weight, bias, m.stride[0], m.padding[0], m.output_padding[0]


def swap(g):
    """Replace every concatenation read by a transposed conv alone; True when the graph changed."""
    changed = False
    for node in list(g.graph.nodes):
        if not node.args or (g.module(node, nn.ConvTranspose2d) is None and g.conv_transpose(node) is None):
            continue
        cat = node.args[0]  # read by the transposed conv alone
        if not hasattr(cat, "op") or not g.is_cat(cat) or len(g.data_users(cat)) != 1 or \
                (tensors := g.channel_cat(cat)) is None:
            continue
        if (parameters := _parameters(g, node)) is None:
            continue
        g.replace([cat, node], _fused_conv_transpose, (tensors[0], *parameters, tensors[1]), {})
        g.report.add_fusion("cat+convtranspose", "conv_transpose2d", (g.name(cat), g.name(node)))
        changed = True
    return changed
