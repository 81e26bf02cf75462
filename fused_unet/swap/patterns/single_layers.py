"""In a torch.compile graph, what the module level does elsewhere: each remaining supported conv, transposed conv
and max-pool call runs its fused op (or, at run time, the original one)."""
from fused_unet.swap.graph import arg
from fused_unet.swap.runtime import _fused_conv, _fused_conv_transpose, _fused_max_pool


def swap(g):
    """Swap the single layers of ``g``; True when the graph changed."""
    changed = False
    for node in list(g.graph.nodes):
        if node.op != "call_function":
            continue
        conv = g.conv(node)
        if conv is not None and not conv[1]:
            g.report.add_fusion("conv", "conv2d", (g.name(node),))
            g.replace([node], _fused_conv, (node.args[0], g.spec(node, node), None),
                      dict(activation=None, negative_slope=0.01, defer=False))
        elif (geometry := g.conv_transpose(node)) is not None:
            g.report.add_fusion("convtranspose", "conv_transpose2d", (g.name(node),))
            g.replace([node], _fused_conv_transpose, (node.args[0], node.args[1], arg(node, 2, "bias"), *geometry),
                      {})
        elif (window := g.pool_window(node)) is not None:
            g.report.add_fusion("maxpool", f"max_pool{window}x{window}", (g.name(node),))
            g.replace([node], _fused_max_pool, (node.args[0], window), {})
        else:
            continue
        changed = True
    return changed
