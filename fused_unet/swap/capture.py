"""Capture of a forward for the patterns: a torch.fx trace checked against the forward on a probe input, else a
torch.compile capture whose guarded graphs are rewritten, else the children one by one."""
import types

import torch
import torch.fx
from torch import nn
from torch.utils import _pytree

from fused_unet import nn as fnn
from fused_unet.utils import error_summary
from fused_unet.swap.module_level import _SWAPS
from fused_unet.swap.graph import relative
from fused_unet.swap.rewrite import rewrite

# Probe images tried, smallest first, when no example input is given (many encoders need multiples of 32).
_PROBE_SIZES = (64, 128, 256)
_PROBE_BATCH = 2
# torch.compile captures per function (see _capture_with_compile).
_RECOMPILE_LIMIT = 64


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
                raise ValueError(f"example_input: the model's forward raised {error_summary(error)}") from error
            errors.append(error_summary(error, 120))
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
        return None, f"torch.fx cannot trace its forward ({error_summary(error, 100)})"
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
        rewritten = rewrite(module, graph, name, report)
    except Exception as error:  # a graph our patterns misread: the module stays as it is, and the report says why
        report.fused[:] = fused_before
        report.untraced.append((name, f"swap could not rewrite its torch.fx graph ({error_summary(error, 100)}); "
                                      "left unfused"))
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
        if rewrite(gm, gm.graph, base, report, functional=True):
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
            report.untraced.append((name, f"torch.compile could not capture it either ({error_summary(error, 100)})"))
            return False
    if not rewrote:  # nothing to fuse in its graphs: no reason to run it under torch.compile
        del module.forward
        return False
    report.traced.append(f"{name or '(whole model)'} [torch.compile]")
    return True



def _frame(module, gm, example_inputs):
    """The path (in module) of the module whose forward a torch.compile graph is, found from a parameter it reads:
    its full name ends with the path the graph records relative to the frame."""
    names = {id(t): n for n, t in [*module.named_parameters(), *module.named_buffers()]}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs):
        owner = names.get(id(value), "").rpartition(".")[0]
        for user in node.users if id(value) in names else ():
            stack = user.meta.get("nn_module_stack")
            path = relative(list(stack.values())[-1][0]) if stack else None
            if path and (owner == path or owner.endswith("." + path)):
                return owner[:len(owner) - len(path)].rstrip(".")
    return ""
