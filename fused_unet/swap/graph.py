"""One view of a captured graph for the patterns, whichever dialect captured it: torch.fx calls modules
(``call_module``), torch.compile calls torch functions with the module's tensors as arguments (``call_function``).
``SwapGraph`` answers the patterns' questions (is this node a supported conv, its batch norm, an activation, a 2x2
max-pool, an x2 up-sampling? what is it called in the report?) for both, and does their surgery."""
import inspect
import re
import types
from typing import NamedTuple, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fused_unet import nn as fnn
from fused_unet.swap.module_level import _module_activation
from fused_unet.swap.runtime import _CAT_FUNCTIONS, NORM_CALLS, _ConvArgs, _on_meta

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
# Module types whose calls a torch.compile graph names by the module's path.
_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.MaxPool2d, nn.Upsample,
           nn.Dropout, nn.Dropout2d, nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Identity)
_INTERP_PARAMS = list(inspect.signature(F.interpolate).parameters)
UPSAMPLE_CALLS = {torch._C._nn.upsample_nearest2d: "nearest", torch._C._nn.upsample_bilinear2d: "bilinear"}
UPSAMPLE_MODULES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)


class PReLUWeight(NamedTuple):
    """The weight of the PReLU module at ``target``, as a fused call's negative_slope: ``SwapGraph.replace`` reads
    it with a get_attr, so the fused call takes the parameter itself (trained, saved) on every call."""
    target: str


class UpBranch(NamedTuple):
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


def example(node, root):
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


def arg(node, index, name, default=None):
    """A call's argument, given by position or by keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def relative(path):
    """A torch.compile module path (``L['self'].convs.conv_0``) relative to the compiled frame's module."""
    return re.sub(r"^L\['self'\]\.?", "", path)


