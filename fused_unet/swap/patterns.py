"""The patterns: find each fusable chain in a captured graph (torch.fx or torch.compile dialect) and replace it by
one call of a fused callable (runtime.py)."""
import inspect
import operator
import re
import types
from typing import NamedTuple, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fused_unet import nn as fnn
from fused_unet.swap.module_level import _SWAPS, _module_activation
from fused_unet.swap.runtime import (_CAT_FUNCTIONS, _DATA_INPUTS, _FUSED_OPS, _BatchNormArgs, _ConvArgs,
                                     _fused_concat_conv, _fused_conv, _fused_conv_pool, _fused_conv_transpose,
                                     _fused_max_pool, _on_meta)


class _UpBranch(NamedTuple):
    """One side of a concatenation: ``source`` [up-sampled x2 (``up_mode``, by F.interpolate with ``interpolate``
    kwargs or by the ``upsampler`` module node)] [then padded by ``pad`` in ``pad_mode``]; ``nodes`` replaced."""
    source: torch.fx.Node
    up_mode: Optional[str] = None
    align_corners: bool = False
    size: object = None
    interpolate: Optional[dict] = None
    upsampler: Optional[torch.fx.Node] = None
    pad: object = None
    pad_mode: str = "constant"
    nodes: tuple = ()


def _example(node, root):
    """A graph node's tensor for its shape and dtype: the example torch.compile recorded, or (torch.fx) the
    parameter or buffer a get_attr node reads from ``root``; None where the graph does not say."""
    if not isinstance(node, torch.fx.Node):
        return None
    if "example_value" in node.meta:
        return node.meta["example_value"]
    if node.op == "get_attr":
        value = root
        for part in node.target.split("."):
            value = getattr(value, part, None)
        return value if isinstance(value, torch.Tensor) else None
    return None


def _arg(node, index, name, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
_NORM_OR_ACT = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Sigmoid, nn.Tanh, nn.ReLU6, nn.LeakyReLU, nn.ReLU)
# Module types whose calls a torch.compile graph names by the module's path.
_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.modules.batchnorm._NormBase, nn.MaxPool2d, nn.Upsample, nn.Dropout,
           nn.Dropout2d, nn.ReLU, nn.LeakyReLU, nn.Identity)
_INTERP_PARAMS = list(inspect.signature(F.interpolate).parameters)
_UPSAMPLE_CALLS = {torch._C._nn.upsample_nearest2d: "nearest", torch._C._nn.upsample_bilinear2d: "bilinear"}


