"""The fused models inside the rest of PyTorch: torch.export, autocast, activation checkpointing, CUDA graphs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import fused_unet
from tests.conftest import DEVICE, MODEL_TOLERANCE_FACTOR, ON_GPU, assert_close
from tests.test_swap import ClassicUNet

pytestmark = pytest.mark.whole_model  # Whole models: the interpreter without its overflow check (conftest)


@pytest.mark.parametrize("options", [dict(up_mode="transpose"), dict(up_mode="bilinear", norm="batch")])
def test_exported_unet_runs_our_custom_ops_and_matches_the_module(options):
    torch.manual_seed(0)
    model = fused_unet.UNet(3, 2, base_channels=4, depth=2, **options).to(DEVICE).eval()
    x = torch.randn(1, 3, 16, 16, device=DEVICE)
    program = torch.export.export(model, (x,))
    assert "torch.ops.fused_unet" in program.graph_module.code
    assert "aten.convolution" not in program.graph_module.code
    assert_close(program.module()(x), model(x).double(), torch.float32, "exported logits")


def test_exported_swapped_model_matches_the_original():
    torch.manual_seed(0)
    model = ClassicUNet().to(DEVICE).eval()
    reference = copy.deepcopy(model).double()
    fused_unet.swap(model)
    x = torch.randn(1, 3, 12, 12, device=DEVICE)
    program = torch.export.export(model, (x,))
    assert "torch.ops.fused_unet.concat_conv2d_forward" in program.graph_module.code
    assert_close(program.module()(x), reference(x.double()), torch.float32, "exported swapped logits",
                 MODEL_TOLERANCE_FACTOR)


def test_compiled_swapped_model_is_one_graph_and_matches_the_original():
    torch.manual_seed(0)
    model = ClassicUNet().to(DEVICE)
    reference = copy.deepcopy(model).double()
    fused_unet.swap(model)
    x = torch.randn(2, 3, 12, 12, device=DEVICE)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons[:3]
    out = torch.compile(model)(x)
    out.sum().backward()
    ref = reference(x.double())
    ref.sum().backward()
    assert_close(out, ref, torch.float32, "compiled swapped logits", MODEL_TOLERANCE_FACTOR)
    for (name, p), r in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, r.grad, torch.float32, f"compiled swapped grad {name}", MODEL_TOLERANCE_FACTOR)


def test_autocast_computes_where_nn_conv2d_would():
    torch.manual_seed(0)
    model = ClassicUNet().to(DEVICE)
    original = copy.deepcopy(model)
    reference = copy.deepcopy(model).double()
    fused_unet.swap(model)
    x = torch.randn(2, 3, 12, 12, device=DEVICE)
    for m in (model, original, reference):
        m.eval()
    with torch.autocast(DEVICE, dtype=torch.float16):
        out, baseline = model(x), original(x)
    assert out.dtype == baseline.dtype == torch.float16
    assert_close(out, reference(x.double()), torch.float16, "autocast logits", MODEL_TOLERANCE_FACTOR, baseline)


def test_activation_checkpointing_of_swapped_levels_gives_the_same_gradients():
    torch.manual_seed(0)
    model = ClassicUNet().to(DEVICE)
    fused_unet.swap(model)
    x = torch.randn(2, 3, 12, 12, device=DEVICE)
    target = torch.randint(0, 2, (2, 12, 12), device=DEVICE)
    model.eval()  # batch statistics would update twice under recomputation, in PyTorch as here
    plain = torch.autograd.grad(F.cross_entropy(model(x), target), list(model.parameters()))
    down1 = model.down1.forward
    model.down1.forward = lambda h: checkpoint(down1, h, use_reentrant=False)
    checkpointed = torch.autograd.grad(F.cross_entropy(model(x), target), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), plain, checkpointed):
        assert_close(b, a.double(), torch.float32, f"checkpointed grad {name}")


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_capture_of_a_training_step():
    torch.manual_seed(0)
    model = fused_unet.UNet(3, 2, base_channels=8, depth=2).to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    target = torch.randint(0, 2, (2, 32, 32), device=DEVICE)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: autotuning and the backward candidates' timing happen outside the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()
    before = [p.detach().clone() for p in model.parameters()]
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(loss).item()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
