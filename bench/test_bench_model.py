"""Whole-model timings: inference forward and a training step (forward + backward + optimizer), per contender."""
import pytest
import torch

from bench.conftest import FULL, ON_GPU
from fused_unet import benchmark as fb, perf

DEVICE = "cuda" if ON_GPU else "cpu"

SETTINGS = (fb.Settings(base_channels=64, depth=4, size=512, batch_sizes=(8,), dtype="bf16") if FULL
            else fb.Settings(base_channels=4, depth=2, size=16, batch_sizes=(1,), dtype="bf16" if ON_GPU else "fp32"))
CONTENDERS = ["fused", "eager", "eager-cl-amp"] + (["compile", "compile-max-autotune", "fused-compile"] if FULL else [])


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("contender", CONTENDERS)
def test_model_step(benchmark, contender, mode):
    benchmark.group = f"unet:{mode}"
    s = fb.Settings(**{**SETTINGS.__dict__, "mode": mode})
    c = fb.build_contender(contender, s, DEVICE)
    x, y = fb.make_inputs(s, s.batch_sizes[0], DEVICE, c.channels_last)
    step = fb.make_step(c, s, x, y)
    if FULL:
        step()  # compile / autotune outside the timings
        benchmark.extra_info.update(cuda_event_ms=perf.cuda_time_ms(step), gpu=torch.cuda.get_device_name(),
                                    settings=s.__dict__ | {"batch_sizes": list(s.batch_sizes)})

    def call():
        step()
        if ON_GPU:
            torch.cuda.synchronize()

    benchmark.pedantic(call, rounds=10 if FULL else 1, warmup_rounds=3 if FULL else 0)
