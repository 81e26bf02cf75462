"""[x2 up-sampling] [+ F.pad] [+ torch.cat([a, b], 1)] + conv chain -> the concatenating conv, which reads both
tensors (up-sampling and padding one on the fly) without building the concatenation."""
import torch
import torch.nn.functional as F

from fused_unet.swap.graph import UpBranch, arg
from fused_unet.swap.runtime import _fused_concat_conv


def _up_branch(g, node):
    """What feeds one side of a concatenation, [F.pad(] [upsample(] source [)] [)], as an UpBranch."""
    pad, pad_mode, nodes = None, "constant", []
    if node.op == "call_function" and node.target in (F.pad, torch._C._nn.pad) and \
            len(g.data_users(node)) == 1 and arg(node, 3, "value") in (None, 0, 0.0):
        # Only a zero pad fuses; another mode (MONAI pads by replicating) only where all amounts are 0.
        pad, pad_mode, nodes, node = arg(node, 1, "pad"), arg(node, 2, "mode", "constant"), [node], node.args[0]
    up = g.upsampling(node) or UpBranch(node)
    return up._replace(pad=pad, pad_mode=pad_mode, nodes=(*up.nodes, *nodes))


def _read_by_convs_alone(g, cat):
    """Whether every data reader of ``cat`` is a conv taking it as its input (a MONAI UnetResBlock reads its
    concatenated input with its first conv and its 1x1 projection): each reads the two tensors itself."""
    return all(g.conv(u) is not None and u.args[:1] == (cat,) for u in g.data_users(cat))


def match(g, chain):
    """(up branch, skip node, up_first, cat node, passthrough nodes) of the concatenation feeding the chain's conv
    (through identities); an x2 up-sampling feeding it with no concatenation (a decoder step without a skip) has
    skip and cat None. None when neither feeds it, or the conv is not stride 1 with 'same' padding."""
    if g.conv(chain.conv, strided=False)[1]:
        return None
    node, between = chain.conv.args[0], []
    while g.passthrough(node) and len(node.users) == 1:
        between.append(node)
        node = node.args[0]
    if (up := g.upsampling(node)) is not None:
        return up, None, True, None, between
    if not g.is_cat(node) or not (len(g.data_users(node)) == 1 or not between and _read_by_convs_alone(g, node)):
        return None
    if (tensors := g.channel_cat(node)) is None:
        g.report.add_left_alone((f"cat before {g.name(chain.conv)}",
                                 "not two tensors along the channels (fused: cat([a, b], 1))"))
        return None
    branches = [_up_branch(g, t) for t in tensors]
    # The up-sampled (or padded) side is "up"; with neither, the first tensor.
    index = next((i for i, b in enumerate(branches) if b.up_mode is not None), None)
    index = next((i for i, b in enumerate(branches) if b.pad is not None), 0) if index is None else index
    return branches[index], tensors[1 - index], index == 0, node, between


def rewrite(g, chain, found):
    up, skip, up_first, cat, between = found
    read = [*up.nodes, *([cat] if cat is not None else [])]  # what the fused conv reads in place of its input
    # A concatenation another conv reads too stays until the last of them is replaced.
    shared = cat is not None and len(g.data_users(cat)) > 1
    if shared:
        cat.meta["read_by_a_fused_conv"] = True  # for the report, should a reader left over need it built
    conv, bn = chain.fused_args(g)
    g.replace(([] if shared else read) + between[::-1] + chain.nodes, _fused_concat_conv, (up.source, skip, conv, bn),
              dict(chain.epilogue(), up_first=up_first, up_mode=up.up_mode, align_corners=up.align_corners,
                   size=up.size, pad=up.pad, pad_mode=up.pad_mode, interpolate=up.interpolate,
                   upsampler=g.attr(up.upsampler, chain.conv)))
    pattern = "+".join(["upsample"] * (up.up_mode is not None) + ["pad"] * (up.pad is not None) +
                       ["cat"] * (skip is not None))
    g.report.add_fusion(pattern + "+conv" + chain.suffix(), "concat_conv2d",
                        tuple(g.name(n) for n in read + between[::-1] + chain.nodes))
