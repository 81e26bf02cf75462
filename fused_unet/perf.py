"""Performance model and measurement helpers shared by ``fused-unet bench`` and ``fused-unet profile``:
a per-layer FLOP / byte model, GPU timing with CUDA events, and peak probes (matmul TFLOP/s, copy GB/s)."""
import dataclasses
import statistics
from pathlib import Path

import torch
from torch import nn

from fused_unet.functional import Normalized


def _elem(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _tensors(value):
    """The tensors a layer takes or returns: a pending batch norm (Normalized) counts as its stored ``y``."""
    values = value if isinstance(value, tuple) and not isinstance(value, Normalized) else (value,)
    return tuple(v.y if isinstance(v, Normalized) else v for v in values)


def layer_costs(model, x, dtype=None):
    """One forward of ``model(x)`` with hooks on every conv / transposed conv / max-pool; for each layer its
    name, kind, output shape, forward FLOPs (multiply-add = 2) and the bytes a fused kernel must move (read the
    input and weights, write the output) at ``dtype`` (default: x's). Backward costs ~2x these FLOPs."""
    size = _elem(dtype or x.dtype)
    rows, handles = [], []

    def hook(name):
        def record(module, inputs, output):
            inp = _tensors(inputs[0])[0]
            outs = _tensors(output)  # a conv+pool returns (y, pooled)
            out = outs[0]
            if isinstance(module, nn.ConvTranspose2d):
                n, c_in, h, w = inp.shape
                flops = 2 * n * h * w * c_in * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                kind = "conv_transpose2d"
            elif isinstance(module, nn.Conv2d):
                n, c_out, h, w = out.shape
                k = module.kernel_size[0] * module.kernel_size[1]
                flops = 2 * n * h * w * c_out * module.in_channels // module.groups * k
                kind = f"conv2d {module.kernel_size[0]}x{module.kernel_size[1]}"
            else:
                flops = 3 * out.numel()  # three comparisons per 2x2 window
                kind = "max_pool2d"
            if len(outs) > 1:
                flops += 3 * outs[1].numel()
                kind += " + max_pool2d"
            weights = sum(p.numel() for p in module.parameters(recurse=False))
            others = sum(_tensors(t)[0].numel() for t in inputs[1:])  # a concat's skip
            moved = (inp.numel() + others + weights + sum(o.numel() for o in outs)) * size
            if any(r["name"] == name for r in rows):
                # A module called more than once (the shared pool): one row with the sum of its calls.
                row = next(r for r in rows if r["name"] == name)
                row.update(calls=row["calls"] + 1, flops=row["flops"] + flops, bytes=row["bytes"] + moved)
                row["intensity"] = row["flops"] / max(row["bytes"], 1)
                return
            rows.append(dict(name=name, kind=kind, shape=list(out.shape), flops=flops, bytes=moved,
                             intensity=flops / max(moved, 1), calls=1))
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d)):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return rows


def cuda_time_ms(fn, warmup=5, iters=20):
    """Median and 20/80% quantiles of ``fn()`` in ms, timed with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return dict(median=statistics.median(times), p20=q[1], p80=q[7], samples=len(times))


def matmul_peak_tflops(device, dtype=torch.bfloat16, n=8192):
    """Measured dense matmul throughput (TFLOP/s) of this GPU in ``dtype``: the 100% of ``% of peak``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = cuda_time_ms(lambda: a @ b, warmup=3, iters=10)["median"]
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_peak_gbps(device, nbytes=1 << 30):
    """Measured device-to-device copy bandwidth (GB/s, read + write): the memory roof."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), warmup=3, iters=10)["median"]
    return 2 * nbytes / (ms * 1e-3) / 1e9


def roofline_ms(flops, nbytes, peak_tflops, peak_gbps):
    """The lower bound on a layer's time from compute and memory roofs."""
    return max(flops / (peak_tflops * 1e12), nbytes / (peak_gbps * 1e9)) * 1e3


def gpu_info(device):
    props = torch.cuda.get_device_properties(device)
    return dict(name=props.name, capability=f"sm_{props.major}{props.minor}", sms=props.multi_processor_count,
                memory_gib=round(props.total_memory / 2**30, 1))


