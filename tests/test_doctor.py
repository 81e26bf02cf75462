"""The ahead-of-time compile check (fused-unet doctor): every registered kernel configuration compiles for
sm_90 and sm_80 without a GPU, without spills, within shared memory and with tensor-core MMA; and the
registry covers every launch the library really makes. CI compiles every constexpr variant on sm_90 and each
site's first variant at every config on sm_80 (half a doctor's sm_80 jobs: CI time), bf16 at each site's first
config only (its config lists are fp16's: the same loops with another operand type); ``fused-unet doctor``
compiles every variant at every config and dtype on both."""
import json

import pytest
import torch

from tests.conftest import DEVICE, record_launches
import fused_unet
from fused_unet import doctor, sass
from fused_unet.kernels import compile_matrix, specs

pytest.importorskip("triton.backends.nvidia")

CI_JOBS = dict(variant_archs=["sm_90"], swept_dtypes=("fp16", "fp32", "tf32"))


@pytest.fixture(scope="module")
def aot_results():
    results, unsupported = doctor.run_aot(["sm_90", "sm_80"], every_main_loop=False, **CI_JOBS)
    assert not unsupported
    return results


def test_every_registered_kernel_compiles_clean_for_sm90_and_sm80(aot_results):
    assert len(aot_results) == len(doctor.registry_jobs(["sm_90", "sm_80"], **CI_JOBS))
    every_variant = {(kernel, site, v) for kernel, sites in compile_matrix.LAUNCH_VARIANTS.items()
                     for site, variants in sites.items() for v in range(len(variants))}
    assert {(r["kernel"], r["site"], r["variant"]) for r in aot_results if r["arch"] == "sm_90"} == every_variant
    problems = [p for r in aot_results for p in doctor.problems(r)]
    assert not problems, "\n".join(problems)
    by_arch = {(r["kernel"], r["arch"], r["dtype"]): r["mma"] for r in aot_results if r.get("gemm")}
    assert by_arch[("conv2d_implicit_gemm", "sm_90", "bf16")] == "wgmma"
    assert by_arch[("conv2d_implicit_gemm", "sm_80", "fp16")] == "mma.sync"


def test_bf16_launches_the_configs_of_fp16():
    # Why CI compiles bf16 at each site's first config only (CI_JOBS): its tiles are fp16's, so its other configs
    # are fp16's loops with another 16-bit operand type, compiled there.
    for kernel, sites in compile_matrix.LAUNCH_VARIANTS.items():
        for site, variants in sites.items():
            for arch in ("sm_90", "sm_80"):
                bf16, fp16 = (list(map(doctor._config_text, doctor._launch_configs(kernel, variants[0], d, arch)))
                              for d in ("bf16", "fp16"))
                assert bf16 == fp16, (kernel, site, arch)


def test_every_launch_site_compiles_with_its_integers_equal_to_one():
    # Triton turns an integer argument equal to 1 into a constant at launch (a 1-pixel-wide image, a unit stride,
    # the fast-division magic of a power of two); the first GPU run found a kernel that failed to compile so.
    assert not doctor.specialisation_problems("sm_90")


