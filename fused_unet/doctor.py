"""``fused-unet doctor``: the environment, and an ahead-of-time compile of every registered kernel
configuration for NVIDIA targets — no GPU needed — with a static resource report.

Each job compiles one (kernel, launch variant, dtype, block config) for one architecture with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` and reads the result: the PTX (tensor-core
MMA: ``wgmma`` on sm_90, ``mma.sync`` on sm_80) and the cubin's resource usage from the ``cuobjdump`` that
ships with Triton (registers, stack/local memory = spills, static shared memory) plus Triton's dynamic
shared memory. What is compiled (see ``fused_unet.kernels.configs``):
  * every launch variant of every site (each choice of each flag axis), with the first GPU config, in fp16;
  * the heaviest variant of every site in every dtype with every GPU config — the resource table.
A GEMM kernel must use tensor-core MMA in every dtype but IEEE fp32, which has no tensor-core instruction.
"""
import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import platform
import re
import statistics

import torch

from fused_unet.kernels import specs
from fused_unet.utils import error_summary

ARCHS = {"sm_90": 90, "sm_80": 80}
# Per-SM limits used for the occupancy estimate: registers, warps, blocks, shared memory per SM and per block.
ARCH_LIMITS = {
    90: dict(regs=65536, warps=64, blocks=32, smem_sm=228 * 1024, smem_block=227 * 1024),
    80: dict(regs=65536, warps=64, blocks=32, smem_sm=164 * 1024, smem_block=163 * 1024),
}
EXPECTED_MMA = {90: "wgmma", 80: "mma.sync"}
def kernels():
    """The launched kernels by their spec's name (imports Triton and decorates them: call after TRITON_INTERPRET is
    set)."""
    from fused_unet.kernels import conv, grad, norm, pool, upsample

    return {specs.CONV2D_IMPLICIT_GEMM.name: conv.conv2d_implicit_gemm_kernel,
            specs.CONV2D_WEIGHT_GRAD.name: conv.conv2d_weight_grad_kernel,
            specs.CONV_OUTPUT_GRAD.name: grad.conv_output_grad_kernel,
            specs.UPSAMPLE2X_BACKWARD.name: upsample.upsample2x_backward_kernel,
            specs.MAX_POOL.name: pool.max_pool_kernel,
            specs.MAX_POOL_BACKWARD.name: pool.max_pool_backward_kernel,
            specs.PENDING_NORM.name: norm.pending_norm_kernel,
            specs.BATCH_NORM_ACT_BACKWARD.name: norm.batch_norm_act_backward_kernel,
            specs.CHANNEL_STATISTICS.name: norm.channel_statistics_kernel,
            specs.NORM_STATISTICS.name: norm.norm_statistics_kernel,
            specs.NORM_STATISTICS_BACKWARD.name: norm.norm_statistics_backward_kernel}


def jit_function(kernel):
    """The @triton.jit function (JITFunction, or the interpreter's) under a kernel's autotune / heuristics."""
    from triton.runtime import Autotuner, Heuristics

    while isinstance(kernel, (Autotuner, Heuristics)):
        kernel = kernel.fn
    return kernel


@dataclasses.dataclass(frozen=True)
class Job:
    kernel: str
    site: str
    variant: int
    dtype: str
    config: int
    arch: str