def _layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d))]


def profile_layers(model, x, y, autocast_dtype=None, steps=3):
    """Forward and backward time of every conv / transposed conv / pool of one training step, with CUDA events
    recorded by module hooks; the median of ``steps`` steps after one warm-up step. {name: (fwd_ms, bwd_ms)};
    a module called several times (the shared pool) gets the sum of its calls."""
    import torch.nn.functional as F

    events, handles = {}, []

    def mark(name, phase, edge):
        def hook(*_):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            pairs = events.setdefault((name, phase), [])
            if edge == "start":
                pairs.append([event, None])
            elif pairs:
                pairs[-1][1] = event
        return hook

    for name, module in _layers(model):
        handles += [module.register_forward_pre_hook(mark(name, "fwd", "start")),
                    module.register_forward_hook(mark(name, "fwd", "end")),
                    module.register_full_backward_pre_hook(mark(name, "bwd", "start")),
                    module.register_full_backward_hook(mark(name, "bwd", "end"))]
    samples = {}
    try:
        for step in range(steps + 1):
            events.clear()
            with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if step:
                for key, pairs in events.items():
                    samples.setdefault(key, []).append(sum(a.elapsed_time(b) for a, b in pairs if b is not None))
    finally:
        for h in handles:
            h.remove()
    return {name: (statistics.median(samples.get((name, "fwd"), [0.0])),
                   statistics.median(samples.get((name, "bwd"), [0.0]))) for name, _ in _layers(model)}


def profile_table(costs, times=None, peak_tflops=None, peak_gbps=None, train=True):
    """Rows per layer: FLOPs, bytes, arithmetic intensity and, with ``times``, measured ms, roofline ms and % of
    roofline, sorted by time lost (measured - roofline). Training counts backward as 2x forward FLOPs, bytes."""
    factor = 3 if train else 1
    rows = []
    for c in costs:
        row = dict(c, flops=c["flops"] * factor, bytes=c["bytes"] * factor)
        if times is not None:
            fwd, bwd = times.get(c["name"], (0.0, 0.0))
            measured = fwd + (bwd if train else 0.0)
            roof = roofline_ms(row["flops"], row["bytes"], peak_tflops, peak_gbps)
            row.update(fwd_ms=fwd, bwd_ms=bwd, ms=measured, roofline_ms=roof,
                       pct_of_roofline=100 * roof / measured if measured else 0.0,
                       tflops=row["flops"] / (measured * 1e-3) / 1e12 if measured else 0.0, lost_ms=measured - roof)
        rows.append(row)
    if times is not None:
        rows.sort(key=lambda r: -r["lost_ms"])
    return rows


def format_profile(rows, title):
    timed = "ms" in rows[0] if rows else False
    head = f"{'layer':<32} {'kind':<24} {'GFLOP':>8} {'MB':>8} {'FLOP/B':>7}"
    if timed:
        head += f" {'fwd ms':>7} {'bwd ms':>7} {'roof ms':>7} {'% roof':>6} {'TFLOP/s':>7} {'lost ms':>7}"
    lines = [title, head]
    for r in rows:
        line = f"{r['name']:<32} {r['kind']:<24} {r['flops'] / 1e9:>8.2f} {r['bytes'] / 1e6:>8.1f} {r['intensity']:>7.1f}"
        if timed:
            line += (f" {r['fwd_ms']:>7.3f} {r['bwd_ms']:>7.3f} {r['roofline_ms']:>7.3f} {r['pct_of_roofline']:>5.0f}%"
                     f" {r['tflops']:>7.1f} {r['lost_ms']:>7.3f}")
        lines.append(line)
    total_flops = sum(r["flops"] for r in rows)
    total_bytes = sum(r["bytes"] for r in rows)
    lines.append(f"{'total':<32} {'':<24} {total_flops / 1e9:>8.2f} {total_bytes / 1e6:>8.1f} "
                 f"{total_flops / max(total_bytes, 1):>7.1f}" + (f" {sum(r['fwd_ms'] for r in rows):>7.3f} "
                                                                 f"{sum(r['bwd_ms'] for r in rows):>7.3f}" if timed else ""))
    return "\n".join(lines)