def test_main_loops_reach_their_tensor_core_ceiling(aot_results):
    # sm_90: per GEMM role some registered config's main loop can reach the target share of 16-bit tensor-core
    # peak, reading its operands with 128-bit cp.async / TMA only and never dividing (where the target asks for
    # fast loads; sm_80: 128-bit loads, no division); and the median over all 16-bit jobs holds.
    verdicts = doctor.main_loop_verdicts(aot_results)
    assert len(verdicts) == len(compile_matrix.MAIN_LOOP_TARGETS) + 1
    # The fixture read the main loops the verdicts use only (doctor.verdict_job): each target's jobs have theirs.
    read = [r for t in compile_matrix.MAIN_LOOP_TARGETS for arch in ("sm_90", "sm_80")
            for r in doctor._target_jobs(aot_results, t, arch)]
    assert read and all(r["loop_instructions"] is not None for r in read)
    # Triton 3.6's ptxas serialises the wgmma of the conv reading a pending norm (batch, or instance / group by
    # image pairs) at every N=256 tile (C7515: "non wgmma instructions defining accumulator registers"), and no
    # narrower tile issues fast enough; 3.8's keeps a group in flight. The doctor reports it there; this test holds
    # it from 3.8 on.
    serialised = [v["name"] for v, t in zip(verdicts, compile_matrix.MAIN_LOOP_TARGETS)
                  if t.get("overlap")] if _triton_before(3, 8) else []
    failed = [v for v in verdicts if not v["ok"] and v["name"] not in serialised]
    assert not failed, "\n".join(f"{v['name']}: best {v['config']} ceiling {v['ceiling']} (target {v['target']}), "
                                  f"loop {v['loop']}, loads {v['loads']}" for v in failed)


def _triton_before(*version):
    import triton

    return tuple(int(part) for part in triton.__version__.split(".")[:2]) < version


def test_a_slow_main_loop_fails_its_target(aot_results):
    # The verdict can fail: the same jobs with scalar loads, or a tenth of their MMA work, do not pass.
    narrow = [dict(r, loads={"ldg.narrow": 16}) if r.get("gemm") else r for r in aot_results]
    assert not doctor.main_loop_verdicts(narrow)[0]["ok"]
    slow = [dict(r, ceiling=(r["ceiling"] or 0) / 10, headroom=(r["headroom"] or 0) / 10) if r.get("gemm") else r
            for r in aot_results]
    assert not any(v["ok"] for v in doctor.main_loop_verdicts(slow))


def test_a_pending_norm_conv_that_waits_for_its_own_wgmma_fails_its_target(aot_results):
    # The conv reading a pending norm must keep a wgmma group in flight: the same jobs with every wait at 0 (the MMA
    # and the normalising prologue taking turns) fail both pending-norm roles, and only those of the main targets.
    serial = [dict(r, wgmma_wait=0) if r.get("gemm") else r for r in aot_results]
    overlap = [t.get("overlap", False) for t in compile_matrix.MAIN_LOOP_TARGETS]
    assert sum(overlap) == 2
    assert [not v["ok"] for v in doctor.main_loop_verdicts(serial)[:len(overlap)]] == overlap


def test_reference_kernels_reach_the_ceiling(aot_results):
    # The same ptxas compiles a plain Triton matmul and a plain nested-loop conv: a toolchain regression shows
    # there first, not as one of ours.
    for result in doctor.compile_references("sm_90"):
        assert result["ok"] and result["ceiling"] >= 0.95 and sass.fast_loads_only(result["loads"]), result


def test_main_loop_parser_counts_a_loop():
    text = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64] ;
        /*0020*/                   LDGDEPBAR ;
        /*0030*/                   HGMMA.64x8x16.F32 R24, gdesc[UR8], R24 ;
        /*0038*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*0040*/                   I2F.U32.RP R12, R118 ;
        /*0050*/               @P3 BRA `(.L_x_1) ;
        /*0060*/                   EXIT ;
"""
    loops = sass.main_loops(text, 90, "16bit")
    assert len(loops) == 1
    loop = loops[0]
    assert loop["instructions"] == 6 and loop["mma_work"] == 64 * 8 * 16 and loop["wgmma_wait"] == 1
    assert loop["ceiling"] == pytest.approx(64 * 8 * 16 / (2048 * 6)) == loop["headroom"]
    assert loop["loads"] == {"cp.async.128": 1} and loop["int_division"]
    # sm_80: every warp's HMMA is its own work; the ceiling is capped at 1, the headroom is not.
    mma_sync = sass.main_loops(text.replace("HGMMA.64x8x16", "HMMA.16816"), 80, "16bit")[0]
    assert mma_sync["ceiling"] == 1.0 and mma_sync["headroom"] == pytest.approx(4 * 16 * 8 * 16 / (1024 * 6))


def test_local_memory_is_counted_inside_loops_only():
    text = """
        /*0000*/                   STL [R1], R3 ;
.L_x_2:
        /*0010*/                   LDL.LU R8, [R1] ;
        /*0020*/                   HMMA.16816.F32 R24, R4, R8, R24 ;
        /*0030*/                   STL [R1+0x4], R0 ;
        /*0040*/               @P3 BRA `(.L_x_2) ;
        /*0050*/                   LDL.LU R9, [R1+0x4] ;
        /*0060*/                   EXIT ;