def environment():
    """Versions, GPU, interpreter state and the backend of each device."""
    from fused_unet import dispatch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpus = [dict(index=i, name=torch.cuda.get_device_name(i),
                 capability="sm_%d%d" % torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]
    devices = ["cpu"] + [f"cuda:{g['index']}" for g in gpus]
    return dict(python=platform.python_version(), torch=torch.__version__, triton=triton_version,
                cuda=torch.version.cuda, gpus=gpus, interpreter=dispatch.interpreter_enabled(),
                backends={d: dispatch.backend(d) for d in devices})


def launch_flags(kernel, variant, dtype_name):
    """A compile-matrix variant's constexpr flags as a launch in ``dtype_name`` passes them to configs.fits: a GEMM
    launch also carries its operand type and input precision."""
    from fused_unet.kernels import compile_matrix

    if kernel not in compile_matrix.GEMM_KERNELS:
        return variant
    import triton.language as tl

    _, element_type, precision = next(d for d in compile_matrix.DTYPE_VARIANTS if d[0] == dtype_name)
    return {**variant, "DOT_DTYPE": tl.dtype(element_type), "INPUT_PRECISION": precision}


def _launch_configs(kernel, variant, dtype_name, arch):
    from fused_unet.kernels import configs

    return configs.gpu_configs(kernel, dtype_name, launch_flags(kernel, variant, dtype_name), ARCHS[arch])


def registry_jobs(archs, variant_archs=None, swept_dtypes=None):
    """The compile jobs for ``archs`` (e.g. ["sm_90", "sm_80"]), from the config registry (kernels/configs.py)
    and the compile matrix (kernels/compile_matrix.py): each site's first variant at every config of each dtype in
    ``swept_dtypes`` (default all) and at its first config in the others, every other variant at the first config in
    fp16 (on ``variant_archs`` only, default all of ``archs``; on the others the first variant swept in fp16 and fp32
    only: bf16 and tf32 compile the same loops with another operand type), and the main-loop targets' configs."""
    from fused_unet.kernels import compile_matrix

    dtypes = [d[0] for d in compile_matrix.DTYPE_VARIANTS]
    jobs = []
    for arch in archs:
        every_variant = variant_archs is None or arch in variant_archs
        swept = [d for d in swept_dtypes or dtypes if every_variant or d in ("fp16", "fp32")]
        for kernel, sites in compile_matrix.LAUNCH_VARIANTS.items():
            kernel_dtypes = [d for d in dtypes if (kernel in compile_matrix.GEMM_KERNELS or d != "tf32") and
                             (every_variant or d in swept)]
            for site, variants in sites.items():
                jobs += [Job(kernel, site, v, "fp16", 0, arch) for v in range(len(variants) if every_variant else 1)]
                jobs += [Job(kernel, site, 0, d, c, arch) for d in kernel_dtypes
                         for c in range(len(_launch_configs(kernel, variants[0], d, arch)) if d in swept else 1)
                         if (d, c) != ("fp16", 0)]
        for target in compile_matrix.MAIN_LOOP_TARGETS:
            flags = compile_matrix.target_flags(target)
            variant = compile_matrix.LAUNCH_VARIANTS[target["kernel"]][target["site"]].index(flags)
            jobs += [Job(target["kernel"], target["site"], variant, "fp16", c, arch)
                     for c in range(len(_launch_configs(target["kernel"], flags, "fp16", arch)))]
    return list(dict.fromkeys(jobs))


def _worker_init():
    # Compile real kernels even when the parent runs under the interpreter: the kernels are imported here
    # first, so this process decorates them as JITFunctions.
    os.environ.pop("TRITON_INTERPRET", None)


def _ast_source(fn, signature, constexprs, attrs):
    """The one place that knows the ASTSource API (the same from triton 3.6 to 3.9)."""
    from triton.compiler import ASTSource

    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def _resource_usage(cubin):
    from fused_unet import sass

    out = sass.read_cubin("cuobjdump", cubin, "--dump-resource-usage")
    if out is None:
        return {}
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k.lower(): int(v) for k, v in fields.items()}


