"""Put the fused kernels into a U-Net you already have: ``swap(model)``.

Two levels, both in place; parameters, buffers and state_dict keys do not change.

1. Dataflow fusions, wherever ``torch.fx`` traces a module's forward and the trace provably computes what the
   forward does (both run on a probe input, in training and eval mode, and must agree: a trace can silently take
   one branch of Python that looks at types, shapes or ``self.training``), else wherever ``torch.compile`` can
   capture it (guarded graphs, rewritten by the same patterns, run without Inductor):
   conv (+ BatchNorm2d) (+ ReLU / LeakyReLU) -> one fused conv; such a chain followed by a 2x2 max-pool -> the
   conv+pool kernel; up-sampling (x2 ``F.interpolate`` / ``nn.Upsample``, nearest or bilinear, or a tensor
   already at the skip's size, e.g. a transposed conv's output) (+ ``F.pad`` to the skip's size) + ``torch.cat``
   + conv chain -> the concatenating conv. A batch-normalised output read only by fused layers stays pending
   (normalised while they read it). The rewritten forward is bound to the module instance; each fused call
   checks its run-time conditions (sizes, dtypes) and otherwise runs the original ops.
2. Module level: every remaining supported ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.ConvTranspose2d`` becomes its
   ``fused_unet.nn`` subclass, and a ReLU / LeakyReLU after a conv in an ``nn.Sequential`` that was not traced
   folds into it.
A module neither can capture keeps its forward; its children are tried one by one. The report says what was
fused, what was left alone and why."""
import inspect
import operator
import re
import types
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree

from fused_unet import eager, functional
from fused_unet import nn as fnn

# Exact torch classes and their drop-in fused subclasses (subclasses of these torch classes are left alone:
# their forward may do something else), with the check of what the kernels cover.
_SWAPS = {nn.Conv2d: (fnn.Conv2d, fnn.conv2d_config_unsupported),
          nn.MaxPool2d: (fnn.MaxPool2d, fnn.max_pool2d_config_unsupported),
          nn.ConvTranspose2d: (fnn.ConvTranspose2d, fnn.conv_transpose2d_config_unsupported)}
# Probe images tried, smallest first, when no example input is given (many encoders need multiples of 32).
_PROBE_SIZES = (64, 128, 256)
_PROBE_BATCH = 2
# The profiler label of the shape-only stand-ins (ops on meta tensors, no data).
SHAPE_ONLY = "fused_unet.swap: shape only (meta tensors)"
# torch.compile captures per function (see _capture_with_compile).
_RECOMPILE_LIMIT = 64


@dataclass
class Fusion:
    pattern: str  # e.g. "conv+bn+act+maxpool"
    op: str  # the fused op that runs it
    parts: tuple  # the modules / functions it replaced, in graph order


@dataclass
class SwapReport:
    """What ``swap`` did: ``fused`` patterns, ``traced`` modules (torch.fx, or "[torch.compile]"), ``untraced``
    (module, why torch.fx could not), ``swapped`` module counts, ``left_alone`` (what, reason). ``print(report)``
    gives a table."""
    model: str
    fused: list = field(default_factory=list)
    traced: list = field(default_factory=list)
    untraced: list = field(default_factory=list)
    swapped: dict = field(default_factory=lambda: {"Conv2d": 0, "MaxPool2d": 0, "ConvTranspose2d": 0,
                                                    "ReLU fused": 0})
    left_alone: list = field(default_factory=list)

    def add_fusion(self, pattern, op, parts):
        fusion = Fusion(pattern, op, tuple(parts))
        if fusion not in self.fused:  # a torch.compile capture meets the same graph again in each mode
            self.fused.append(fusion)

    def add_left_alone(self, entry):
        if entry not in self.left_alone:
            self.left_alone.append(entry)

    def counts(self):
        """Number of fused patterns per pattern name."""
        out = {}
        for fusion in self.fused:
            out[fusion.pattern] = out.get(fusion.pattern, 0) + 1
        return out

    def table(self):
        lines = [f"fused_unet.swap report for {self.model}"]
        lines.append("graphs rewritten (torch.fx; [torch.compile] where fx could not): "
                     f"{', '.join(t or '(whole model)' for t in self.traced) or 'none'}")
        lines += [f"  not traced: {name or '(whole model)'}: {why}" for name, why in self.untraced]
        lines.append(f"fused patterns: {len(self.fused)}")
        width = max([len(f.pattern) for f in self.fused] + [7])
        lines += [f"  {f.pattern:<{width}}  -> {f.op:<22} {', '.join(f.parts)}" for f in self.fused]
        lines.append("fused_unet.nn classes swapped in: " + ", ".join(f"{k} {v}" for k, v in self.swapped.items()))
        lines.append(f"left alone: {len(self.left_alone)}")
        lines += [f"  {what}: {why}" for what, why in self.left_alone]
        return "\n".join(lines)

    __str__ = table


