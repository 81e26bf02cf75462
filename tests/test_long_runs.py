"""Long runs: a fused UNet trained from the same weights and batches as ReferenceUNet (float64) stays with it
(parameters, logits, BatchNorm running statistics), with SGD and Adam; and a training loop does not grow (Python
objects and saved-tensor bytes stay flat after warm-up). 50 steps on a GPU; 4 through the CPU interpreter,
where one step of even this tiny model takes about a second."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fused_unet
from tests.conftest import DEVICE, assert_close

STEPS = 50 if DEVICE == "cuda" else 4
OPTIMIZERS = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), "adam": lambda p: torch.optim.Adam(p, 1e-3)}


def _batches(steps):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 3, 8, 8, generator=generator).to(DEVICE),
             torch.randint(0, 3, (2, 8, 8), generator=generator).to(DEVICE)) for _ in range(steps)]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_training_stays_with_the_float64_reference(optimizer):
    model = fused_unet.UNet(3, 3, base_channels=4, depth=1, norm="batch").to(DEVICE)
    reference = fused_unet.ReferenceUNet(**model.config).to(DEVICE, torch.float64)
    reference.load_state_dict(model.state_dict())
    optimizers = [OPTIMIZERS[optimizer](m.parameters()) for m in (model, reference)]
    for x, target in _batches(STEPS):
        for m, opt in zip((model, reference), optimizers):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x.to(next(m.parameters()).dtype)), target).backward()
            opt.step()
    factor = 4 * STEPS  # each step adds one fp32 rounding of every update
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        if a.is_floating_point():
            assert_close(a, b, torch.float32, f"{name} after {STEPS} {optimizer} steps", factor)
    model.eval()
    reference.eval()
    x = _batches(1)[0][0]
    assert_close(model(x), reference(x.double()), torch.float32, "eval logits", factor)


_LOOP = """
import gc, json, sys
import torch
import torch.nn.functional as F
import fused_unet
from fused_unet.utils import saved_activation_bytes
from tests.test_long_runs import STEPS, _batches
device = sys.argv[1]
model = fused_unet.UNet(3, 3, base_channels=4, depth=1, norm="batch").to(device)
opt = torch.optim.Adam(model.parameters(), 1e-3)
tensors, memory, saved = [], [], []
for x, target in _batches(2 + STEPS):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), target).backward()
    opt.step()
    saved.append(saved_activation_bytes(model, x))
    gc.collect()
    tensors.append(sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects()))
    memory.append(torch.cuda.memory_allocated() if device == "cuda" else 0)
print(json.dumps(dict(tensors=tensors, memory=memory, saved=saved)))
"""


def test_a_training_loop_does_not_grow():
    # In a fresh process: the rest of a test session frees its own tensors meanwhile. A leaked graph keeps its
    # saved tensors alive, so live tensors (and CUDA memory) must stay flat after two warm-up steps.
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "0"))
    done = subprocess.run([sys.executable, "-c", _LOOP, DEVICE], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parent.parent, check=True)
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(set(counts["tensors"][2:])) == 1, f"live tensors grow: {counts['tensors']}"
    assert len(set(counts["memory"][2:])) == 1, f"CUDA memory grows: {counts['memory']}"
    assert len(set(counts["saved"])) == 1