def _occupancy(cc, regs, warps, smem):
    lim = ARCH_LIMITS[cc]
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    blocks = min(lim["blocks"], lim["warps"] // warps, lim["regs"] // (regs_per_warp * warps),
                 lim["smem_sm"] // (smem + 1024))
    return blocks, blocks * warps


# Each kernel's compile signature (pointer types, float scalars, what a U-Net layer's launch passes: channels_last
# tensors, K-contiguous weights, channel counts that are multiples of 16) comes from its declaration
# (fused_unet.kernels.specs): Triton specialises integer arguments at run time (== 1 becomes a constant, a multiple
# of 16 gets a divisibility hint that enables vector loads and the cp.async pipeline), so the check compiles the
# same specialisation. Layers with odd channel counts (the first conv, the head) compile a slower generic variant.
def _job_launch(job):
    """(the JITFunction, its spec, its constexprs, the tensor type, the config) of ``job``."""
    from fused_unet.kernels import compile_matrix

    variant = compile_matrix.LAUNCH_VARIANTS[job.kernel][job.site][job.variant]
    cfg = _launch_configs(job.kernel, variant, job.dtype, job.arch)[job.config]
    _, element_type, _ = next(d for d in compile_matrix.DTYPE_VARIANTS if d[0] == job.dtype)
    spec = compile_matrix.SPECS[job.kernel]
    constexprs = {**launch_flags(job.kernel, variant, job.dtype), **cfg.kwargs}
    return jit_function(kernels()[job.kernel]), spec, constexprs, "*" + element_type, cfg


def compile_with_ones(job):
    """Compile ``job`` with every integer argument that Triton specialises at launch equal to 1, as a launch with
    a width, a batch, a stride or a power-of-two divisor's magic number of 1 gets it (a constant, not a tensor).
    None when it compiles, else the error's first line."""
    fn, spec, constexprs, tensor_type, cfg = _job_launch(job)
    compiled = _compile(fn, spec.compile_signature(tensor_type, constexprs, ones=True), ARCHS[job.arch], cfg)
    return compiled if isinstance(compiled, str) else None


def verdict_job(job):
    """Whether main_loop_verdicts reads ``job``'s main-loop report: a 16-bit GEMM job on sm_90 (the median), or one
    of a MAIN_LOOP_TARGETS entry's jobs on any architecture (its loads)."""
    from fused_unet.kernels import compile_matrix

    if job.kernel not in compile_matrix.GEMM_KERNELS:
        return False
    if job.arch == "sm_90" and job.dtype in ("fp16", "bf16"):
        return True
    return job.dtype == "fp16" and (job.kernel, job.site, job.variant) in map(_target_variant,
                                                                              compile_matrix.MAIN_LOOP_TARGETS)


def compile_job(job, every_main_loop=True):
    """Compile one job; return a dict of what was found (never raises). Its main loop is read from the SASS (half a
    second of nvdisasm a job) unless ``every_main_loop`` is False and the verdicts do not need it (verdict_job)."""
    import triton

    fn, spec, constexprs, tensor_type, cfg = _job_launch(job)
    result = dict(dataclasses.asdict(job), config_text=_config_text(cfg), num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages, triton=triton.__version__)
    cc = ARCHS[job.arch]
    compiled = _compile(fn, spec.compile_signature(tensor_type, constexprs), cc, cfg)
    if isinstance(compiled, str):
        return dict(result, ok=False, error=compiled)
    ptx = compiled.asm["ptx"]
    if spec.gemm:
        from fused_unet import sass

        result.update(main_loop_report(compiled, cc, job.dtype) if every_main_loop or verdict_job(job) else
                      sass.summary([]))
    mma = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
    return dict(result, ok=True, error=None, mma=mma, gemm=spec.gemm, **resources(compiled, cc, cfg.num_warps))


def resources(compiled, cc, num_warps):
    """Registers, spilled bytes (and how many local-memory accesses sit inside loops: None without nvdisasm), shared
    memory and occupancy (CTAs and warps per SM) of a compiled kernel."""
    from fused_unet import sass

    usage = _resource_usage(compiled.asm["cubin"])
    shared = compiled.metadata.shared + usage.get("shared", 0)
    blocks, warps = _occupancy(cc, usage.get("reg", 0), num_warps, shared)
    spill_bytes = usage.get("stack", 0) + usage.get("local", 0)
    text = sass.disassemble(compiled.asm["cubin"]) if spill_bytes else None
    return dict(regs=usage.get("reg"), spill_bytes=spill_bytes,
                loop_spills=sass.local_memory_in_loops(text) if text else (None if spill_bytes else 0),
                shared_bytes=shared, blocks_per_sm=blocks, warps_per_sm=warps)


def _compile(fn, compile_signature, cc, cfg):
    """triton.compile of ``fn`` for ``cc`` with ``compile_signature`` (KernelSpec.compile_signature). The compiled
    kernel, or the error's first line."""
    import triton
    from triton.backends.compiler import GPUTarget

    signature, constexprs, attrs = compile_signature
    try:
        return triton.compile(_ast_source(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32),
                              options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    except Exception as error:  # report, never raise: one bad configuration must not hide the others
        return error_summary(error, 300)


# Yardsticks compiled beside ours (fused_unet.kernels.reference): a plain Triton GEMM and a plain nested-loop conv.
_REFERENCES = {"matmul_kernel": specs.MATMUL, "nested_conv3x3_kernel": specs.NESTED_CONV3X3}


def _compile_reference(name, arch):
    import triton

    from fused_unet.kernels import reference

    cfg = triton.Config(dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64), num_warps=8, num_stages=3)
    cc = ARCHS[arch]
    compiled = _compile(getattr(reference, name), _REFERENCES[name].compile_signature("*fp16", cfg.kwargs), cc, cfg)
    result = dict(kernel=name, arch=arch, config_text=_config_text(cfg), ok=not isinstance(compiled, str))
    if not result["ok"]:
        return dict(result, error=compiled, ceiling=None, loads={})
    return dict(result, **main_loop_report(compiled, cc, "fp16"))


def compile_references(arch):
    """Main-loop reports of the reference kernels for ``arch`` (fp16, 128x128x64, 8 warps, 3 stages), compiled in
    worker processes like the registry."""
    with concurrent.futures.ProcessPoolExecutor(len(_REFERENCES), mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init) as pool:
        return list(pool.map(_compile_reference, _REFERENCES, [arch] * len(_REFERENCES)))


def main_loop_report(compiled, cc, dtype_name):
    """The static main-loop report of a compiled GEMM kernel (fused_unet.sass) and its Triton compile hash: the
    cubin is in Triton's cache under that hash, so anyone can re-derive the numbers."""
    from fused_unet import sass
    from fused_unet.kernels import configs

    text = sass.disassemble(compiled.asm["cubin"])
    operand_class = configs.precision_class(dtype_name)
    loops = sass.main_loops(text, cc, operand_class) if text else []
    return dict(sass.summary(loops), compile_hash=compiled.metadata.hash, loops=loops)


def _config_text(cfg):
    blocks = ",".join(f"{k[6:] if k.startswith('BLOCK_') else k}{v}" for k, v in cfg.kwargs.items())
    return f"{blocks} w{cfg.num_warps} s{cfg.num_stages}"


def problems(result):
    """Why this result fails the check ([] when it passes)."""
    name = f"{result['kernel']}/{result['site']}#{result['variant']} {result['dtype']} [{result['config_text']}] " \
           f"{result['arch']}"
    if not result["ok"]:
        return [f"{name}: does not compile: {result['error']}"]
    found = []
    cc = ARCHS[result["arch"]]
    # A spill outside every loop costs a few accesses per program; inside the main loop, every iteration pays.
    if result["spill_bytes"] and result.get("loop_spills") != 0:
        found.append(f"{name}: spills {result['spill_bytes']} bytes to local memory ({result['regs']} registers), "
                     f"{result.get('loop_spills', '?')} local accesses inside loops")
    if result["shared_bytes"] > ARCH_LIMITS[cc]["smem_block"]:
        found.append(f"{name}: needs {result['shared_bytes']} bytes of shared memory, more than "
                     f"{ARCH_LIMITS[cc]['smem_block']}")
    # IEEE fp32 has no tensor-core instruction on any NVIDIA GPU; TF32 is the tensor-core fp32 path.
    if result["gemm"] and result["dtype"] != "fp32" and result["mma"] != EXPECTED_MMA[cc]:
        found.append(f"{name}: no {EXPECTED_MMA[cc]} tensor-core MMA (found: {result['mma']})")
    return found


def arch_supported(arch):
    """None when the installed Triton can target ``arch``, else the reason it cannot."""
    if arch not in ARCHS:
        return f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})"
    try:
        from triton.backends import backends

        if "nvidia" not in backends:
            return "the installed triton has no NVIDIA backend"
    except ImportError as error:
        return f"triton is not installed ({error})"
    return None


