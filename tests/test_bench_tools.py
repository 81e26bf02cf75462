"""The measurement tools that work without a GPU: FLOP/byte model, saved-activation bytes, result tables,
--compare, and the CPU behaviour of `fused-unet bench` / `profile`."""
import json
from pathlib import Path

import pytest
import torch

from fused_unet import ReferenceUNet, UNet, benchmark, perf
from fused_unet.cli import main
from fused_unet.utils import saved_activation_bytes
from tests.conftest import DEVICE


def test_layer_costs_count_conv_flops():
    model = ReferenceUNet(3, 2, base_channels=4, depth=1)
    rows = perf.layer_costs(model, torch.zeros(2, 3, 8, 8))
    first = rows[0]
    assert first["name"] == "encoder.0.conv1" and first["flops"] == 2 * 2 * 8 * 8 * 4 * 3 * 9
    assert first["bytes"] == (2 * 3 * 64 + 4 * 3 * 9 + 4 + 2 * 4 * 64) * 4
    pool = next(r for r in rows if r["kind"].endswith("max_pool2d"))
    assert pool["name"] == "encoder.0.conv2" and pool["calls"] == 1
    up = next(r for r in rows if r["kind"] == "conv_transpose2d")
    assert up["flops"] == 2 * 2 * 4 * 4 * 8 * 4 * 4
    assert benchmark.flops_per_image(benchmark.Settings(base_channels=4, depth=1, size=8, mode="infer")) * 2 == \
        sum(r["flops"] for r in rows)


@pytest.mark.parametrize("options", [dict(), dict(norm="batch", up_mode="bilinear")])
def test_layer_costs_of_fused_and_reference_models_agree(options):
    x = torch.zeros(2, 3, 16, 16, device="meta")
    fused = perf.layer_costs(UNet(3, 2, base_channels=4, depth=2, **options).to("meta"), x)
    reference = perf.layer_costs(ReferenceUNet(3, 2, base_channels=4, depth=2, **options).to("meta"), x)
    assert [r["flops"] for r in fused] == [r["flops"] for r in reference]


def test_fused_unet_saves_less_for_backward_than_eager():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16, device=DEVICE)
    fused = saved_activation_bytes(UNet(3, 2, base_channels=4, depth=2).to(DEVICE), x)
    eager = saved_activation_bytes(ReferenceUNet(3, 2, base_channels=4, depth=2).to(DEVICE), x)
    assert 0 < fused < eager


def _fake_results(img_per_s, peak):
    run = dict(batch=16, ms_median=10.0, ms_p20=9.0, ms_p80=11.0, img_per_s=img_per_s, img_per_s_p20=img_per_s - 1,
               img_per_s_p80=img_per_s + 1, peak_memory_gib=peak, tflops=100.0, pct_of_matmul_peak=12.5)
    return dict(settings=benchmark.Settings().__dict__, gpu=dict(name="Test GPU"), torch="x", triton="y",
                date="2026-01-01", matmul_peak_tflops=800.0, matmul_peak_dtype="bfloat16", copy_peak_gbps=3000.0,
                contenders={"fused": dict(runs=[run], error=None, max_batch=64),
                            "fused-compile": dict(runs=[], error="Unsupported: x", max_batch=None)})


def test_table_and_compare(tmp_path, capsys):
    a, b = _fake_results(100.0, 10.0), _fake_results(150.0, 5.0)
    text = benchmark.table(a)
    assert "| fused | 16 | 100.0 (99.0–101.0)" in text and "failed: Unsupported" in text
    choices = benchmark.table(dict(a, backward_choices={"conv2d_input_grad (1,)": "aten", "k (2,)": "triton"}))
    assert "1 ours (Triton), 1 aten (cuDNN)" in choices and "chosen by timing" not in text
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "| fused | 16 | 100.0 | 150.0 | 1.50 | 0.50 | 1.00 |" in capsys.readouterr().out
    files = benchmark.write(a, tmp_path / "out")
    assert (tmp_path / "out" / files[0]).exists() and files[1].endswith(".md")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_bench_and_profile_without_gpu(capsys, tmp_path):
    assert main(["bench"]) == 1  # it measured nothing
    assert "need one" in capsys.readouterr().out
    assert main(["profile", "--size", "64", "--batch-sizes", "1"]) == 0
    out = capsys.readouterr().out
    assert "FLOP / byte model alone" in out and "encoder.0.conv1" in out and "total" in out
    assert main(["bench", "--cpu-smoke", "--size", "16", "--base-channels", "4", "--depth", "1",
                 "--batch-sizes", "1", "--out", str(tmp_path)]) == 0
    assert "saved-activation memory, fused / eager" in capsys.readouterr().out
    written = json.loads((tmp_path / "cpu-smoke-16-base4-depth1.json").read_text())
    assert written["settings"]["size"] == 16 and [r["backend"] for r in written["runs"]] == ["triton-interpreter",
                                                                                             "eager"]
    # What ran, not the GPU defaults: fp32, the two contenders, one training step.
    assert written["settings"]["dtype"] == "fp32" and written["settings"]["contenders"] == ["fused", "eager"]
    assert written["settings"]["iters"] == 1 and written["settings"]["warmup"] == 0
    assert (tmp_path / "cpu-smoke-16-base4-depth1.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cpu_smoke_defaults_to_the_tiny_model(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(benchmark, "cpu_smoke", lambda s: seen.append(s) or dict(
        settings=benchmark.dataclasses.asdict(s), torch="t", triton="t", date="d", saved_activation_ratio=0.5,
        runs=[dict(contender="fused", backend="b", seconds=1.0, saved_activation_mib=1.0)]))
    assert main(["bench", "--cpu-smoke", "--out", str(tmp_path)]) == 0
    (s,) = seen
    assert (s.size, s.base_channels, s.depth, s.batch_sizes) == (32, 8, 2, (2,))
    assert "base 8, depth 2, 32x32, batch 2" in capsys.readouterr().out
    assert main(["bench", "--cpu-smoke", "--size", "48", "--out", str(tmp_path)]) == 0
    assert seen[1].size == 48 and seen[1].base_channels == 8
    assert benchmark.Settings().size == 512  # the GPU headline keeps its own defaults


def test_plots_from_a_results_file(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "r.json").write_text(json.dumps(_fake_results(100.0, 10.0)))
    assert main(["bench", "--plot", str(tmp_path / "r.json")]) == 0
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())


@pytest.mark.parametrize("args,expected", [
    ((), False), (("-q",), False), (("tests/test_conv.py",), False), (("bench/",), True),
    (("-q", "bench/test_bench_ops.py::test_op_forward"), True)])
def test_full_benchmarks_only_when_bench_is_named(args, expected):
    from types import SimpleNamespace

    from bench.conftest import _names_bench

    root = Path(__file__).resolve().parents[1]
    assert _names_bench(SimpleNamespace(invocation_params=SimpleNamespace(args=args, dir=root))) is expected


def test_largest_batch_with_the_out_of_memory_probe(monkeypatch):
    # bench and train --find-max-batch share one probe: an out-of-memory error is "does not fit", and the
    # gradients are released whether the step fit or not.
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)

    def step(batch):
        (weight * batch).sum().backward()
        if batch > 37:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert benchmark.largest_batch(lambda b: benchmark.fits_in_memory(lambda: step(b), optimizer), 1, 1024) == 37
    assert weight.grad is None

    def broken():
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):  # only running out of memory means "too large"
        benchmark.fits_in_memory(broken)