def swap(model, example_input=None, fuse=True):
    """Swap the fused kernels into ``model`` (in place) and return ``(model, report)``.

    ``example_input``: a tensor (or tuple of forward arguments) the model accepts, used to check each torch.fx
    trace against the model's own forward; without it a random batch of 2 images at 64 / 128 / 256 pixels with
    the first conv's input channels is tried. ``fuse=False``: module level only."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    report = SwapReport(type(model).__name__)
    roots = {"fx": [], "compile": []}
    if fuse and any(type(m) in _SWAPS for m in model.modules()):  # else nothing to fuse (a fused_unet model, say)
        inputs, why = _probe(model, example_input)
        if inputs is None:
            report.untraced.append(("", why))
        else:
            _fuse_tree(model, "", inputs, report, roots)
    _swap_classes(model, report, roots)
    return model, report


def swap_modules(model, fuse_relu=True):
    """Module level only: every supported ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.ConvTranspose2d`` becomes its
    ``fused_unet.nn`` subclass, and with ``fuse_relu`` a ReLU / LeakyReLU (slope >= 0) right after a conv in an
    ``nn.Sequential`` folds into the conv (the activation module becomes ``nn.Identity``). Returns ``model`` and
    the counts; ``swap`` does this plus the dataflow fusions."""
    report = SwapReport(type(model).__name__)
    _swap_classes(model, report, {"fx": [] if fuse_relu else [model], "compile": []})
    return model, report.swapped


# ---------------------------------------------------------------------------------------------- module level

# Volumetric layers (MONAI's default spatial_dims=3, nnU-Net's 3D plans): named in the report, never swapped.
_THREE_D = (nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.AvgPool3d, nn.BatchNorm3d, nn.InstanceNorm3d)


def _swap_classes(model, report, roots):
    """The module level, but not inside modules torch.compile captured (their graphs already run the fused ops;
    a new class would make torch.compile capture them again, unfused); ReLU folding only where no graph rewrite
    ran."""
    compiled = {id(m) for root in roots["compile"] for m in root.modules()}
    rewritten = compiled | {id(m) for root in roots["fx"] for m in root.modules()}
    for name, module in model.named_modules():
        if isinstance(module, _THREE_D):
            report.add_left_alone((f"{name or 'model'} ({type(module).__name__})", "3D: not supported yet"))
            continue
        entry = _SWAPS.get(type(module))
        if entry is None:
            continue
        fused, unsupported = entry
        why = unsupported(module)
        if why:
            report.add_left_alone((f"{name or 'model'} ({type(module).__name__})", why))
            continue
        if id(module) in compiled:
            continue
        module.__class__ = fused  # the fused class only adds behaviour, so the instance keeps all its state
        if fused is not fnn.MaxPool2d:
            fused._adopt(module)
        report.swapped[fused.__name__] += 1
    for module in model.modules():
        if isinstance(module, nn.Sequential) and id(module) not in rewritten:
            report.swapped["ReLU fused"] += _fuse_relus(module)


def _fuse_relus(seq):
    fused = 0
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        conv, act = seq._modules[first], seq._modules[second]
        if not isinstance(conv, (fnn.Conv2d, fnn.ConvTranspose2d)) or conv.activation is not None:
            continue
        activation = _module_activation(act)
        if activation is None:
            continue
        conv.activation, conv.negative_slope = activation
        seq._modules[second] = nn.Identity()
        fused += 1
    return fused


def _module_activation(module):
    if type(module) is nn.ReLU:
        return "relu", 0.01
    if type(module) is nn.LeakyReLU and module.negative_slope >= 0:
        return "leaky_relu", float(module.negative_slope)
    return None


# ---------------------------------------------------------------------------------------- tracing and checks

class _Tracer(torch.fx.Tracer):
    """torch.nn's own modules and fused_unet's stay calls (their parameters are then the ones fused)."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, fnn._FusedMixin) or super().is_leaf_module(m, qualname)


