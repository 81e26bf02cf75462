"""``fused-unet plan``: a static model of one training (or inference) step of a model, without a GPU.

The step runs on meta tensors with every kernel launch recorded instead of run (``kernels.specs.recording``): the
same launchers, the same shapes, flags and grids a GPU would get. Each launch's candidate configs (those the
autotuner may try: ``configs.gpu_configs``) are compiled for the target (sm_90 / sm_80, Triton's own compiler, no
GPU) and read like ``fused-unet doctor`` reads them; each gets a time from bounds:

  * tensor: FLOPs / (peak x issue efficiency x useful-MMA fraction x grid balance). Issue efficiency is the main
    loop's ceiling (``sass``), or headroom / (1 + headroom) when the loop waits for its own wgmma group before
    issuing the next (``WARPGROUP.DEPBAR.LE gsb0, 0x0``: MMA and the rest of the loop do not overlap); the
    useful fraction is the share of each tile's M, N and K that is not padding; the balance is
    CTAs / (SMs x the most CTAs one SM runs).
  * L2: the bytes the CTAs load into shared memory (every K step an A and a B tile; a bilinear source four A
    tiles) / the L2 bandwidth.
  * HBM: every tensor the launch reads or writes, once / the HBM bandwidth.

The largest bound wins, plus a per-launch overhead; the config with the best time is the plan's choice (the
autotuner measures instead). Element-wise launches have only the HBM bound. The step is the sum of its launches.
Every hardware constant is in HARDWARE with its source; the L2 bandwidth and the overhead are assumptions until a
GPU run measures them. Compiled kernels' static reports are cached on disk, so a second plan takes seconds."""
import concurrent.futures
import copy
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import sys
from pathlib import Path

import torch

from fused_unet import sass
from fused_unet.kernels import specs
from fused_unet.kernels.codes import NormTable

# Per target: the GPU the plan models and its constants (TFLOP/s dense, GB/s), each with its source.
HARDWARE = {
    "sm_90": dict(
        gpu="NVIDIA H100 SXM5", cc=90, sms=132, peak_tflops={"16bit": 989.4, "tf32": 494.7, "fp32": 66.9},
        hbm_gbps=3350.0, l2_gbps=5500.0, launch_us=2.0,
        sources={"sms, peaks, hbm_gbps": "NVIDIA H100 Tensor Core GPU datasheet (SXM5; dense tensor TFLOPS)",
                 "l2_gbps": "assumption: public microbenchmarks of H100 report 5.5-7 TB/s L2 read bandwidth; "
                            "a GPU run calibrates it",
                 "launch_us": "assumption: the GPU-side gap between back-to-back kernels"}),
    "sm_80": dict(
        gpu="NVIDIA A100 SXM4 80GB", cc=80, sms=108, peak_tflops={"16bit": 312.0, "tf32": 156.0, "fp32": 19.5},
        hbm_gbps=2039.0, l2_gbps=4000.0, launch_us=2.0,
        sources={"sms, peaks, hbm_gbps": "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB; dense tensor TFLOPS)",
                 "l2_gbps": "assumption: public microbenchmarks of A100 report about 4 TB/s L2 read bandwidth",
                 "launch_us": "assumption: the GPU-side gap between back-to-back kernels"}),
}
PLAN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_CACHE = Path(os.environ.get("FUSED_UNET_CACHE", Path.home() / ".cache" / "fused-unet")) / "plan"


@dataclasses.dataclass
class Recorded:
    """One launch of the step: its spec, kernel, grid, arguments, launch site, and where it came from."""
    spec: specs.KernelSpec
    kernel: object
    grid: object
    args: dict
    site: str
    layer: str
    pass_: str