def run_aot(archs, jobs=None, progress=None, every_main_loop=True, variant_archs=None, swept_dtypes=None):
    """Compile the registry for ``archs`` in worker processes; returns (results, unsupported {arch: reason}).
    ``every_main_loop`` False: main-loop reports of the jobs main_loop_verdicts reads only (compile_job);
    ``variant_archs``, ``swept_dtypes``: as registry_jobs takes them."""
    unsupported = {a: r for a in archs if (r := arch_supported(a))}
    todo = registry_jobs([a for a in archs if a not in unsupported], variant_archs, swept_dtypes)
    workers = jobs or os.cpu_count() or 1
    results = []
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init) as pool:
        for result in pool.map(functools.partial(compile_job, every_main_loop=every_main_loop), todo, chunksize=4):
            results.append(result)
            if progress:
                progress(result)
    return results, unsupported


def specialisation_problems(arch, jobs=None):
    """Each launch site's first variant compiled with its specialisable integers equal to 1 (compile_with_ones),
    in worker processes: the problems found, one line each."""
    from fused_unet.kernels import compile_matrix

    todo = [Job(kernel, site, 0, "fp32", 0, arch) for kernel, sites in compile_matrix.LAUNCH_VARIANTS.items()
            for site in sites]
    with concurrent.futures.ProcessPoolExecutor(jobs or os.cpu_count() or 1,
                                                mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init) as pool:
        errors = list(pool.map(compile_with_ones, todo))
    return [f"{job.kernel} ({job.site}, {arch}) with integer arguments equal to 1: {error}"
            for job, error in zip(todo, errors) if error]


