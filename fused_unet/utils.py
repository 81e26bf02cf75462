"""Small measurement helpers."""
import torch


def saved_activation_bytes(model, x, *, autocast_dtype=None):
    """Bytes of the tensors autograd saves for backward in one forward of ``model(x)``: each storage counted
    once, parameters excluded (measured with ``torch.autograd.graph.saved_tensors_hooks``)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    enabled = autocast_dtype is not None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(x.device.type, dtype=autocast_dtype, enabled=enabled):
        out = model(x)
    del out
    return sum(storages.values())