def _probe(model, example_input):
    """The forward arguments of every submodule on one probe run: {module: (args, kwargs)}, or (None, why)."""
    if example_input is not None:
        candidates = [example_input if isinstance(example_input, tuple) else (example_input,)]
    else:
        conv = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))), None)
        if conv is None:
            return None, "no Conv2d to infer a probe input from; pass example_input"
        param = next(model.parameters())
        candidates = [(torch.randn(_PROBE_BATCH, conv.in_channels, s, s, device=param.device, dtype=param.dtype),)
                      for s in _PROBE_SIZES]
    errors = []
    for args in candidates:
        seen = {}

        def record(module, module_args, module_kwargs):
            if module not in seen:
                seen[module] = _pytree.tree_map(_clone, (module_args, module_kwargs))

        handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules()]
        try:
            _run(model, model, args, {}, training=model.training)
            return seen, None
        except Exception as error:  # the model rejects this probe size: try the next one
            if example_input is not None:
                raise ValueError(f"example_input: the model's forward raised {type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:200]}") from error
            errors.append(f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
        finally:
            for handle in handles:
                handle.remove()
    return None, "the model did not run on the probe input (" + "; ".join(errors) + "); pass example_input"


def _clone(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _run(module, fn, args, kwargs, training, grad=False):
    """fn(*args) with module in the given mode (and grad mode), leaving the module's buffers, modes and the random
    generators as they were."""
    modes = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.clone()) for b in module.buffers()]
    module.train(training)
    try:
        with torch.set_grad_enabled(grad), torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            torch.manual_seed(0)
            return fn(*_pytree.tree_map(_clone, args), **_pytree.tree_map(_clone, kwargs))
    finally:
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _same(a, b):
    leaves_a, spec_a = _pytree.tree_flatten(a)
    leaves_b, spec_b = _pytree.tree_flatten(b)
    if spec_a != spec_b:
        return False
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            # Same ops on the same data; a GPU may still pick another algorithm for one of them.
            if x.shape != y.shape or x.dtype != y.dtype or not torch.allclose(
                    x, y, rtol=1e-3, atol=1e-5 * float(x.abs().max()) if x.numel() else 0.0, equal_nan=True):
                return False
        elif x != y:
            return False
    return True


def _trace(module, inputs):
    """(graph, None) when torch.fx traces module's forward faithfully, else (None, why)."""
    try:
        graph = _Tracer().trace(module)
    except Exception as error:
        return None, f"torch.fx cannot trace its forward ({type(error).__name__}: {str(error).splitlines()[0][:100]})"
    traced = torch.fx.GraphModule(module, graph)
    args, kwargs = inputs
    for training in (False, True):
        try:
            expected = _run(module, module.forward, args, kwargs, training)
        except Exception as error:
            return None, (f"its forward fails on the probe input in {'training' if training else 'eval'} mode "
                          f"({type(error).__name__}), so a trace cannot be checked")
        try:
            got = _run(module, traced.forward, args, kwargs, training)
        except Exception as error:
            return None, (f"its torch.fx trace fails where the forward runs ({type(error).__name__}); the forward "
                          "has Python that depends on types or shapes")
        if not _same(expected, got):
            return None, (f"its torch.fx trace differs from the forward in {'training' if training else 'eval'} "
                          "mode (Python that depends on types, shapes or self.training)")
    return graph, None


def _fuse_tree(module, name, inputs, report, roots):
    if module not in inputs or not any(type(m) in _SWAPS for m in module.modules()):
        return  # not called on the probe, or no torch.nn layer to fuse
    if "forward" in module.__dict__:
        report.untraced.append((name, "its forward was already replaced (swapped before?)"))
        return
    graph, why = _trace(module, inputs[module])
    if graph is None:
        report.untraced.append((name, why))
        if _capture_with_compile(module, name, inputs[module], report):
            roots["compile"].append(module)
            return
        for child_name, child in module.named_children():
            if not _Tracer().is_leaf_module(child, ""):
                _fuse_tree(child, f"{name}.{child_name}" if name else child_name, inputs, report, roots)
        return
    fused_before = list(report.fused)
    try:
        rewritten = _Rewriter(module, graph, name, report).run()
    except Exception as error:  # a graph our patterns misread: the module stays as it is, and the report says why
        report.fused[:] = fused_before
        report.untraced.append((name, f"swap could not rewrite its torch.fx graph ({type(error).__name__}: "
                                      f"{str(error).splitlines()[0][:100] if str(error) else ''}); left unfused"))
        return
    report.traced.append(name)
    roots["fx"].append(module)
    if rewritten:
        code = graph.python_code(root_module="self")
        namespace = dict(code.globals)
        exec(compile(code.src, f"<fused_unet.swap {type(module).__name__}>", "exec"), namespace)
        module.forward = types.MethodType(namespace["forward"], module)  # a method: copies bind it to themselves