def _site(spec, args):
    """The launch site (launcher) of a launch: the innermost caller named as one of the spec's sites, else the
    first site whose axes its flags take."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in spec.sites:
            return frame.f_code.co_name
        frame = frame.f_back

    def takes(choice):
        return all(args.get(k, v) == v for k, v in choice.items())

    return next((site for site, axes in spec.sites.items() if all(any(takes(c) for c in axis) for axis in axes)),
                spec.name)


def _callers(names):
    """(the autograd ctx of the Function the launch runs in, the model's conv module a caller holds as ``conv``):
    the ctx ties a backward launch to its forward's layer, the conv names a swapped graph's fused call."""
    ctx = module = None
    frame = sys._getframe(2)
    while frame is not None and (ctx is None or module is None):
        local = frame.f_locals
        if ctx is None and isinstance(local.get("ctx"), torch.autograd.function.FunctionCtx):
            ctx = local["ctx"]
        if module is None and id(local.get("conv")) in names:
            module = local["conv"]
        frame = frame.f_back
    return ctx, module


def record_step(model, x, mode="train", sms=None):
    """Every launch of one step of ``model`` on ``x`` (meta tensors), in order: forward, then (``mode`` "train")
    backward of the sum of the logits. ``sms``: the SM count the launchers size their grids for."""
    launches, stack, backward, layers = [], [], [False], {}
    names = {id(m): name for name, m in model.named_modules() if name}

    def record(spec, kernel, grid, args):
        ctx, module = _callers(names)
        if backward[0]:
            layer = layers.get(id(ctx), "")
        else:
            layer = names[id(module)] if module is not None else stack[-1] if stack else ""
            layers[id(ctx)] = layer
        launches.append(Recorded(spec, kernel, grid, args, _site(spec, args), layer,
                                 "backward" if backward[0] else "forward"))

    def enter(name):
        def hook(module, inputs):
            stack.append(name)
        return hook

    def leave(module, inputs, output):
        stack.pop()

    modules = [(name or type(m).__name__, m) for name, m in model.named_modules()]
    handles = [m.register_forward_pre_hook(enter(n)) for n, m in modules]
    handles += [m.register_forward_hook(leave) for _, m in modules]
    try:
        with specs.recording(record, sms=sms):
            model.train(mode == "train")
            if mode == "train":
                out = model(x)
                backward[0] = True
                out.backward(torch.ones_like(out))
            else:
                with torch.no_grad():
                    model(x)
    finally:
        for handle in handles:
            handle.remove()
    return launches


def _derived_flags(kernel, args, blocks):
    """The flags @triton.heuristics computes for a launch with these block sizes."""
    from triton.runtime import Autotuner, Heuristics

    out = {}
    while isinstance(kernel, (Autotuner, Heuristics)):
        if isinstance(kernel, Heuristics):
            out.update({name: fn({**args, **blocks}) for name, fn in kernel.values.items()})
        kernel = kernel.fn
    return out


def _data_tensor(launch):
    """The launch's first tensor of the launch dtype (a GEMM's A operand; a norm's weight, the first of a pair)."""
    param = next(p for p in launch.spec.params
                 if specs.TENSOR in (p.types if isinstance(p.types, tuple) else (p.types,)))
    value = launch.args[param.name]
    return value[0] if isinstance(param.types, tuple) else value


def _dtype_name(launch):
    """The launch's dtype as compile_matrix.DTYPE_VARIANTS names it: bf16 / fp16 / fp32 / tf32."""
    name = specs.element_type(_data_tensor(launch).dtype)
    return "tf32" if name == "fp32" and launch.args.get("INPUT_PRECISION") == "tf32" else name


def _flags(launch):
    """The launch's constexprs: its flags and the numbers a model sets (a leaky slope)."""
    return {p.name: launch.args[p.name] for p in launch.spec.params if p.role in ("flag", "value")}


def _job(launch, cfg, arch):
    """What compiling this launch with ``cfg`` for ``arch`` needs (plain data: it goes to a worker process and into
    the cache key), and its cache key. The dot's dtype is the launch dtype's on the GPU (the interpreter upcasts)."""
    spec = launch.spec
    constexprs = {**{k: v for k, v in _flags(launch).items() if k not in ("DOT_DTYPE", "INPUT_PRECISION")},
                  **_derived_flags(launch.kernel, launch.args, cfg.kwargs), **cfg.kwargs}
    named = {**constexprs, "DOT_DTYPE": None, "INPUT_PRECISION": None} if spec.gemm else constexprs
    signature, constants, attrs = spec.compile_signature(specs.TENSOR, named, values=launch.args)
    job = dict(kernel=spec.name, constexprs=constexprs, signature=signature,
               constants=[[list(k), v] for k, v in constants.items() if isinstance(k, tuple)],
               attrs=[[list(k), v] for k, v in attrs.items()], dtype=_dtype_name(launch), num_warps=cfg.num_warps,
               num_stages=cfg.num_stages, arch=arch)
    return job, hashlib.sha256(json.dumps([job, _source_hash()], sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _source_hash():
    """The kernels' source and the Triton version: a cached report is reused only for the same code."""
    import triton

    folder = Path(specs.__file__).parent
    text = "".join(p.read_text() for p in sorted(folder.glob("*.py")))
    return hashlib.sha256((text + triton.__version__).encode()).hexdigest()[:16]


def compile_static(job):
    """Compile one job (worker process) and return its static report: main-loop ceiling, headroom, wgmma wait,
    registers, shared memory, CTAs per SM (or the error)."""
    import triton
    import triton.language as tl

    from fused_unet import doctor
    from fused_unet.kernels import compile_matrix

    cc = HARDWARE[job["arch"]]["cc"]
    gemm = compile_matrix.SPECS[job["kernel"]].gemm
    fn = doctor.jit_function(doctor.kernels()[job["kernel"]])
    constants = {**job["constexprs"], **{tuple(path): v for path, v in job["constants"]}}
    if gemm:
        _, element, precision = next(d for d in compile_matrix.DTYPE_VARIANTS if d[0] == job["dtype"])
        constants.update(DOT_DTYPE=tl.dtype(element), INPUT_PRECISION=precision)
    attrs = {tuple(path): v for path, v in job["attrs"]}
    signature = {k: tuple(v) if isinstance(v, list) else v for k, v in job["signature"].items()}
    cfg = triton.Config({}, num_warps=job["num_warps"], num_stages=job["num_stages"])
    compiled = doctor._compile(fn, (signature, constants, attrs), cc, cfg)
    if isinstance(compiled, str):
        return dict(ok=False, error=compiled)
    report = dict(ok=True, **doctor.resources(compiled, cc, job["num_warps"]))
    report["blocks_per_sm"] = max(report["blocks_per_sm"], 1)
    if gemm:
        main = doctor.main_loop_report(compiled, cc, job["dtype"])
        report.update({k: main[k] for k in ("ceiling", "headroom", "wgmma_wait", "loop_instructions")})
    return report


def _static_reports(jobs, workers=None, progress=None):
    """{key: static report} of the jobs, from the disk cache or compiled in worker processes."""
    from fused_unet import doctor

    _CACHE.mkdir(parents=True, exist_ok=True)
    reports, todo = {}, {}
    for key, job in jobs.items():
        path = _CACHE / f"{key}.json"
        if path.exists():
            reports[key] = json.loads(path.read_text())
        else:
            todo[key] = job
    if todo:
        with concurrent.futures.ProcessPoolExecutor(workers or os.cpu_count() or 1,
                                                    mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=doctor._worker_init) as pool:
            for key, report in zip(todo, pool.map(compile_static, todo.values())):
                (_CACHE / f"{key}.json").write_text(json.dumps(report))
                reports[key] = report
                if progress:
                    progress()
    return reports


def _fraction(size, block):
    """The useful share of ``size`` padded to whole blocks."""
    return size / (math.ceil(size / block) * block) if size else 1.0


def _unique_bytes(launch):
    """Bytes of every distinct tensor the launch reads or writes (a tensor passed twice counts once)."""
    seen = {}
    for p in launch.spec.params:
        if p.role != "argument":
            continue
        for value in launch.args[p.name] if isinstance(p.types, tuple) else (launch.args[p.name],):
            if isinstance(value, torch.Tensor):
                seen[id(value)] = value.numel() * value.element_size()
    return sum(seen.values())


def _norm_table_bytes(table, rows, channels):
    """L2 bytes of one K step's per-sample scale and shift (kernels.conv._norm_affine): gathered, fp32 [rows,
    channels] tiles each, where rows of one image read the same channels, so a warp's 16-byte-per-thread request
    for 128 / channels rows fetches the sectors of one; else two fp32 [channels] rows each (IMAGE_PAIR)."""
    if table == NormTable.GATHER:
        return 2 * 4 * rows * channels * min(1.0, channels / 128)
    return 2 * 2 * 4 * channels if table == NormTable.IMAGE_PAIR else 0


def _gemm_shape(launch, cfg):
    """(M, N, K, useful fraction, L2 bytes loaded into shared memory) of a GEMM launch with ``cfg``."""
    from fused_unet.kernels import conv

    a, blocks = launch.args, cfg.kwargs
    bm, bn, bk = blocks["BLOCK_M"], blocks["BLOCK_N"], blocks["BLOCK_K"]
    element = _data_tensor(launch).element_size()
    grid = launch.grid(blocks)
    ctas = math.prod(grid)
    taps = a["KH"] * a["KW"]
    if launch.spec is specs.CONV2D_IMPLICIT_GEMM:
        channels = [c for c in (a["C_IN"], a["C_IN2"]) if c]
        m, n, k = a["BATCH"] * a["H_OUT"] * a["W_OUT"], a["C_OUT"], taps * sum(channels)
        # Rows padded to whole tiles (and, with FUSE_POOL, odd sizes to whole 2x2 windows) do no useful work.
        steps = math.ceil(k / bk) if a["FLAT_TAPS"] else taps * sum(math.ceil(c / bk) for c in channels)
        useful = m / (grid[0] * bm) * _fraction(n, bn) * k / (steps * bk)
        a_reads = 4 if a["UP_MODE"] >= 2 else 1  # bilinear: four corner tiles per A tile
        l2 = ctas * steps * bk * (a_reads * bm + bn) * element
        normed = [c for c, on in ((a["C_IN"], a["NORM_INPUT"]), (a["C_IN2"], a["NORM_INPUT2"])) if c and on]
        l2 += ctas * taps * sum(math.ceil(c / bk) for c in normed) * _norm_table_bytes(a["NORM_TABLE"], bm, bk)
    else:
        pixels = a["BATCH"] * a["H_A"] * a["W_A"]
        m, n, k = a["C_A"], taps * a["C_B"], pixels
        useful = _fraction(a["C_A"], bm) * _fraction(n if a["TAPS_ON_N"] else a["C_B"], bn)
        steps = math.ceil(conv.weight_grad_pixels_per_split(pixels, grid[2]) / bk)
        l2 = ctas * steps * bk * (bm + bn) * element
        if a["NORM_INPUT"]:
            l2 += ctas * steps * _norm_table_bytes(a["NORM_TABLE"], bk, bn if a["GRAD_OPERAND"] == 1 else bm)
    return m, n, k, useful, l2, ctas


def estimate(launch, cfg, report, hardware):
    """The bounds (ms) of ``launch`` run with ``cfg`` on ``hardware``, the limiting one, and the time."""
    from fused_unet.kernels import configs

    hbm = _unique_bytes(launch)
    bounds = {"hbm": hbm / (hardware["hbm_gbps"] * 1e9) * 1e3}
    row = dict(flops=0, bytes=hbm, l2_bytes=0, useful=None, balance=None, issue=None, ctas=None,
               wgmma_wait=report.get("wgmma_wait"), headroom=report.get("headroom"),
               blocks_per_sm=report.get("blocks_per_sm"))
    if launch.spec.gemm:
        m, n, k, useful, l2, ctas = _gemm_shape(launch, cfg)
        sms = hardware["sms"]
        balance = ctas / (sms * math.ceil(ctas / sms)) if ctas else 1.0
        cls = configs.precision_class(_dtype_name(launch))
        headroom = report.get("headroom")
        # IEEE fp32: FMA units, no tensor-core loop to read.
        issue = 1.0 if headroom is None else sass.issue_efficiency(headroom, report.get("wgmma_wait"))
        flops = 2 * m * n * k
        bounds["tensor"] = flops / (hardware["peak_tflops"][cls] * 1e12 * issue * useful * balance) * 1e3
        bounds["l2"] = l2 / (hardware["l2_gbps"] * 1e9) * 1e3
        row.update(flops=flops, l2_bytes=l2, useful=useful, balance=balance, issue=issue, ctas=ctas)
    limit = max(bounds, key=bounds.get)
    return dict(row, bounds=bounds, limit=limit, ms=bounds[limit] + hardware["launch_us"] * 1e-3)


def _config_text(cfg):
    blocks = "x".join(str(v) for v in cfg.kwargs.values())
    return f"{blocks} w{cfg.num_warps} s{cfg.num_stages}"


def plan(model, example_input, dtype="bf16", mode="train", arch="sm_90", candidates=None, workers=None,
         progress=None):
    """The static plan of one step (``mode`` "train": forward + backward; "infer") of ``model`` (a fused_unet model,
    or any model after ``fused_unet.swap``) on a batch shaped like ``example_input``, in ``dtype`` ("bf16",
    "fp16", "fp32"), for ``arch`` ("sm_90", "sm_80"): {"step": {"ms", "img_per_s", "fraction_of_peak",
    "limit_ms", "flops"}, "launches": [{"name", "layer", "pass", "config", "candidates", "flops", "bytes",
    "l2_bytes", "bounds", "limit", "ms", "fraction_of_peak", ...}]}. Runs on meta tensors: no GPU, no data; the
    model itself is not touched (a copy is planned). ``candidates``: at most this many configs per launch (default:
    every config that fits)."""
    from fused_unet.kernels import configs

    if dtype not in PLAN_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(PLAN_DTYPES)}, got {dtype!r}")
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}")
    if arch not in HARDWARE:
        raise ValueError(f"arch must be one of {tuple(HARDWARE)}, got {arch!r}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise TypeError(f"example_input must be a [N, C, H, W] tensor, got {type(example_input).__name__}")
    hardware = HARDWARE[arch]
    meta = copy.deepcopy(model).to("meta", PLAN_DTYPES[dtype])
    x = torch.empty(example_input.shape, device="meta", dtype=PLAN_DTYPES[dtype],
                    memory_format=torch.channels_last)
    launches = record_step(meta, x, mode, hardware["sms"])
    options, jobs = [], {}
    for launch in launches:
        cfgs = configs.gpu_configs(launch.spec.name, _dtype_name(launch), _flags(launch), hardware["cc"])
        keyed = []
        for cfg in cfgs[:candidates] if candidates else cfgs:
            job, key = _job(launch, cfg, arch)
            jobs[key] = job
            keyed.append((cfg, key))
        options.append(keyed)
    reports = _static_reports(jobs, workers, progress)
    peak = hardware["peak_tflops"][{"fp32": "tf32"}.get(dtype, "16bit")] * 1e12
    rows = []
    for launch, keyed in zip(launches, options):
        tried = sorted(((cfg, estimate(launch, cfg, reports[key], hardware)) for cfg, key in keyed
                        if reports[key]["ok"]), key=lambda t: t[1]["ms"])
        if not tried:
            raise RuntimeError(f"{launch.spec.name}/{launch.site}: no config compiles for {arch} "
                               f"({reports[keyed[0][1]].get('error')})")
        cfg, best = tried[0]
        row = dict(best, name=f"{launch.spec.name}/{launch.site}", layer=launch.layer, config=_config_text(cfg),
                   candidates=[dict(config=_config_text(c), ms=e["ms"]) for c, e in tried[:3]],
                   fraction_of_peak=best["flops"] / (best["ms"] * 1e-3 * peak) if best["flops"] else None)
        row["pass"] = launch.pass_
        rows.append(row)
    step_ms = sum(r["ms"] for r in rows)
    flops = sum(r["flops"] for r in rows)
    return dict(arch=arch, gpu=hardware["gpu"], dtype=dtype, mode=mode, batch=x.shape[0],
                hardware=hardware, step=dict(ms=step_ms, img_per_s=x.shape[0] / (step_ms * 1e-3),
                                             fraction_of_peak=flops / (step_ms * 1e-3 * peak),
                                             limit_ms=flops / peak * 1e3, flops=flops), launches=rows)


def format_plan(result, top=None):
    """The plan as text: one line per launch (or the ``top`` slowest), then the step."""
    rows = result["launches"]
    shown = sorted(rows, key=lambda r: -r["ms"])[:top] if top else rows
    lines = [f"static plan for {result['gpu']} ({result['arch']}): {len(rows)} launches of fused_unet's kernels "
             "(what runs in eager PyTorch, e.g. a swapped model's unsupported layers, is not in it)",
             f"  {'pass':<8} {'layer':<34} {'launch':<46} {'config':<18} {'GFLOP':>7} {'MB':>7} {'L2 B/F':>6} "
             f"{'ms':>8} {'limit':<6} {'% peak':>6}"]
    for r in shown:
        share = f"{100 * r['fraction_of_peak']:.0f}" if r["fraction_of_peak"] is not None else "-"
        per_flop = f"{r['l2_bytes'] / r['flops']:.3f}" if r["flops"] else "-"  # L2 -> shared bytes per FLOP
        lines.append(f"  {r['pass']:<8} {r['layer'][:34]:<34} {r['name'][:46]:<46} {r['config']:<18} "
                     f"{r['flops'] / 1e9:>7.1f} {r['bytes'] / 1e6:>7.1f} {per_flop:>6} {r['ms']:>8.3f} {r['limit']:<6} "
                     f"{share:>6}")
    step = result["step"]
    lines.append(f"step ({result['mode']}, batch {result['batch']}, {result['dtype']}): {step['ms']:.2f} ms predicted, "
                 f"{step['img_per_s']:.0f} img/s, {100 * step['fraction_of_peak']:.0f}% of the tensor peak; at "
                 f"peak its {step['flops'] / 1e12:.2f} TFLOP take {step['limit_ms']:.2f} ms")
    return "\n".join(lines)