def _spill_text(result):
    """Spilled bytes, with ``*`` when every local access sits outside the loops (paid once per program)."""
    return f"{result['spill_bytes']}{'*' if result['spill_bytes'] and result.get('loop_spills') == 0 else ''}"


def format_table(results):
    """One table per kernel and architecture; flag-variant jobs are folded into a count per site."""
    lines = []
    key = lambda r: (r["arch"], r["kernel"])  # noqa: E731
    for arch, kernel in sorted({key(r) for r in results}, key=lambda k: (k[0] != "sm_90", k)):
        rows = [r for r in results if key(r) == (arch, kernel)]
        lines.append(f"\n{kernel} — {arch}")
        lines.append(f"  {'site':<30} {'dtype':<5} {'config':<22} {'ok':<3} {'mma':<8} {'regs':>4} {'spill':>5} "
                     f"{'smem KiB':>8} {'blocks/SM':>9} {'warps/SM':>8} {'ceiling':>7} {'loop':>6}  loop loads")
        for r in rows:
            if r["variant"] != 0:
                continue
            if not r["ok"]:
                lines.append(f"  {r['site']:<30} {r['dtype']:<5} {r['config_text']:<22} NO  {r['error']}")
                continue
            ceiling = f"{r['ceiling']:.2f}" if r.get("ceiling") is not None else "-"
            loop = "+".join(map(str, r.get("loop_instructions") or [])) or "-"
            loads = ", ".join(f"{n} {kind}" for kind, n in (r.get("loads") or {}).items())
            lines.append(f"  {r['site']:<30} {r['dtype']:<5} {r['config_text']:<22} {'yes':<3} "
                         f"{r['mma'] if r['gemm'] else '-':<8} {r['regs']:>4} {_spill_text(r):>5} "
                         f"{r['shared_bytes'] / 1024:>8.1f} {r['blocks_per_sm']:>9} {r['warps_per_sm']:>8} "
                         f"{ceiling:>7} {loop:>6}  {loads}{' DIV' if r.get('int_division') else ''}")
        for site in dict.fromkeys(r["site"] for r in rows):
            flags = [r for r in rows if r["site"] == site and r["variant"] != 0]
            if flags:
                ok = sum(r["ok"] for r in flags)
                lines.append(f"  {site}: {ok}/{len(flags)} other flag variants compile (fp16, first config)")
    return "\n".join(lines)


def _target_variant(target):
    """(kernel, site, variant index) of a MAIN_LOOP_TARGETS entry in the compile matrix."""
    from fused_unet.kernels import compile_matrix

    variants = compile_matrix.LAUNCH_VARIANTS[target["kernel"]][target["site"]]
    return target["kernel"], target["site"], variants.index(compile_matrix.target_flags(target))


def _target_jobs(results, target, arch):
    return [r for r in results if r["ok"] and (r["kernel"], r["site"], r["variant"], r["dtype"], r["arch"]) ==
            (*_target_variant(target), "fp16", arch)]