def _capture_with_compile(module, name, inputs, report):
    """The forward torch.fx could not trace, captured by torch.compile instead: its graphs (one per guard set:
    shapes, training mode, the branches Python took) are rewritten by the same patterns and run as they are
    (no Inductor); what breaks the graph runs in Python between them. Captured on the probe input in both modes,
    so the report is complete; False (module level only) when torch.compile fails on it."""
    rewrote = []

    def fusing_backend(gm, example_inputs):
        frame = _frame(module, gm, example_inputs)
        # A graph of a submodule's forward (past a graph break) serves every instance of its class: named by it.
        base = name if not frame else type(module.get_submodule(frame)).__name__
        if _Rewriter(gm, gm.graph, base, report, functional=True).run():
            gm.recompile()
            rewrote.append(gm)
        return gm.forward

    compiled = torch.compile(type(module).forward, backend=fusing_backend)

    def forward(self, *args, **kwargs):
        # Each instance of a module class, each mode and grad mode is a graph of its own: more than torch.compile's
        # default 8 per function in a U-Net, which would then run the rest unfused.
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            return compiled(self, *args, **kwargs)

    original = module.forward
    module.forward = types.MethodType(forward, module)  # a method: copy.deepcopy binds it to the copy
    args, kwargs = inputs
    # Training and eval with autograd, and eval under no_grad (inference): each a graph set of its own, captured
    # now so that no first call of the user's recompiles.
    for training, grad in ((False, True), (True, True), (False, False)):
        try:
            _run(module, module.forward, args, kwargs, training, grad=grad)
        except Exception as error:
            try:
                _run(module, original, args, kwargs, training)
            except Exception:
                continue  # the model itself fails in this mode on the probe: captured at its first real call
            del module.forward
            report.untraced.append((name, f"torch.compile could not capture it either ({type(error).__name__}: "
                                          f"{str(error).splitlines()[0][:100]})"))
            return False
    if not rewrote:  # nothing to fuse in its graphs: no reason to run it under torch.compile
        del module.forward
        return False
    report.traced.append(f"{name or '(whole model)'} [torch.compile]")
    return True


def _relative(path):
    """A torch.compile module path (``L['self'].convs.conv_0``) relative to the compiled frame's module."""
    return re.sub(r"^L\['self'\]\.?", "", path)


def _frame(module, gm, example_inputs):
    """The path (in module) of the module whose forward a torch.compile graph is, found from a parameter it reads:
    its full name ends with the path the graph records relative to the frame."""
    names = {id(t): n for n, t in [*module.named_parameters(), *module.named_buffers()]}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs):
        owner = names.get(id(value), "").rpartition(".")[0]
        for user in node.users if id(value) in names else ():
            stack = user.meta.get("nn_module_stack")
            relative = _relative(list(stack.values())[-1][0]) if stack else None
            if relative and (owner == relative or owner.endswith("." + relative)):
                return owner[:len(owner) - len(relative)].rstrip(".")
    return ""


# ---------------------------------------------------------------------------------------------- graph rewrite

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
_CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate)
_NORM_OR_ACT = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Sigmoid, nn.Tanh, nn.ReLU6, nn.LeakyReLU, nn.ReLU)
_REPLACED_FUNCTIONS = {f.__name__: f for f in (F.pad, F.interpolate, *_CAT_FUNCTIONS, torch._C._nn.upsample_nearest2d,
                                                 torch._C._nn.upsample_bilinear2d)}
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


# ------------------------------------------------------------------------------------------ fused calls (run)

def _on_meta(op, *args, **kwargs):
    """op's output on meta tensors (op: a module, or the name of a function a pattern replaces): the shape of a
    replaced node for code that reads only its shape."""
    def meta(value):
        value = value.y if isinstance(value, functional.Normalized) else value
        return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value

    op = _REPLACED_FUNCTIONS[op] if isinstance(op, str) else op
    with torch.profiler.record_function(SHAPE_ONLY):
        return op(*_pytree.tree_map(meta, args, is_leaf=lambda v: isinstance(v, functional.Normalized)),
                  **_pytree.tree_map(meta, kwargs))


class _ConvArgs(NamedTuple):
    """A stride-1 'same' conv of a torch.compile graph: what the fused calls read of an nn.Conv2d."""
    weight: torch.Tensor
    bias: Optional[torch.Tensor]

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=self.weight.shape[-1] // 2)


