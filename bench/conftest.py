"""Benchmarks (pytest-benchmark). Full sizes and real timings only on a GPU and only when bench/ is named on the
command line (`pytest bench/ --benchmark-json=FILE`). Otherwise — `pytest -q`, CI, any CPU — a tiny smoke
configuration with benchmarking disabled (through the Triton interpreter on a CPU), so the suite cannot rot."""
import os
from pathlib import Path

import torch

ON_GPU = torch.cuda.is_available()
FULL = False  # decided in pytest_configure, before the benchmark modules are imported
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"


def _names_bench(config):
    here = Path(__file__).resolve().parent
    start = Path(config.invocation_params.dir)
    paths = [(start / arg.split("::")[0]).resolve() for arg in config.invocation_params.args if not arg.startswith("-")]
    return any(path == here or here in path.parents for path in paths)


def pytest_configure(config):
    global FULL
    FULL = ON_GPU and _names_bench(config)
    if not FULL:
        config.option.benchmark_disable = True
