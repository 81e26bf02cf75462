"""Swapped library U-Nets against the originals: one training step (forward, loss, backward, SGD step), bf16
autocast on a GPU. On a GPU: ``pytest bench/test_bench_swap.py --benchmark-json=bench/results/<gpu>/swap.json``."""
import importlib.metadata

import pytest
import torch
import torch.nn.functional as F

import fused_unet
from bench.conftest import FULL, ON_GPU

DEVICE = "cuda" if ON_GPU else "cpu"
SIZE, BATCH = (256, 8) if FULL else (16, 2)


def _smp_unet():
    smp = pytest.importorskip("segmentation_models_pytorch", reason="the compat extra")
    if FULL:
        return smp.Unet("resnet34", encoder_weights=None, classes=2)
    return smp.Unet("resnet18", encoder_weights=None, classes=2, encoder_depth=3, decoder_channels=(16, 8, 8))


def _monai_basic_unet():
    nets = pytest.importorskip("monai.networks.nets", reason="the compat extra")
    features = (32, 32, 64, 128, 256, 32) if FULL else (4, 4, 8, 8, 16, 4)
    return nets.BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=features, norm="batch")


MODELS = {"smp-unet-resnet": _smp_unet, "monai-basicunet": _monai_basic_unet}


@pytest.mark.parametrize("variant", ["original", "swapped"])
@pytest.mark.parametrize("name", MODELS)
def test_library_model_train_step(benchmark, name, variant):
    if not ON_GPU and name == "monai-basicunet" and variant == "swapped":
        pytest.skip("its torch.compile capture through the interpreter takes ~30 s; tests/test_compat.py covers it")
    benchmark.group = f"swap:{name}"
    torch.manual_seed(0)
    model = MODELS[name]().to(DEVICE)
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=DEVICE)
    y = torch.randint(0, 2, (BATCH, SIZE, SIZE), device=DEVICE)
    if variant == "swapped":
        _, report = fused_unet.swap(model, x)
        benchmark.extra_info["fused"] = report.counts()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=ON_GPU):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ON_GPU:
            torch.cuda.synchronize()

    if FULL:
        step()  # autotuning, the backward candidates' timing and any torch.compile capture, outside the timings
        benchmark.extra_info.update(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                    triton=importlib.metadata.version("triton"), dtype="bf16",
                                    shape=[BATCH, 3, SIZE, SIZE])
    benchmark.pedantic(step, rounds=10 if FULL else 1, warmup_rounds=3 if FULL else 0)