class _BatchNormArgs(NamedTuple):
    """F.batch_norm's arguments in a torch.compile graph: what the fused calls read of an nn.BatchNorm2d. The graph
    itself counts num_batches_tracked and turns a momentum of None into this call's factor."""
    running_mean: Optional[torch.Tensor]
    running_var: Optional[torch.Tensor]
    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    training: bool
    momentum: float
    eps: float
    num_batches_tracked = None

    @property
    def track_running_stats(self):
        return self.running_mean is not None

    @property
    def affine(self):
        return self.weight is not None

    def forward(self, y):
        return F.batch_norm(y, *self[:4], self.training, self.momentum, self.eps)


def _eager_chain(x, conv, bn, activation, negative_slope):
    """The original ops of a conv chain, in PyTorch."""
    x = functional.materialize(x)
    y = nn.Conv2d.forward(conv, x) if isinstance(conv, nn.Conv2d) else conv.forward(x)
    if bn is not None:
        y = nn.BatchNorm2d.forward(bn, y) if isinstance(bn, nn.BatchNorm2d) else bn.forward(y)
    return eager.activate(y, activation, negative_slope)


def _fused_conv_transpose(x, weight, bias):
    if fnn.input_unsupported(x):
        return F.conv_transpose2d(functional.materialize(x), weight, bias, stride=2)
    return functional.conv_transpose2x2(x, weight, bias)


def _fused_max_pool(x):
    if fnn.input_unsupported(x) or min(x.shape[2:]) < 2:
        return F.max_pool2d(functional.materialize(x), 2)
    return functional.max_pool2x2(x)


def _fused_conv(x, conv, bn, activation, negative_slope, defer):
    if fnn.input_unsupported(x):
        return _eager_chain(x, conv, bn, activation, negative_slope)
    return fnn.conv_bn_act(x, conv, bn, activation, negative_slope, defer)


def _fused_conv_pool(x, conv, bn, activation, negative_slope, defer):
    if fnn.input_unsupported(x) or min(x.shape[2:]) < 2:
        y = _eager_chain(x, conv, bn, activation, negative_slope)
        return y, F.max_pool2d(y, 2)
    return fnn.conv_bn_act_pool(x, conv, bn, activation, negative_slope, defer)


def _centred_pad(up_size, skip_size):
    dh, dw = skip_size[0] - up_size[0], skip_size[1] - up_size[1]
    return [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2]


def _fused_concat_conv(up, skip, conv, bn, activation, negative_slope, defer, up_first, up_mode, align_corners, size,
                       pad, pad_mode, interpolate, upsampler):
    """The concatenating conv where the run-time sizes are those the kernel handles (an x2 up-sampling, a centred
    zero pad to the skip's size), else the original ops."""
    fits = not (fnn.input_unsupported(up, "up") or skip is not None and fnn.input_unsupported(skip, "skip"))
    if fits:
        factor = 1 if up_mode is None else 2
        up_size = (factor * up.shape[2], factor * up.shape[3])
        if size is not None:
            fits = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
            fits = tuple(int(s) for s in fits) == up_size
        skip_size = tuple(skip.shape[2:]) if skip is not None else up_size
        if fits and pad is None:
            fits = up_size == skip_size
        elif fits:
            amounts = [int(p) for p in pad]
            fits = min(skip_size[0] - up_size[0], skip_size[1] - up_size[1]) >= 0 and \
                amounts == _centred_pad(up_size, skip_size) and (pad_mode == "constant" or not any(amounts))
    if fits:
        return fnn.concat_conv_bn_act(up, skip, conv, bn, activation, negative_slope, defer, up_mode=up_mode,
                                      align_corners=align_corners, up_first=up_first)
    up, skip = functional.materialize(up), functional.materialize(skip)
    if upsampler is not None:
        up = upsampler(up)
    elif up_mode is not None:
        up = F.interpolate(up, **interpolate)
    if pad is not None:
        up = F.pad(up, pad, pad_mode)
    if skip is not None:
        up = torch.cat([up, skip] if up_first else [skip, up], 1)
    return _eager_chain(up, conv, bn, activation, negative_slope)


# Fused op -> how many leading arguments are data inputs (which may be pending batch norms).
_FUSED_OPS = {_fused_conv: 1, _fused_conv_pool: 1, _fused_concat_conv: 2}
# Every fused call and its leading data arguments (a pending batch norm may reach them); the last two have no
# batch norm of their own.
_DATA_INPUTS = {**_FUSED_OPS, _fused_conv_transpose: 1, _fused_max_pool: 1}
