"""A norm whose input is not a fused conv's output (a pre-activation block's norm -> act -> conv, a diffusion block's
GroupNorm -> SiLU of its input or of a sum), with the activation after it -> statistics by one reduction kernel,
then pending into the fused ops that read it (or one kernel makes it a tensor for the others)."""
from fused_unet.swap.runtime import _fused_norm_act


def _with_activation(g, norm_node):
    """(the norm node and what follows it up to its activation, (activation, slope))."""
    nodes, node = [norm_node], norm_node
    while (nxt := g.only_user(node)) is not None:
        if (found := g.activation(nxt, after_norm=True)) is not None:
            return nodes + [nxt], found
        if not g.passthrough(nxt):
            break
        nodes.append(nxt)
        node = nxt
    return nodes, (None, 0.01)


def swap(g):
    """Replace every remaining norm the kernels cover (conv chains took theirs) and its activation; True when the
    graph changed."""
    changed = False
    for node in [n for n in g.graph.nodes if g.standalone_norm(n)]:
        nodes, (activation, negative_slope) = _with_activation(g, node)
        g.replace(nodes, _fused_norm_act, (node.args[0], g.spec(node, node)),
                  dict(activation=activation, negative_slope=negative_slope, defer=False))
        g.report.add_fusion("bn" + "+act" * (activation is not None), "norm", tuple(g.name(n) for n in nodes))
        changed = True
    return changed