class _Rewriter:
    """Finds the patterns in one traced graph and replaces each by one call of a fused op."""

    def __init__(self, root, graph, prefix, report, functional=False):
        """functional: a torch.compile graph (torch-level calls, no modules), where single layers are swapped too."""
        self.root, self.graph, self.prefix, self.report, self.functional = root, graph, prefix, report, functional

    def swap_single_layers(self):
        """In a torch.compile graph, what the module level does elsewhere: each remaining supported conv, 2x2/s2
        transposed conv and 2x2 max-pool call runs its fused op (or, at run time, the original one)."""
        changed = False
        for node in list(self.graph.nodes):
            if node.op != "call_function":
                continue
            conv = self.conv(node)
            if conv is not None and not conv[1]:
                self.report.add_fusion("conv", "conv2d", (self.name(node),))
                spec = self.spec(node, node)
                self.replace([node], _fused_conv, (node.args[0], spec, None), dict(activation=None, negative_slope=0.01,
                                                                                    defer=False))
            elif node.target is torch.conv_transpose2d and self.weight_shape(node)[2:] == (2, 2) and \
                    _arg(node, 3, "stride", 1) in (2, (2, 2)) and _arg(node, 4, "padding", 0) in (0, (0, 0)) and \
                    _arg(node, 5, "output_padding", 0) in (0, (0, 0)) and _arg(node, 6, "groups", 1) == 1 and \
                    _arg(node, 7, "dilation", 1) in (1, (1, 1)):
                self.report.add_fusion("convtranspose", "conv_transpose2x2", (self.name(node),))
                self.replace([node], _fused_conv_transpose, (node.args[0], node.args[1], _arg(node, 2, "bias")), {})
            elif self.is_pool(node):
                self.report.add_fusion("maxpool", "max_pool2x2", (self.name(node),))
                self.replace([node], _fused_max_pool, (node.args[0],), {})
            else:
                continue
            changed = True
        return changed

    def module(self, node, *types_):
        if node.op == "call_module":
            m = self.root.get_submodule(node.target)
            if type(m) in types_:
                return m
        return None

    def name(self, node):
        if node.op == "call_module":
            return f"{self.prefix}.{node.target}" if self.prefix else node.target
        function = getattr(node.target, "__name__", str(node.target))
        stack = node.meta.get("nn_module_stack")  # torch.compile's graphs: the module each call came from
        if not stack:
            return f"{function} ({self.prefix or 'model'})" if self.functional else function
        path, kind = list(stack.values())[-1]
        path = ".".join(p for p in (self.prefix, _relative(path)) if p)
        return path if isinstance(kind, type) and issubclass(kind, _LAYERS) else f"{function} ({path or 'model'})"

    def conv(self, node):
        """(out_channels, why unsupported or None) of a conv node (an nn.Conv2d call or torch.conv2d), else None."""
        m = self.module(node, nn.Conv2d)
        if m is not None:
            return m.out_channels, fnn.conv2d_config_unsupported(m)
        if node.op != "call_function" or node.target is not torch.conv2d:
            return None
        shape = self.weight_shape(node)
        if not shape:
            return None
        pair = nn.modules.utils._pair
        padding = _arg(node, 4, "padding", 0)
        config = types.SimpleNamespace(kernel_size=tuple(shape[2:]), stride=pair(_arg(node, 3, "stride", 1)),
                                       dilation=pair(_arg(node, 5, "dilation", 1)), groups=_arg(node, 6, "groups", 1),
                                       padding=padding if isinstance(padding, str) else pair(padding),
                                       padding_mode="zeros")
        return shape[0], fnn.conv2d_config_unsupported(config)

    def batch_norm(self, node, channels):
        """Whether node is a batch norm of channels channels (an nn.BatchNorm2d call or F.batch_norm)."""
        m = self.module(node, nn.BatchNorm2d)
        if m is not None:
            return m.num_features == channels
        if node.op != "call_function" or node.target is not F.batch_norm:
            return False
        momentum, training = _arg(node, 6, "momentum", 0.1), _arg(node, 5, "training", False)
        example = _example(node.args[0], self.root)
        return isinstance(momentum, float) and isinstance(training, bool) and example is not None and \
            example.shape[1] == channels

    def weight_shape(self, node):
        """The shape of a conv call's weight (its second argument); () where the graph does not say."""
        example = _example(_arg(node, 1, "weight"), self.root)
        return tuple(example.shape) if example is not None else ()

    def spec(self, node, before):
        """What a fused call gets for a conv / batch-norm node: the module itself (get_attr), or its tensors and
        settings from a torch.compile graph."""
        if node is None:
            return None
        if node.op == "call_module":
            return self.attr(node, before)
        with self.graph.inserting_before(before):
            if node.target is torch.conv2d:
                return self.graph.call_function(_ConvArgs, (node.args[1], _arg(node, 2, "bias")))
            names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
            defaults = (None, None, None, None, False, 0.1, 1e-5)
            return self.graph.call_function(_BatchNormArgs, tuple(_arg(node, i + 1, n, d) for i, (n, d) in
                                                                  enumerate(zip(names, defaults))))

    def activation(self, node):
        m = self.module(node, nn.ReLU, nn.LeakyReLU)
        if m is not None:
            return _module_activation(m)
        if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
            return "relu", 0.01
        if node.op == "call_method" and node.target in ("relu", "relu_"):
            return "relu", 0.01
        if node.op == "call_function" and node.target is F.leaky_relu:
            slope = _arg(node, 1, "negative_slope", 0.01)
            if isinstance(slope, (int, float)) and slope >= 0:
                return "leaky_relu", float(slope)
        return None

    def passthrough(self, node):
        """Identity, or dropout with p = 0 (the identity in both modes)."""
        if self.module(node, nn.Identity) is not None:
            return True
        m = self.module(node, nn.Dropout, nn.Dropout2d)
        if m is not None:
            return m.p == 0
        return node.op == "call_function" and node.target in (F.dropout, F.dropout2d) and _arg(node, 1, "p", 0.5) == 0

    @staticmethod
    def data_users(node):
        """node's users but those that only read its shape (``x.size()``, ``x.shape``: the tutorials' pad)."""
        return [u for u in node.users if not (
            (u.op == "call_method" and u.target in ("size", "dim")) or
            (u.op == "call_function" and u.target is getattr and u.args[1] in ("shape", "ndim", "dtype", "device")))]

    def only_user(self, node):
        users = list(node.users)
        if len(users) == 1 and users[0].args[:1] == (node,):
            return users[0]
        return None

    def chain(self, conv_node):
        """The conv's chain: nodes conv (-> BatchNorm2d) (-> activation), with identities between them."""
        channels = self.conv(conv_node)[0]
        nodes, bn, act, stage = [conv_node], None, (None, 0.01), 0
        node = conv_node
        while (nxt := self.only_user(node)) is not None:
            if self.passthrough(nxt):
                pass
            elif stage == 0 and self.batch_norm(nxt, channels):
                bn, stage = nxt, 1
            elif stage < 2 and (a := self.activation(nxt)) is not None:
                act, stage = a, 2
            else:
                break
            nodes.append(nxt)
            node = nxt
        if (nxt := self.only_user(node)) is not None and nxt.op == "call_module" and \
                isinstance(self.root.get_submodule(nxt.target), _NORM_OR_ACT):
            self.report.add_left_alone((f"{self.name(nxt)} ({type(self.root.get_submodule(nxt.target)).__name__})",
                                           f"after {self.name(conv_node)}: not fused (fused: BatchNorm2d, then ReLU "
                                           "or LeakyReLU with slope >= 0)"))
        return nodes, bn, act

    def pool(self, node):
        """A 2x2 max-pool user of node, or None."""
        for user in node.users:
            if user.args[:1] != (node,):
                continue
            if self.is_pool(user):
                return user
        return None

    def is_pool(self, node):
        """A 2x2 / stride-2 max-pool call (nn.MaxPool2d or F.max_pool2d) the kernels cover."""
        m = self.module(node, nn.MaxPool2d)
        if m is not None:
            return fnn.max_pool2d_config_unsupported(m) is None
        if node.op != "call_function" or node.target not in (F.max_pool2d, torch.max_pool2d):
            return False
        return _arg(node, 1, "kernel_size") in (2, (2, 2)) and _arg(node, 2, "stride") in (None, 2, (2, 2), []) and \
            _arg(node, 3, "padding", 0) in (0, (0, 0)) and _arg(node, 4, "dilation", 1) in (1, (1, 1)) and \
            not _arg(node, 5, "ceil_mode", False) and not _arg(node, 6, "return_indices", False)

    def upsampling(self, node):
        """An _UpBranch for an x2 nearest / bilinear up-sampling node with one user, else None."""
        if len(self.data_users(node)) != 1:
            return None
        m = self.module(node, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
        if m is not None:
            mode, size, scale, align, kwargs = m.mode, m.size, m.scale_factor, m.align_corners, None
        elif node.op == "call_function" and node.target is F.interpolate:
            kwargs = dict(zip(_INTERP_PARAMS[1:], node.args[1:]), **node.kwargs)
            if kwargs.get("antialias"):
                return None
            mode, size = kwargs.get("mode", "nearest"), kwargs.get("size")
            scale, align = kwargs.get("scale_factor"), kwargs.get("align_corners")
        elif node.op == "call_function" and node.target in _UPSAMPLE_CALLS:
            # F.interpolate as torch.compile may inline it: (input, output_size, [align_corners,] scale_factors).
            mode = _UPSAMPLE_CALLS[node.target]
            size, scale = _arg(node, 1, "output_size"), _arg(node, 3 if mode == "bilinear" else 2, "scale_factors")
            align = _arg(node, 2, "align_corners", False) if mode == "bilinear" else None
            kwargs = dict(size=size, scale_factor=scale, mode=mode, align_corners=align)
        else:
            return None
        if mode not in ("nearest", "bilinear") or (mode == "nearest" and align):
            return None
        if size is None and scale not in (2, 2.0, (2, 2), (2.0, 2.0), [2, 2], [2.0, 2.0]):
            return None
        return _UpBranch(node.args[0], mode, bool(align), size, kwargs, node if m is not None else None,
                         nodes=(node,))

    def up_branch(self, node):
        """What feeds one side of a concatenation, [F.pad(] [upsample(] source [)] [)], as an _UpBranch."""
        pad, pad_mode, nodes = None, "constant", []
        if node.op == "call_function" and node.target in (F.pad, torch._C._nn.pad) and \
                len(self.data_users(node)) == 1 and _arg(node, 3, "value") in (None, 0, 0.0):
            # Only a zero pad fuses; another mode (MONAI pads by replicating) only where all amounts are 0.
            pad, pad_mode, nodes, node = _arg(node, 1, "pad"), _arg(node, 2, "mode", "constant"), [node], node.args[0]
        up = self.upsampling(node) or _UpBranch(node)
        return up._replace(pad=pad, pad_mode=pad_mode, nodes=(*up.nodes, *nodes))

    def concatenation(self, conv_node):
        """The concatenation feeding conv_node (through identities), as (up branch, skip node, up_first, nodes); an
        x2 up-sampling feeding it with no concatenation (a decoder step without a skip) has skip None."""
        node, between = conv_node.args[0], []
        while self.passthrough(node) and len(node.users) == 1:
            between.append(node)
            node = node.args[0]
        if (up := self.upsampling(node)) is not None:
            return up, None, True, [*up.nodes, *between[::-1]]
        if node.op != "call_function" or node.target not in _CAT_FUNCTIONS or len(self.data_users(node)) != 1:
            return None
        tensors, dim = _arg(node, 0, "tensors"), _arg(node, 1, "dim", 0)
        if not isinstance(tensors, (list, tuple)) or len(tensors) != 2 or dim not in (1, -3):
            self.report.add_left_alone((f"cat before {self.name(conv_node)}",
                                        "not two tensors along the channels (fused: cat([a, b], 1))"))
            return None
        branches = [self.up_branch(t) for t in tensors]
        # The up-sampled (or padded) side is "up"; with neither, the first tensor.
        index = next((i for i, b in enumerate(branches) if b.up_mode is not None), None)
        index = next((i for i, b in enumerate(branches) if b.pad is not None), 0) if index is None else index
        up = branches[index]
        return up, tensors[1 - index], index == 0, [*up.nodes, node, *between[::-1]]

    def replace(self, nodes, target, args, kwargs):
        """Insert target(*args, **kwargs) before the last node, route the uses of nodes[-1] to it (shape reads
        of the others to stand-ins), erase nodes."""
        with self.graph.inserting_before(nodes[-1]):
            new = self.graph.call_function(target, args, kwargs)
        nodes[-1].replace_all_uses_with(new)
        for node in nodes[:-1]:
            if any(u not in nodes for u in node.users):  # reads of its shape: the op run on meta tensors instead
                with self.graph.inserting_after(node):
                    op = self.attr(node, node) if node.op == "call_module" else node.target.__name__
                    stand_in = self.graph.call_function(_on_meta, (op, *node.args), node.kwargs)
                node.replace_all_uses_with(stand_in, delete_user_cb=lambda user: user not in nodes)
        for node in reversed(nodes):
            self.graph.erase_node(node)
        return new

    def attr(self, node, before):
        if node is None:
            return None
        with self.graph.inserting_before(before):
            return self.graph.get_attr(node.target)

    def run(self):
        """Rewrite every pattern; True when the graph changed."""
        changed = False
        for conv_node in [n for n in self.graph.nodes if self.conv(n) is not None]:
            if self.conv(conv_node)[1]:  # unsupported configuration: the module level reports it
                continue
            nodes, bn_node, (activation, slope) = self.chain(conv_node)
            first = nodes[0]
            concat = self.concatenation(conv_node)
            pool = self.pool(nodes[-1]) if concat is None else None
            if bn_node is None and activation is None and pool is None and concat is None:
                continue
            conv_attr, bn_attr = self.spec(conv_node, first), self.spec(bn_node, first)
            act = dict(activation=activation, negative_slope=slope, defer=False)
            parts = [self.name(n) for n in nodes]
            suffix = "+bn" * (bn_node is not None) + "+act" * (activation is not None)
            if concat is not None:
                up, skip, up_first, extra = concat
                new = self.replace(extra + nodes, _fused_concat_conv, (up.source, skip, conv_attr, bn_attr), dict(
                    act, up_first=up_first, up_mode=up.up_mode, align_corners=up.align_corners, size=up.size,
                    pad=up.pad, pad_mode=up.pad_mode, interpolate=up.interpolate,
                    upsampler=self.attr(up.upsampler, first)))
                pattern = "+".join(["upsample"] * (up.up_mode is not None) + ["pad"] * (up.pad is not None) +
                                   ["cat"] * (skip is not None))
                self.report.add_fusion(pattern + "+conv" + suffix, "concat_conv2d",
                                       tuple(self.name(n) for n in extra) + tuple(parts))
            elif pool is not None:
                new = self.replace(nodes, _fused_conv_pool, (first.args[0], conv_attr, bn_attr), act)
                with self.graph.inserting_after(new):
                    skip_out = self.graph.call_function(operator.getitem, (new, 0))
                with self.graph.inserting_after(skip_out):
                    pooled = self.graph.call_function(operator.getitem, (new, 1))
                new.replace_all_uses_with(skip_out, delete_user_cb=lambda user: user not in (skip_out, pooled))
                pool.replace_all_uses_with(pooled)
                self.graph.erase_node(pool)
                self.report.add_fusion("conv" + suffix + "+maxpool", "conv2d_pool", tuple(parts) + (self.name(pool),))
            else:
                new = self.replace(nodes, _fused_conv, (first.args[0], conv_attr, bn_attr), act)
                self.report.add_fusion("conv" + suffix, "conv2d", tuple(parts))
            changed = True
        if self.functional:
            changed = self.swap_single_layers() or changed
        self.defer_norms()
        self.report_leftovers()
        self.graph.lint()
        return changed

    def reads_normalized(self, user, value):
        """Whether user takes value only as a fused layer's data input (so a pending batch norm may reach it)."""
        if user.op == "call_function" and user.target in _DATA_INPUTS:
            data = _DATA_INPUTS[user.target]
            return value in user.args[:data] and value not in user.args[data:]
        if user.args != (value,) or user.kwargs:
            return False
        if self.module(user, fnn.Conv2d, fnn.MaxPool2d, fnn.ConvTranspose2d) is not None:
            return True
        m = self.module(user, *_SWAPS)  # swapped for its fused class below when supported
        return m is not None and _SWAPS[type(m)][1](m) is None

    def defer_norms(self):
        for node in self.graph.nodes:
            if node.op != "call_function" or node.target not in _FUSED_OPS or \
                    node.args[_FUSED_OPS[node.target] + 1] is None:  # no batch norm
                continue
            outputs = [u for u in node.users if u.args[1] == 0] if node.target is _fused_conv_pool else [node]
            readers = [(u, out) for out in outputs for u in out.users]
            if readers and all(self.reads_normalized(u, out) for u, out in readers):
                node.kwargs = dict(node.kwargs, defer=True)

    def report_leftovers(self):
        for node in self.graph.nodes:
            if node.op == "call_function" and node.target in (*_CAT_FUNCTIONS, F.interpolate, *_UPSAMPLE_CALLS):
                what = "cat" if node.target in _CAT_FUNCTIONS else "interpolate"
                where = self.name(node) if node.meta.get("nn_module_stack") else \
                    f"{what} ({self.prefix or 'model'}.{node.name})"
                if self.functional and any(u.op == "output" for u in node.users):
                    why = ("its result leaves this torch.compile graph: the code that reads it runs past a graph "
                           "break, in another graph")
                else:
                    why = "not followed by a supported conv (fused: [upsample x2] [+ pad] + cat([a, b], 1) + conv)"
                self.report.add_left_alone((where, why))
            elif self.module(node, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d) is not None:
                self.report.add_left_alone((self.name(node), "not an x2 nearest/bilinear up-sampling followed by "
                                                                "cat + a supported conv"))


def _relative(path):
    """A torch.compile module path (``L['self'].convs.conv_0``) relative to the compiled frame's module."""
    return re.sub(r"^L\['self'\]\.?", "", path)