"""
    assert sass.local_memory_in_loops(text) == 2
    assert sass.local_memory_in_loops(text.replace("@P3 BRA `(.L_x_2)", "NOP")) == 0


def test_problems_are_reported():
    base = dict(kernel="conv2d_implicit_gemm", site="conv2d_forward", variant=0, dtype="fp16", config_text="c",
                arch="sm_90", ok=True, gemm=True, mma="mma.sync", spill_bytes=8, regs=255, shared_bytes=300 * 1024)
    found = " ".join(doctor.problems(base))
    assert "spills 8 bytes" in found and "shared memory" in found and "no wgmma" in found
    # A spill outside every loop (once per program) passes; one inside a loop does not.
    clean = dict(base, mma="wgmma", shared_bytes=1024)
    assert doctor.problems(dict(clean, loop_spills=0)) == []
    assert "2 local accesses inside loops" in doctor.problems(dict(clean, loop_spills=2))[0]
    assert "does not compile" in doctor.problems(dict(base, ok=False, error="boom"))[0]
    assert doctor.arch_supported("sm_12") is not None


def _declared(kernel, launched):
    """Whether a launch's constexprs take, on every axis of some site of ``kernel``, one of the axis's choices."""
    def takes(choice):
        free = compile_matrix.HEURISTIC_FLAGS + compile_matrix.VALUE_FLAGS + compile_matrix.SHAPE_FLAGS
        return all(launched[k] == v for k, v in choice.items() if k not in free)

    return any(all(any(takes(choice) for choice in axis) for axis in axes)
               for axes in compile_matrix.LAUNCH_AXES[kernel].values())


@pytest.mark.whole_model
@pytest.mark.parametrize("options", [dict(), dict(up_mode="bilinear", norm="batch", activation="leaky_relu"),
                                     dict(up_mode="nearest", norm="group", activation="silu"),
                                     dict(norm="batch", block="residual")])
def test_registry_covers_every_launch_of_the_unet(monkeypatch, options):
    seen = record_launches(monkeypatch)
    model = fused_unet.UNet(3, 2, base_channels=4, depth=1, **options).to(DEVICE)
    x = torch.randn(1, 3, 8, 8, device=DEVICE, requires_grad=True)
    model(x).sum().backward()
    model.eval()
    model(x).sum().backward()
    # A norm's statistics: norm_statistics and its backward; their term of dL/dy is pending_norm's arithmetic.
    normed = {"max_pool", "max_pool_backward", "batch_norm_act_backward", "norm_statistics",
              "norm_statistics_backward", "pending_norm"}
    expected = set(compile_matrix.LAUNCH_AXES) - (normed if "norm" not in options else set())
    expected -= {"upsample2x_backward"} if "up_mode" not in options else set()
    expected -= {"channel_statistics"} if options.get("norm") not in ("instance", "group") else set()
    assert {name for name, _ in seen} == expected
    for name, kwargs in seen:
        launched = {k: v for k, v in kwargs.items() if k.isupper() and not k.startswith("BLOCK")}
        assert _declared(name, launched), f"{name} launched with {launched}, not declared in LAUNCH_AXES"


def test_registry_covers_strided_and_residual_convs(monkeypatch):
    # A ResNet stem (7x7/s2, 3 channels), a 1x1/s2 projection, a 3x3/s2 conv with a residual and a 3x3/s2
    # transposed conv (bias, ReLU), backward included.
    from fused_unet import functional as FF

    seen = record_launches(monkeypatch)
    x = torch.randn(2, 3, 11, 9, device=DEVICE, requires_grad=True)
    stem = torch.randn(16, 3, 7, 7, device=DEVICE, requires_grad=True)
    y = FF.conv2d(x, stem, stride=2, padding=3, activation="relu")
    projection = FF.conv2d(y, torch.randn(16, 16, 1, 1, device=DEVICE, requires_grad=True), stride=2, padding=0)
    out = FF.conv2d(y, torch.randn(16, 16, 3, 3, device=DEVICE, requires_grad=True), stride=2, padding=1,
                    activation="relu", residual=projection)
    up = FF.conv_transpose2d(out, torch.randn(16, 8, 3, 3, device=DEVICE, requires_grad=True),
                             torch.randn(8, device=DEVICE), stride=2, padding=1, output_padding=1, activation="relu")
    up.sum().backward()
    launched = [{k: v for k, v in kwargs.items() if k.isupper() and not k.startswith("BLOCK")} for _, kwargs in seen]
    for (name, _), flags in zip(seen, launched):
        assert _declared(name, flags), f"{name} launched with {flags}, not declared in LAUNCH_AXES"
    assert any(f.get("RESIDUAL") for f in launched) and any(f.get("STRIDE") == 2 for f in launched)


def test_doctor_cli_without_aot(tmp_path, capsys):
    from fused_unet.cli import main

    assert main(["doctor", "--aot", "none", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "TRITON_INTERPRET" in out and "cpu:" in out
    assert json.loads((tmp_path / "d.json").read_text())["environment"]["torch"] == torch.__version__


@pytest.mark.parametrize("spec", specs.KERNELS + (specs.MATMUL, specs.NESTED_CONV3X3), ids=lambda s: s.name)
def test_each_kernel_declares_its_parameters_in_its_spec(spec):
    # The spec is the one declaration the launch, the autotune key and the doctor's compile signature come from.
    from fused_unet.kernels import reference

    kernel = doctor.kernels().get(spec.name) or getattr(reference, spec.name + "_kernel")
    assert doctor.jit_function(kernel).arg_names == spec.names
    if spec in specs.KERNELS:
        assert kernel.keys == spec.autotune_key
    signature, constants, _ = spec.compile_signature("*fp16", {p.name: 1 for p in spec.params
                                                               if p.types == "constexpr"})
    assert list(signature) == spec.names


def test_a_launch_with_a_wrong_keyword_is_refused():
    spec = specs.MAX_POOL_BACKWARD
    given = {p.name: 0 for p in spec.params if p.role in ("argument", "flag")}
    assert spec.arguments(**given) == given
    with pytest.raises(TypeError, match=r"missing \['TOTAL'\] and passes unknown \['TOTALS'\]"):
        spec.arguments(**{("TOTALS" if k == "TOTAL" else k): v for k, v in given.items()})


def test_the_compile_signature_follows_the_hints():
    # Channel strides of 1 become constants, multiples of 16 get divisibility hints, pointers alignment; with
    # ``ones`` every specialisable integer is the constant 1 but do_not_specialize ones.
    spec = specs.CONV2D_WEIGHT_GRAD
    index = spec.names.index
    signature, constants, attrs = spec.compile_signature("*bf16", {"KH": 3})
    assert signature["x_strides"] == ("i32", "constexpr", "i32", "i32") and constants[(index("x_strides"), 1)] == 1
    assert signature["in_norm"] == ("*fp32", "*fp32", "*fp32") and signature["g_ptr"] == "*bf16"
    assert (index("C_A"),) in attrs and (index("BATCH"),) not in attrs and signature["KH"] == "constexpr"
    signature, constants, _ = spec.compile_signature("*bf16", {"KH": 3}, ones=True)
    assert constants[(index("BATCH"),)] == 1 and signature["W_MAGIC"] == "i32"
    assert signature["placement"][6:] == ("fp32", "fp32")
