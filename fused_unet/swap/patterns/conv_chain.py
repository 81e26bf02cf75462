"""The chain every conv pattern starts from: conv (-> BatchNorm2d / InstanceNorm2d / GroupNorm) (-> ReLU /
LeakyReLU, or after a norm SiLU / GELU / PReLU), identities between."""
from typing import NamedTuple, Optional

import torch.fx
from torch import nn

_NORM_OR_ACT = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Sigmoid, nn.Tanh, nn.ReLU6, nn.LeakyReLU, nn.ReLU)


class Chain(NamedTuple):
    """``nodes``: the conv, then what follows it up to its activation; ``bn``: its norm node or None."""
    nodes: list
    bn: Optional[torch.fx.Node]
    activation: Optional[str]
    negative_slope: object  # a float, or a PReLU's PReLUWeight

    @property
    def conv(self):
        return self.nodes[0]

    def fused_args(self, g):
        """(conv spec, norm spec) for the fused call, inserted before the conv."""
        return g.spec(self.conv, self.conv), g.spec(self.bn, self.conv)

    def epilogue(self):
        """The fused call's activation keywords."""
        return dict(activation=self.activation, negative_slope=self.negative_slope, defer=False)

    def suffix(self):
        """The report's name of what follows the conv: "+bn", "+act"."""
        return "+bn" * (self.bn is not None) + "+act" * (self.activation is not None)


def find(g, conv_node):
    """The chain of a supported conv node; a norm or activation after it that does not fuse is reported."""
    channels = g.conv(conv_node)[0]
    nodes, bn, act, stage = [conv_node], None, (None, 0.01), 0
    node = conv_node
    while (nxt := g.only_user(node)) is not None:
        if g.passthrough(nxt):
            pass
        elif stage == 0 and g.norm(nxt, channels):
            bn, stage = nxt, 1
        elif stage < 2 and (a := g.activation(nxt, after_norm=stage == 1)) is not None:
            act, stage = a, 2
        else:
            break
        nodes.append(nxt)
        node = nxt
    if (nxt := g.only_user(node)) is not None and nxt.op == "call_module" and \
            isinstance(g.root.get_submodule(nxt.target), _NORM_OR_ACT):
        g.report.add_left_alone((f"{g.name(nxt)} ({type(g.root.get_submodule(nxt.target)).__name__})",
                                 f"after {g.name(conv_node)}: not fused (fused: BatchNorm2d, InstanceNorm2d, "
                                 "GroupNorm, then ReLU or LeakyReLU with slope >= 0, or after a norm SiLU, GELU or "
                                 "PReLU)"))
    return Chain(nodes, bn, *act)
