"""Backward GEMMs with a second candidate: aten's ``convolution_backward`` (cuDNN on a GPU) beside our Triton
kernels, chosen per layer shape by timing both at the first call on a GPU (as ``@triton.autotune`` chooses a
config), so a fused layer's backward is never slower than eager's. Both read the same prepared gradient (the
activation's and the pool's backward already applied), so they compute the same thing.

``chosen()`` lists what each (role, shapes, dtype) picked, for ``fused-unet bench`` / ``profile``; ``force(name)``
runs one candidate everywhere (the tests run each on the CPU)."""
import contextlib

import torch

CANDIDATES = ("triton", "aten")
_chosen = {}
_forced = [None]


@contextlib.contextmanager
def force(name):
    """Run candidate ``name`` ("triton" or "aten") for every backward GEMM that offers it, inside this block."""
    if name not in CANDIDATES:
        raise ValueError(f"name must be one of {CANDIDATES}, got {name!r}")
    previous, _forced[0] = _forced[0], name
    try:
        yield
    finally:
        _forced[0] = previous


def chosen():
    """{"role shapes dtype": candidate} of every choice made by timing so far."""
    return dict(_chosen)


def _cuda_time(fn, repeats=3):
    """Milliseconds of ``repeats`` calls of ``fn`` after one warm-up call (which compiles / autotunes)."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def run(role, tensors, candidates, timer=_cuda_time):
    """The result of one candidate of ``candidates`` ({name: zero-argument callable}; "triton" always there): the
    forced one, else on a GPU the fastest for this role and these tensors' shapes and dtype (timed once), else
    (CPU) "triton"."""
    if _forced[0] in candidates:
        return candidates[_forced[0]]()
    if len(candidates) == 1 or tensors[0].device.type != "cuda":
        return candidates["triton"]()
    key = f"{role} {' '.join(str(tuple(t.shape)) for t in tensors)} {str(tensors[0].dtype).removeprefix('torch.')}"
    if key not in _chosen:
        times = {name: timer(fn) for name, fn in candidates.items()}
        _chosen[key] = min(times, key=times.get)
    return candidates[_chosen[key]]()