def _costs(s):
    """(title, per-layer costs) of one step of the U-Net of benchmark settings ``s`` (shapes only)."""
    from fused_unet.benchmark import DTYPES, model_kwargs
    from fused_unet.models import ReferenceUNet

    batch = s.batch_sizes[0]
    x = torch.zeros(batch, 3, s.size, s.size, device="meta")  # the cost model needs shapes only
    title = (f"U-Net base {s.base_channels}, depth {s.depth}, {s.size}x{s.size}, batch {batch}, {s.mode}, "
             f"{s.dtype}")
    return title, layer_costs(ReferenceUNet(**model_kwargs(s)).to("meta"), x, DTYPES[s.dtype])


def cost_model(s):
    """(title, rows of profile_table without times) of benchmark settings ``s``: no GPU needed."""
    title, costs = _costs(s)
    return title, profile_table(costs, train=s.mode == "train")


def profile(s, trace=None, log=print):
    """``fused-unet profile`` on a CUDA GPU: every conv / transposed conv / pool of one step of the fused and the
    eager-cl-amp U-Net timed with CUDA events, beside its FLOPs, bytes and % of roofline (from the measured matmul
    peak and copy bandwidth); ``trace``: also a Chrome trace per model (FILE.<model>.json). Returns the report."""
    from fused_unet import candidates
    from fused_unet.benchmark import DTYPES, matmul_peak_dtype, model_kwargs
    from fused_unet.models import ReferenceUNet, UNet

    batch = s.batch_sizes[0]
    title, costs = _costs(s)
    device = torch.device("cuda")
    peak_tflops = matmul_peak_tflops(device, matmul_peak_dtype(s))
    peak_gbps = copy_peak_gbps(device)
    amp = DTYPES[s.dtype] if s.dtype != "fp32" else None
    report = dict(gpu=gpu_info(device), torch=torch.__version__, matmul_peak_tflops=peak_tflops,
                  copy_peak_gbps=peak_gbps, settings=dataclasses.asdict(s), models={})
    log(f"{report['gpu']['name']}: matmul peak {peak_tflops:.0f} TFLOP/s, copy {peak_gbps:.0f} GB/s")
    for name, cls in (("fused", UNet), ("eager-cl-amp", ReferenceUNet)):
        torch.manual_seed(0)
        model = cls(**model_kwargs(s)).to(device, memory_format=torch.channels_last)
        xd = torch.randn(batch, 3, s.size, s.size, device=device).contiguous(memory_format=torch.channels_last)
        yd = torch.randint(0, 2, (batch, s.size, s.size), device=device)
        rows = profile_table(costs, profile_layers(model, xd, yd, amp), peak_tflops, peak_gbps,
                             train=s.mode == "train")
        log("\n" + format_profile(rows, f"{name}: {title}"))
        report["models"][name] = rows
        if name == "fused":
            report["backward_choices"] = candidates.chosen()
            log("backward GEMMs, chosen by timing (our Triton kernel or aten / cuDNN):")
            for key, choice in report["backward_choices"].items():
                log(f"  {key}: {choice}")
        if trace:
            path = Path(trace).with_suffix(f".{name}.json")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                profile_layers(model, xd, yd, amp, steps=1)
            prof.export_chrome_trace(str(path))
            log(f"wrote Chrome trace {path}")
    return report


def static_lines(doctor_report, capability, dtype_name):
    """One line per kernel of a ``fused-unet doctor --json`` report at its U-Net variant on this GPU and dtype."""
    return [f"  {r['kernel']}/{r['site']} [{r['config_text']}]: {r['regs']} regs, {r['shared_bytes'] / 1024:.0f} KiB "
            f"smem, {r['blocks_per_sm']} blocks/SM, mma {r['mma']}"
            for r in doctor_report.get("results", [])
            if r.get("ok") and r["variant"] == 0 and r["arch"] == capability and r["dtype"] == dtype_name]
