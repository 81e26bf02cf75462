"""Small helpers: measurement, and the one-line form of an exception for reports."""
import contextlib

import torch


def error_summary(error, limit=200):
    """``Type: first line of the message`` (cut to ``limit``) of an exception; the type alone for an empty one."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit]}" if lines else type(error).__name__


def saved_activation_bytes(model, x, *, autocast_dtype=None):
    """Bytes of the tensors autograd saves for backward in one forward of ``model(x)``: each storage counted
    once, parameters excluded (measured with ``torch.autograd.graph.saved_tensors_hooks``). Works on meta
    tensors too (model and ``x`` on the meta device): the fused layers then run shape-only, so any size can be
    measured without a GPU."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()  # its _cdata names the storage itself: views share it, meta tensors too
        if storage._cdata not in params:
            # Holding the storage (not the tensor) keeps its address from being reused while counting; packing a
            # saved output as itself would reference its own graph, a cycle that outlives the call.
            storages[storage._cdata] = storage

    def unpack(_):
        raise RuntimeError("saved_activation_bytes runs a forward only; its graph cannot be backpropagated")

    autocast = contextlib.nullcontext() if autocast_dtype is None else torch.autocast(x.device.type, autocast_dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), autocast:
        out = model(x)
    del out
    return sum(storage.nbytes() for storage in storages.values())
