"""A conv chain without an activation whose output is added to another tensor (a ResNet block's skip, a diffusion
block's input or its time embedding [N, C, 1, 1]), then optionally ReLU / LeakyReLU -> one fused conv with the
residual added in its epilogue."""
import operator

import torch
import torch.fx

from fused_unet.swap.graph import example
from fused_unet.swap.runtime import _fused_conv_add

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")


def _other_operand(node, value):
    """The tensor ``node`` adds to ``value`` (``value + t``, ``t + value``, ``value += t``, ``value.add(t)``), or
    None."""
    plain = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or \
        (node.op == "call_method" and node.target in _ADD_METHODS)
    if not plain or len(node.args) != 2 or node.kwargs:
        return None
    first, second = node.args
    other = second if first is value else first if second is value else None
    return other if isinstance(other, torch.fx.Node) and other is not value else None


def match(g, chain):
    """(the other tensor, the add and activation nodes, the activation) after a chain with no activation, or
    None."""
    if chain.activation is not None:
        return None
    last = chain.nodes[-1]
    users = list(last.users)
    if len(users) != 1 or (other := _other_operand(users[0], last)) is None:
        return None
    # Where the graph knows the shapes, the other tensor must not widen the conv's output (a time embedding
    # [N, C, 1, 1] broadcast to it is read with zero strides); at run time the fused call checks again.
    value, out = example(other, g.root), example(last, g.root)
    if value is not None and out is not None and \
            (value.dim() != out.dim() or any(v not in (1, o) for v, o in zip(value.shape, out.shape))):
        return None
    nodes, activation = [users[0]], (None, 0.01)
    if (nxt := g.only_user(users[0])) is not None and (found := g.activation(nxt)) is not None:
        nodes.append(nxt)
        activation = found
    return other, nodes, activation


def rewrite(g, chain, found):
    other, nodes, (activation, negative_slope) = found
    conv, bn = chain.fused_args(g)
    g.replace(chain.nodes + nodes, _fused_conv_add, (chain.conv.args[0], conv, bn, other),
              dict(activation=activation, negative_slope=negative_slope))
    g.report.add_fusion("conv" + chain.suffix() + "+add" + "+act" * (activation is not None), "conv2d",
                        tuple(g.name(n) for n in chain.nodes + nodes))