def _fast(result):
    """128-bit cp.async / TMA loads only (sm_80: 128-bit vector loads, see sass.vector_loads_only), no division."""
    from fused_unet import sass

    vector = sass.fast_loads_only if result["arch"] == "sm_90" else sass.vector_loads_only
    return vector(result["loads"]) and not result["int_division"]


def main_loop_verdicts(results):
    """Per MAIN_LOOP_TARGETS entry (kernels/compile_matrix.py): its best sm_90 config, that config's ceiling and whether
    the target holds (ceiling — with ``overlap`` the issue efficiency, which counts a loop that waits for its own
    wgmma as headroom / (1 + headroom) — and with ``fast_loads`` 128-bit cp.async/TMA loads and no division on sm_90,
    128-bit loads and no division on sm_80). Plus the median ceiling over every compiled 16-bit sm_90 GEMM job."""
    from fused_unet import sass
    from fused_unet.kernels import compile_matrix

    verdicts = []
    for target in compile_matrix.MAIN_LOOP_TARGETS:
        def score(r, target=target):
            if r["ceiling"] is None or not target.get("overlap"):
                return r["ceiling"] or 0.0
            return sass.issue_efficiency(r["headroom"], r["wgmma_wait"])

        jobs = _target_jobs(results, target, "sm_90")
        eligible = [r for r in jobs if r["ceiling"] is not None and (not target["fast_loads"] or _fast(r))]
        best = max(eligible or jobs, key=score, default=None)
        ok = bool(eligible) and score(best) >= target["ceiling"]
        if target["fast_loads"] and any(r["arch"] == "sm_80" for r in results):
            ok = ok and any(_fast(r) for r in _target_jobs(results, target, "sm_80"))
        name = target["site"] + "".join(f" {k}={v}" for k, v in target["flags"].items())
        verdicts.append(dict(name=name, target=target["ceiling"], ok=ok, config=best and best["config_text"],
                             ceiling=best and score(best), headroom=best and best["headroom"],
                             wgmma_wait=best and best["wgmma_wait"], loop=best and best["loop_instructions"],
                             loads=best and best["loads"]))
    ceilings = [r["ceiling"] or 0.0 for r in results
                if r.get("gemm") and r["ok"] and r["arch"] == "sm_90" and r["dtype"] in ("fp16", "bf16")]
    if ceilings:
        median = statistics.median(ceilings)
        target = compile_matrix.MEDIAN_CEILING_TARGET
        verdicts.append(dict(name=f"median of {len(ceilings)} 16-bit GEMM jobs", target=target, ok=median >= target,
                             config=None, ceiling=median, headroom=None, wgmma_wait=None, loop=None, loads=None))
    return verdicts


def format_main_loops(verdicts, references):
    """The main-loop table (sm_90, 16-bit tensor-core ceiling), with the reference kernels beside ours."""
    lines = ["\nmain loops, sm_90, fp16: ceiling = min(1, HGMMA work / (2048 x SASS instructions per iteration)); "
             "wait: wgmma groups in flight (0: headroom / (1 + headroom) where the role asks for overlap)",
             f"  {'role':<44} {'target':>6} {'ceiling':>7} {'headroom':>8} {'wait':>4}  {'config':<20} {'loop':<12} "
             "loads"]

    def number(value):
        return f"{value:.2f}" if value is not None else "-"

    for v in verdicts:
        wait = "-" if v["wgmma_wait"] is None else v["wgmma_wait"]
        lines.append(f"  {v['name']:<44} {v['target']:>6.2f} {number(v['ceiling']):>7} {number(v['headroom']):>8} "
                     f"{wait:>4}  "
                     f"{v['config'] or '':<20} {str(v['loop'] or ''):<12} {v['loads'] or ''} "
                     f"{'ok' if v['ok'] else 'FAIL'}")
    for r in references:
        lines.append(f"  {'reference ' + r['kernel']:<44} {'':>6} {number(r.get('ceiling')):>7} "
                     f"{number(r.get('headroom')):>8} {r.get('wgmma_wait', '-'):>4}  {r['config_text']:<20} "
                     f"{str(r.get('loop_instructions') or '')[:12]:<12} {r.get('loads')}")
    return "\n".join(lines)
