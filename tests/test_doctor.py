"""The ahead-of-time compile check (fused-unet doctor): every registered kernel configuration compiles for
sm_90 and sm_80 without a GPU, without spills, within shared memory and with tensor-core MMA; and the
registry covers every launch the library really makes."""
import json

import pytest
import torch

from tests.conftest import DEVICE
import fused_unet
from fused_unet import doctor
from fused_unet.kernels import configs

pytest.importorskip("triton.backends.nvidia")


def test_every_registered_kernel_compiles_clean_for_sm90_and_sm80():
    results, unsupported = doctor.run_aot(["sm_90", "sm_80"])
    assert not unsupported
    assert len(results) == len(doctor.registry_jobs(["sm_90", "sm_80"]))
    problems = [p for r in results for p in doctor.problems(r)]
    assert not problems, "\n".join(problems)
    by_arch = {(r["kernel"], r["arch"], r["dtype"]): r["mma"] for r in results if r.get("gemm")}
    assert by_arch[("conv2d_implicit_gemm", "sm_90", "bf16")] == "wgmma"
    assert by_arch[("conv2d_implicit_gemm", "sm_80", "fp16")] == "mma.sync"


def test_problems_are_reported():
    base = dict(kernel="conv2d_implicit_gemm", site="conv2d_forward", variant=0, dtype="fp16", config_text="c",
                arch="sm_90", ok=True, gemm=True, mma="mma.sync", spill_bytes=8, regs=255, shared_bytes=300 * 1024)
    found = " ".join(doctor.problems(base))
    assert "spills 8 bytes" in found and "shared memory" in found and "no wgmma" in found
    assert "does not compile" in doctor.problems(dict(base, ok=False, error="boom"))[0]
    assert doctor.arch_supported("sm_12") is not None


def _record_launches(monkeypatch):
    seen = []
    for name, kernel in doctor.kernels().items():
        original = kernel.run

        def run(*args, _name=name, _original=original, **kwargs):
            seen.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", run)
    return seen


def _declared(kernel, launched):
    """Whether a launch's constexprs take, on every axis of some site of ``kernel``, one of the axis's choices."""
    return any(all(any(all(launched[k] == v for k, v in choice.items()) for choice in axis) for axis in axes)
               for axes in configs.LAUNCH_AXES[kernel].values())


@pytest.mark.parametrize("options", [dict(), dict(up_mode="bilinear", norm="batch", activation="leaky_relu")])
def test_registry_covers_every_launch_of_the_unet(monkeypatch, options):
    seen = _record_launches(monkeypatch)
    model = fused_unet.UNet(3, 2, base_channels=4, depth=1, **options).to(DEVICE)
    x = torch.randn(1, 3, 8, 8, device=DEVICE, requires_grad=True)
    model(x).sum().backward()
    model.eval()
    model(x).sum().backward()
    expected = set(configs.LAUNCH_AXES) - ({"max_pool2x2", "max_pool2x2_backward", "batch_norm_act_backward"}
                                           if "norm" not in options else set())
    assert {name for name, _ in seen} == expected
    for name, kwargs in seen:
        launched = {k: v for k, v in kwargs.items() if k.isupper() and not k.startswith("BLOCK")}
        assert _declared(name, launched), f"{name} launched with {launched}, not declared in LAUNCH_AXES"


def test_doctor_cli_without_aot(tmp_path, capsys):
    from fused_unet.cli import main

    assert main(["doctor", "--aot", "none", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "TRITON_INTERPRET" in out and "cpu:" in out
    assert json.loads((tmp_path / "d.json").read_text())["environment"]["torch"] == torch.__version__
