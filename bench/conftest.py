"""Benchmarks (pytest-benchmark). On a GPU: real timings, `pytest bench/ --benchmark-json=FILE`. Without one:
a tiny smoke configuration through the Triton interpreter with benchmarking disabled, so CI keeps it working."""
import os

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_configure(config):
    if not ON_GPU:
        config.option.benchmark_disable = True