class SwapGraph:
    """One captured graph of ``root`` (named ``prefix`` in the report) and what swap reports about it.
    ``functional``: a torch.compile graph (torch-level calls, no modules)."""

    def __init__(self, root, graph, prefix, report, functional=False):
        self.root, self.graph, self.prefix, self.report, self.functional = root, graph, prefix, report, functional

    # ---- questions, both dialects ---------------------------------------------------------------------------
    def module(self, node, *types_):
        """The module a call_module node calls when its type is one of ``types_``, else None."""
        if node.op == "call_module":
            m = self.root.get_submodule(node.target)
            if type(m) in types_:
                return m
        return None

    def name(self, node):
        """The node's name in the report: its module's path, or the function and the module it was called in."""
        if node.op == "call_module":
            return f"{self.prefix}.{node.target}" if self.prefix else node.target
        function = getattr(node.target, "__name__", str(node.target))
        stack = node.meta.get("nn_module_stack")  # torch.compile's graphs: the module each call came from
        if not stack:
            return f"{function} ({self.prefix or 'model'})" if self.functional else function
        path, kind = list(stack.values())[-1]
        path = ".".join(p for p in (self.prefix, relative(path)) if p)
        return path if isinstance(kind, type) and issubclass(kind, _LAYERS) else f"{function} ({path or 'model'})"

    def _conv_config(self, node):
        """(out_channels, the nn.Conv2d or a stand-in with its settings) of a conv node (an nn.Conv2d call or
        torch.conv2d), else None."""
        m = self.module(node, nn.Conv2d)
        if m is not None:
            return m.out_channels, m
        if node.op != "call_function" or node.target is not torch.conv2d:
            return None
        shape = self.weight_shape(node)
        if not shape:
            return None
        pair = nn.modules.utils._pair
        padding = arg(node, 4, "padding", 0)
        return shape[0], types.SimpleNamespace(
            kernel_size=tuple(shape[2:]), stride=pair(arg(node, 3, "stride", 1)),
            dilation=pair(arg(node, 5, "dilation", 1)), groups=arg(node, 6, "groups", 1),
            padding=padding if isinstance(padding, str) else pair(padding), padding_mode="zeros")

    def conv(self, node, strided=True):
        """(out_channels, why unsupported or None) of a conv node (an nn.Conv2d call or torch.conv2d), else None.
        ``strided`` False: the conv must also be stride 1 with 'same' padding (to fuse a pool or a concatenation)."""
        found = self._conv_config(node)
        return found and (found[0], fnn.conv2d_config_unsupported(found[1], strided))

    def conv_transpose(self, node):
        """(stride, padding, output_padding) of a torch.conv_transpose2d call the kernels cover
        (fnn.conv_transpose2d_config_unsupported), else None."""
        if node.op != "call_function" or node.target is not torch.conv_transpose2d:
            return None
        shape = self.weight_shape(node)
        if not shape:
            return None
        pair = nn.modules.utils._pair
        config = types.SimpleNamespace(
            kernel_size=tuple(shape[2:]), stride=pair(arg(node, 3, "stride", 1)),
            padding=pair(arg(node, 4, "padding", 0)), output_padding=pair(arg(node, 5, "output_padding", 0)),
            groups=arg(node, 6, "groups", 1), dilation=pair(arg(node, 7, "dilation", 1)), padding_mode="zeros")
        if fnn.conv_transpose2d_config_unsupported(config):
            return None
        return config.stride[0], config.padding[0], config.output_padding[0]

    def norm(self, node, channels):
        """Whether node is a norm the kernels fuse over ``channels`` channels: an nn.BatchNorm2d,
        nn.InstanceNorm2d or nn.GroupNorm call, or their F.batch_norm / F.instance_norm / F.group_norm."""
        m = self.module(node, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)
        if m is not None:
            return getattr(m, "num_features", getattr(m, "num_channels", None)) == channels and \
                fnn.norm_unsupported(m) is None
        if node.op != "call_function" or node.target not in NORM_CALLS:
            return False
        value = example(node.args[0], self.root)
        if value is None or value.dim() != 4 or value.shape[1] != channels:
            return False
        if node.target is F.group_norm:
            groups = arg(node, 1, "num_groups")
            return isinstance(groups, int) and groups >= 1 and channels % groups == 0
        # The flag that picks the batch's statistics: F.batch_norm's training, F.instance_norm's use_input_stats.
        training = arg(node, 5, NORM_CALLS[node.target]._fields[4], False)
        return isinstance(arg(node, 6, "momentum", 0.1), float) and isinstance(training, bool)

    def standalone_norm(self, node):
        """Whether node is a norm the kernels run on any 4-D input (not only a conv's output): as ``norm``, its
        channels from its module or from the graph's example input (a module's input may still be 3-D at run time:
        the fused call checks)."""
        m = self.module(node, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)
        if m is not None:
            return fnn.norm_unsupported(m) is None
        value = example(node.args[0], self.root) if node.op == "call_function" and node.target in NORM_CALLS \
            else None
        return value is not None and value.dim() == 4 and self.norm(node, value.shape[1])

    def weight_shape(self, node):
        """The shape of a conv call's weight (its second argument); () where the graph does not say."""
        value = example(arg(node, 1, "weight"), self.root)
        return tuple(value.shape) if value is not None else ()

    def activation(self, node, after_norm=False):
        """(name, negative slope) of a ReLU / LeakyReLU (slope >= 0) node, or ``after_norm`` a SiLU / GELU / PReLU
        module (its slope a PReLUWeight) one, else None."""
        if after_norm and self.module(node, nn.PReLU) is not None:
            return "prelu", PReLUWeight(node.target)
        m = self.module(node, nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU)
        if m is not None:
            return _module_activation(m, after_norm)
        if after_norm and node.op == "call_function" and node.target is F.silu:
            return "silu", 0.01
        if after_norm and node.op == "call_function" and node.target is F.gelu:
            approximate = arg(node, 1, "approximate", "none")
            if approximate in ("none", "tanh"):
                return ("gelu_tanh" if approximate == "tanh" else "gelu"), 0.01
        if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
            return "relu", 0.01
        if node.op == "call_method" and node.target in ("relu", "relu_"):
            return "relu", 0.01
        if node.op == "call_function" and node.target is F.leaky_relu:
            slope = arg(node, 1, "negative_slope", 0.01)
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
        return node.op == "call_function" and node.target in (F.dropout, F.dropout2d) and arg(node, 1, "p", 0.5) == 0

    @staticmethod
    def data_users(node):
        """node's users but those that only read its shape (``x.size()``, ``x.shape``: the tutorials' pad)."""
        return [u for u in node.users if not (
            (u.op == "call_method" and u.target in ("size", "dim")) or
            (u.op == "call_function" and u.target is getattr and u.args[1] in ("shape", "ndim", "dtype", "device")))]

    @staticmethod
    def is_cat(node):
        return node.op == "call_function" and node.target in _CAT_FUNCTIONS

    @staticmethod
    def channel_cat(node):
        """(a, b) of a torch.cat([a, b], 1) node, else None."""
        tensors, dim = arg(node, 0, "tensors"), arg(node, 1, "dim", 0)
        return tuple(tensors) if isinstance(tensors, (list, tuple)) and len(tensors) == 2 and dim in (1, -3) else None

    @staticmethod
    def only_user(node):
        """node's one user, when it takes node as its first argument."""
        users = list(node.users)
        if len(users) == 1 and users[0].args[:1] == (node,):
            return users[0]
        return None

    def is_pool(self, node):
        """A 2x2 / stride-2 max-pool call (nn.MaxPool2d or F.max_pool2d): the one a conv's epilogue fuses."""
        return self.pool_window(node) == 2

    def pool_window(self, node):
        """2 or 3: the window of a max-pool call (nn.MaxPool2d or F.max_pool2d) the kernels cover (2x2 / stride 2,
        3x3 / stride 2 / padding 1), else None."""
        m = self.module(node, nn.MaxPool2d)
        if m is not None:
            return nn.modules.utils._pair(m.kernel_size)[0] if fnn.max_pool2d_config_unsupported(m) is None else None
        if node.op != "call_function" or node.target not in (F.max_pool2d, torch.max_pool2d):
            return None
        if arg(node, 4, "dilation", 1) not in (1, (1, 1)) or arg(node, 5, "ceil_mode", False) or \
                arg(node, 6, "return_indices", False):
            return None
        size, stride, padding = arg(node, 1, "kernel_size"), arg(node, 2, "stride"), arg(node, 3, "padding", 0)
        for window, pad in fnn.POOL_PADDING.items():
            if size in (window, (window, window), [window, window]) and stride in (None, 2, (2, 2), [2, 2], []) \
                    and padding in (pad, (pad, pad), [pad, pad]):
                return window
        return None

    def upsampling(self, node):
        """An UpBranch for an x2 nearest / bilinear up-sampling node with one user, else None."""
        if len(self.data_users(node)) != 1:
            return None
        m = self.module(node, *UPSAMPLE_MODULES)
        if m is not None:
            mode, size, scale, align, kwargs = m.mode, m.size, m.scale_factor, m.align_corners, None
        elif node.op == "call_function" and node.target is F.interpolate:
            kwargs = dict(zip(_INTERP_PARAMS[1:], node.args[1:]), **node.kwargs)
            if kwargs.get("antialias"):
                return None
            mode, size = kwargs.get("mode", "nearest"), kwargs.get("size")
            scale, align = kwargs.get("scale_factor"), kwargs.get("align_corners")
        elif node.op == "call_function" and node.target in UPSAMPLE_CALLS:
            # F.interpolate as torch.compile may inline it: (input, output_size, [align_corners,] scale_factors).
            mode = UPSAMPLE_CALLS[node.target]
            size, scale = arg(node, 1, "output_size"), arg(node, 3 if mode == "bilinear" else 2, "scale_factors")
            align = arg(node, 2, "align_corners", False) if mode == "bilinear" else None
            kwargs = dict(size=size, scale_factor=scale, mode=mode, align_corners=align)
        else:
            return None
        if mode not in ("nearest", "bilinear") or (mode == "nearest" and align):
            return None
        if size is None and scale not in (2, 2.0, (2, 2), (2.0, 2.0), [2, 2], [2.0, 2.0]):
            return None
        return UpBranch(node.args[0], mode, bool(align), size, kwargs, node if m is not None else None,
                        nodes=(node,))

    # ---- surgery ----------------------------------------------------------------------------------------------
    def spec(self, node, before):
        """What a fused call gets for a conv / batch-norm node: the module itself (get_attr), or its tensors and
        settings from a torch.compile graph."""
        if node is None:
            return None
        if node.op == "call_module":
            return self.attr(node, before)
        with self.graph.inserting_before(before):
            if node.target is torch.conv2d:
                return self.graph.call_function(_ConvArgs, (node.args[1], arg(node, 2, "bias"),
                                                            arg(node, 3, "stride", 1), arg(node, 4, "padding", 0)))
            stand_in = NORM_CALLS[node.target]
            return self.graph.call_function(stand_in, tuple(arg(node, i + 1, name, stand_in._field_defaults[name])
                                                            for i, name in enumerate(stand_in._fields)))

    def attr(self, node, before):
        """A get_attr of a call_module node's module, inserted before ``before``."""
        if node is None:
            return None
        with self.graph.inserting_before(before):
            return self.graph.get_attr(node.target)

    def replace(self, nodes, target, args, kwargs):
        """Insert target(*args, **kwargs) before the last node (a PReLUWeight read by a get_attr), route the uses of
        nodes[-1] to it (shape reads of the others to stand-ins), erase nodes."""
        with self.graph.inserting_before(nodes[-1]):
            kwargs = {k: self.graph.get_attr(f"{v.target}.weight") if isinstance(v, PReLUWeight) else v
                      for k, v in kwargs.items()}
            new = self.graph.call_function(target, args, kwargs)
        if "example_value" in nodes[-1].meta:  # the value it stands for: later patterns read its shape
            new.meta["example_value"] = nodes[-1].meta["example_value"]
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
