"""Rewrite one captured graph: every conv chain by the first pattern that matches it (``patterns``), the single
layers of a torch.compile graph, then which batch norms may stay pending and what was left alone."""
import torch.fx
import torch.nn.functional as F

from fused_unet import nn as fnn
from fused_unet.swap.graph import UPSAMPLE_CALLS, UPSAMPLE_MODULES, SwapGraph
from fused_unet.swap.module_level import _SWAPS
from fused_unet.swap.patterns import CHAIN_PATTERNS, concat_conv_transpose, conv_chain, norm_act, single_layers
from fused_unet.swap.runtime import (_CAT_FUNCTIONS, _DATA_INPUTS, _NORM_ARGUMENT, _fused_conv, _fused_conv_add,
                                     _fused_conv_pool)


def rewrite(root, graph, prefix, report, functional=False):
    """Rewrite ``graph`` (of ``root``, named ``prefix`` in ``report``) in place; True when it changed.
    ``functional``: a torch.compile graph (torch-level calls, no modules), where single layers are swapped too."""
    g = SwapGraph(root, graph, prefix, report, functional)
    changed = False
    for conv_node in [n for n in graph.nodes if g.conv(n) is not None]:
        if g.conv(conv_node)[1]:  # unsupported configuration: the module level reports it
            continue
        chain = conv_chain.find(g, conv_node)
        for pattern in CHAIN_PATTERNS:
            if (found := pattern.match(g, chain)) is not None:
                pattern.rewrite(g, chain, found)
                changed = True
                break
    changed = concat_conv_transpose.swap(g) or changed
    if functional:
        changed = single_layers.swap(g) or changed
    changed = norm_act.swap(g) or changed
    _merge_projections(g)
    _defer_norms(g)
    _report_leftovers(g)
    graph.lint()
    return changed


def _reads_normalized(g, user, value):
    """Whether user takes value only as a fused layer's data input (so a pending batch norm may reach it), or reads
    only its shape (smp's decoder sizes its up-sampling so; a Normalized has y's shape)."""
    if user.op == "call_function" and user.target is getattr and user.args[1:] == ("shape",):
        return True
    if user.op == "call_function" and user.target in _DATA_INPUTS:
        positions = [i for i, a in enumerate(user.args) if a is value]
        projection = user.kwargs.get("projection") or (None,)  # its input is read as the fused conv reads it
        return (bool(positions) or projection[0] is value) and value not in projection[1:] and \
            all(i in _DATA_INPUTS[user.target] for i in positions)
    if user.args != (value,) or user.kwargs:
        return False
    if g.module(user, fnn.Conv2d, fnn.MaxPool2d, fnn.ConvTranspose2d) is not None:
        return True
    m = g.module(user, *_SWAPS)  # swapped for its fused class below when supported
    return m is not None and _SWAPS[type(m)][1](m) is None


def _merge_projections(g):
    """A fused conv + add whose residual is a fused conv (+ norm) without an activation that nothing else reads (a
    ResNet downsample's 1x1 conv + BN) takes it as its ``projection``: run in its kernel where both norms fold (the
    fused call checks at run time)."""
    for node in list(g.graph.nodes):
        if node.op != "call_function" or node.target is not _fused_conv_add:
            continue
        residual = node.args[3]
        if not isinstance(residual, torch.fx.Node) or residual.target is not _fused_conv or \
                residual.kwargs.get("activation") is not None or len(residual.users) != 1:
            continue
        node.args = (*node.args[:3], None, *node.args[4:])
        node.kwargs = dict(node.kwargs, projection=tuple(residual.args[:3]))
        g.graph.erase_node(residual)


def _defer_norms(g):
    """A fused conv's batch norm stays pending (its readers normalise as they read) when only fused layers read it."""
    for node in g.graph.nodes:
        if node.op != "call_function" or node.target not in _NORM_ARGUMENT or \
                node.args[_NORM_ARGUMENT[node.target]] is None:  # no norm
            continue
        outputs = [u for u in node.users if u.args[1] == 0] if node.target is _fused_conv_pool else [node]
        readers = [(u, out) for out in outputs for u in out.users]
        if readers and all(_reads_normalized(g, u, out) for u, out in readers):
            node.kwargs = dict(node.kwargs, defer=True)


def _report_leftovers(g):
    for node in g.graph.nodes:
        if node.op == "call_function" and node.target in (*_CAT_FUNCTIONS, F.interpolate, *UPSAMPLE_CALLS):
            what = "cat" if node.target in _CAT_FUNCTIONS else "interpolate"
            where = g.name(node) if node.meta.get("nn_module_stack") else f"{what} ({g.prefix or 'model'}.{node.name})"
            if g.functional and any(u.op == "output" for u in node.users):
                why = ("its result leaves this torch.compile graph: the code that reads it runs past a graph break, "
                       "in another graph")
            elif node.meta.get("read_by_a_fused_conv"):
                why = ("also read by a conv the concatenating kernels do not cover (strided, not 'same' padding, "
                       "or unsupported): built for that conv; the fused convs read its two tensors")
            else:
                why = "not followed by a supported conv (fused: [upsample x2] [+ pad] + cat([a, b], 1) + conv)"
            g.report.add_left_alone((where, why))
        elif g.module(node, *UPSAMPLE_MODULES) is not None:
            g.report.add_left_alone((g.name(node), "not an x2 nearest/bilinear up-sampling followed by cat + a "
                                                   "supported conv"))
