"""``fused-unet bench``: throughput, memory and the largest batch of the fused U-Net against the
alternatives (eager PyTorch, channels_last + autocast, torch.compile), written as JSON, Markdown and plots."""
import dataclasses
import datetime
import gc
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fused_unet import candidates, perf
from fused_unet.models import ReferenceUNet, UNet
from fused_unet.utils import error_summary

CONTENDERS = ("fused", "eager", "eager-cl-amp", "compile", "compile-max-autotune", "fused-compile")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclasses.dataclass
class Settings:
    base_channels: int = 64
    depth: int = 4
    in_channels: int = 3
    num_classes: int = 2
    size: int = 512
    up_mode: str = "transpose"
    norm: str = "none"
    block: str = "plain"
    batch_sizes: tuple = (16,)
    dtype: str = "bf16"
    contenders: tuple = ("fused", "eager", "eager-cl-amp", "compile", "compile-max-autotune")
    mode: str = "train"
    warmup: int = 5
    iters: int = 20
    max_batch: bool = True
    max_batch_limit: int = 1024


def model_kwargs(s):
    """The UNet / ReferenceUNet arguments of settings ``s``."""
    return dict(in_channels=s.in_channels, num_classes=s.num_classes, base_channels=s.base_channels, depth=s.depth,
                up_mode=s.up_mode, norm=None if s.norm == "none" else s.norm, block=s.block)


def matmul_peak_dtype(s):
    """The dtype whose matmul peak is the 100% of ``% of peak``: fp16 for fp16 runs, bf16 otherwise."""
    return torch.float16 if s.dtype == "fp16" else torch.bfloat16


def _stem(settings):
    return f"{settings['mode']}-{settings['size']}-{settings['dtype']}"


@dataclasses.dataclass
class Contender:
    name: str
    model: torch.nn.Module
    channels_last: bool
    autocast: bool
    optimizer: torch.optim.Optimizer = None


def build_contender(name, s, device):
    """The model of one contender, all with the same initial weights. Autocast uses ``s.dtype`` (none for fp32)."""
    torch.manual_seed(0)
    reference = ReferenceUNet(**model_kwargs(s))
    amp = s.dtype != "fp32"
    if name in ("fused", "fused-compile"):
        model = UNet(**model_kwargs(s))
        model.load_state_dict(reference.state_dict())
    else:
        model = reference
    channels_last = name != "eager"
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if name in ("compile", "fused-compile"):
        model = torch.compile(model)
    elif name == "compile-max-autotune":
        model = torch.compile(model, mode="max-autotune")
    contender = Contender(name, model, channels_last, amp and name != "eager")
    if s.mode == "train":
        contender.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return contender


def make_inputs(s, batch, device, channels_last):
    x = torch.randn(batch, s.in_channels, s.size, s.size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.num_classes, (batch, s.size, s.size), device=device)
    return x, y


def make_step(c, s, x, y):
    """One training step (forward, loss, backward, optimizer) or one inference forward."""
    dtype = DTYPES[s.dtype]

    if s.mode == "train":
        def step():
            with torch.autocast(x.device.type, dtype=dtype, enabled=c.autocast):
                loss = F.cross_entropy(c.model(x), y)
            loss.backward()
            c.optimizer.step()
            c.optimizer.zero_grad(set_to_none=True)
    else:
        def step():
            with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=c.autocast):
                c.model(x)
    return step


def _release():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fits_in_memory(step, optimizer=None):
    """Whether ``step()`` runs on the GPU without running out of memory; the gradients and cached memory are
    released either way. The one out-of-memory probe of ``bench`` and ``train --find-max-batch``."""
    try:
        step()
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        _release()


def _fits(c, s, batch, device):
    return fits_in_memory(lambda: make_step(c, s, *make_inputs(s, batch, device, c.channels_last))(), c.optimizer)


def largest_batch(fits, start, limit):
    """The largest batch for which ``fits(batch)`` (one step ran without running out of memory): doubling from
    ``start`` up to ``limit``, then bisection."""
    ok, bad = 0, None
    batch = start
    while batch <= limit:
        if not fits(batch):
            bad = batch
            break
        ok, batch = batch, batch * 2
    if bad is None:
        return ok
    while bad - ok > 1:
        mid = (ok + bad) // 2
        ok, bad = (mid, bad) if fits(mid) else (ok, mid)
    return ok


def measure(c, s, batch, device, train_flops_per_image, peak_tflops):
    x, y = make_inputs(s, batch, device, c.channels_last)
    step = make_step(c, s, x, y)
    step()  # compile / autotune / first-call work is excluded from the timings
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    times = perf.cuda_time_ms(step, s.warmup, s.iters)
    peak = torch.cuda.max_memory_allocated(device)
    tflops = train_flops_per_image * batch / (times["median"] * 1e-3) / 1e12
    return dict(batch=batch, ms_median=times["median"], ms_p20=times["p20"], ms_p80=times["p80"],
                img_per_s=batch / (times["median"] * 1e-3), img_per_s_p20=batch / (times["p80"] * 1e-3),
                img_per_s_p80=batch / (times["p20"] * 1e-3), peak_memory_gib=peak / 2**30,
                tflops=tflops, pct_of_matmul_peak=100 * tflops / peak_tflops)


def flops_per_image(s):
    model = ReferenceUNet(**model_kwargs(s)).to("meta")
    x = torch.zeros(1, s.in_channels, s.size, s.size, device="meta")  # shapes only: no memory, no compute
    forward = sum(r["flops"] for r in perf.layer_costs(model, x))
    # Training: the backward of a conv costs two forwards (input-grad and weight-grad).
    return forward * (3 if s.mode == "train" else 1)


def run(s, device, log=print, contender_done=lambda: None):
    """Run every contender x batch; a contender that fails (e.g. torch.compile of our kernels) is recorded."""
    import triton

    device = torch.device(device)
    gpu = perf.gpu_info(device)
    peak_dtype = matmul_peak_dtype(s)
    log(f"probing {gpu['name']}: {str(peak_dtype).removeprefix('torch.')} matmul peak and copy bandwidth")
    peak_tflops = perf.matmul_peak_tflops(device, peak_dtype)
    peak_gbps = perf.copy_peak_gbps(device)
    per_image = flops_per_image(s)
    results = dict(
        gpu=gpu, date=datetime.date.today().isoformat(), torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda, python=platform.python_version(), settings=dataclasses.asdict(s),
        matmul_peak_tflops=peak_tflops, matmul_peak_dtype=str(peak_dtype).removeprefix("torch."),
        copy_peak_gbps=peak_gbps, flops_per_image=per_image, contenders={})
    for name in s.contenders:
        log(f"{name}: building")
        entry = results["contenders"][name] = dict(runs=[], error=None, max_batch=None)
        try:
            c = build_contender(name, s, device)
            for batch in s.batch_sizes:
                started = time.time()
                run_ = measure(c, s, batch, device, per_image, peak_tflops)
                entry["runs"].append(run_)
                log(f"{name}: batch {batch}: {run_['img_per_s']:.1f} img/s, {run_['ms_median']:.2f} ms, "
                    f"{run_['peak_memory_gib']:.2f} GiB ({time.time() - started:.0f}s)")
            if s.max_batch:
                entry["max_batch"] = largest_batch(lambda batch: _fits(c, s, batch, device), max(s.batch_sizes),
                                                   s.max_batch_limit)
                log(f"{name}: largest batch {entry['max_batch']}")
        except Exception as error:  # one contender failing (compile of custom kernels, OOM) must not stop the rest
            entry["error"] = error_summary(error, 300)
            log(f"{name}: FAILED {entry['error']}")
        finally:
            c = None
            _release()
            contender_done()
    # Which backward GEMM (our kernel or aten's / cuDNN) each fused layer shape chose by timing.
    results["backward_choices"] = candidates.chosen()
    return results


def table(results):
    """A Markdown table of every contender x batch (a failed contender gets one row with its error)."""
    s = results["settings"]
    lines = [f"U-Net base {s['base_channels']}, depth {s['depth']}, {s['size']}x{s['size']}, {s['mode']}, "
             f"{s['dtype']} — {results['gpu']['name']}, torch {results['torch']}, triton {results['triton']}, "
             f"{results['date']}. Matmul peak measured: {results['matmul_peak_tflops']:.0f} TFLOP/s "
             f"({results['matmul_peak_dtype']}), copy: {results['copy_peak_gbps']:.0f} GB/s.", "",
             "| contender | batch | img/s (p20–p80) | ms/iter | peak GiB | TFLOP/s | % matmul peak | max batch |",
             "|---|---|---|---|---|---|---|---|"]
    for name, entry in results["contenders"].items():
        if entry["error"]:
            lines.append(f"| {name} | – | failed: {entry['error']} | | | | | |")
        for r in entry["runs"]:
            lines.append(f"| {name} | {r['batch']} | {r['img_per_s']:.1f} ({r['img_per_s_p20']:.1f}–"
                         f"{r['img_per_s_p80']:.1f}) | {r['ms_median']:.2f} | {r['peak_memory_gib']:.2f} | "
                         f"{r['tflops']:.1f} | {r['pct_of_matmul_peak']:.0f}% | {entry['max_batch'] or '–'} |")
    choices = list(results.get("backward_choices", {}).values())
    if choices:
        lines += ["", f"Backward GEMMs of the fused model, chosen by timing per layer shape: "
                      f"{choices.count('triton')} ours (Triton), {choices.count('aten')} aten (cuDNN)."]
    return "\n".join(lines)


def compare(a, b):
    """Ratios B/A of img/s, peak memory and max batch for the contender x batch pairs in both results."""
    lines = ["| contender | batch | img/s A | img/s B | B/A | peak GiB B/A | max batch B/A |", "|---|---|---|---|---|---|---|"]
    for name, ea in a["contenders"].items():
        eb = b["contenders"].get(name)
        if not eb:
            continue
        runs_b = {r["batch"]: r for r in eb["runs"]}
        for ra in ea["runs"]:
            rb = runs_b.get(ra["batch"])
            if rb:
                mb = f"{eb['max_batch'] / ea['max_batch']:.2f}" if ea["max_batch"] and eb["max_batch"] else "–"
                lines.append(f"| {name} | {ra['batch']} | {ra['img_per_s']:.1f} | {rb['img_per_s']:.1f} | "
                             f"{rb['img_per_s'] / ra['img_per_s']:.2f} | "
                             f"{rb['peak_memory_gib'] / ra['peak_memory_gib']:.2f} | {mb} |")
    return "\n".join(lines)


def plot(results, out_dir):
    """img/s and peak memory against batch, one line per contender (needs matplotlib; skipped without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    s = results["settings"]
    stem = _stem(s)
    for key, label, filename in (("img_per_s", "images / s", f"{stem}-img_per_s.png"),
                                 ("peak_memory_gib", "peak memory (GiB)", f"{stem}-peak_memory.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, entry in results["contenders"].items():
            if entry["runs"]:
                ax.plot([r["batch"] for r in entry["runs"]], [r[key] for r in entry["runs"]], marker="o", label=name)
        ax.set_xlabel("batch")
        ax.set_ylabel(label)
        ax.set_title(f"{results['gpu']['name']} — {s['mode']}, {s['size']}x{s['size']}, {s['dtype']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(Path(out_dir) / filename)
        plt.close(fig)
        written.append(filename)
    return written


def default_out_dir(gpu_name):
    safe = "".join(ch if ch.isalnum() else "-" for ch in gpu_name).strip("-").lower()
    return Path("bench") / "results" / safe


def write(results, out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _stem(results["settings"])
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out_dir / f"{stem}.md").write_text(table(results) + "\n")
    return [f"{stem}.json", f"{stem}.md"] + plot(results, out_dir)


# `fused-unet bench --cpu-smoke` without shape flags: a model the Triton interpreter steps through in seconds.
CPU_SMOKE = dict(size=32, base_channels=8, depth=2, batch_sizes=(2,))


def cpu_smoke(s, log=print):
    """The CPU stand-in: one step of the fused model through the Triton interpreter and of the eager model (a
    check that the code runs, not a throughput number), and the saved-activation memory of each. Returns a
    results dict for ``write_cpu_smoke``."""
    from fused_unet import dispatch
    from fused_unet.utils import saved_activation_bytes

    rows = []
    for name in ("fused", "eager"):
        torch.manual_seed(0)
        model = (UNet if name == "fused" else ReferenceUNet)(**model_kwargs(s))
        x, y = make_inputs(s, s.batch_sizes[0], "cpu", name == "fused")
        started = time.time()
        F.cross_entropy(model(x), y).backward()
        seconds = time.time() - started
        saved = saved_activation_bytes(model, x)
        backend = dispatch.backend(x) if name == "fused" else "eager"
        rows.append(dict(contender=name, backend=backend, seconds=seconds, saved_activation_mib=saved / 2**20))
        log(f"{name:6s} [{backend}]: one fwd+bwd {seconds:.1f}s (CPU smoke, not a throughput number); "
            f"saved activations {saved / 2**20:.2f} MiB")
    ratio = rows[0]["saved_activation_mib"] / rows[1]["saved_activation_mib"]
    log(f"saved-activation memory, fused / eager: {ratio:.2f}x (fp32, batch {s.batch_sizes[0]}, "
        f"{s.size}x{s.size}, base {s.base_channels}, depth {s.depth})")
    import triton

    ran = dataclasses.replace(s, dtype="fp32", contenders=("fused", "eager"), warmup=0, iters=1, max_batch=False)
    return dict(kind="cpu-smoke", date=datetime.date.today().isoformat(), torch=torch.__version__,
                triton=triton.__version__, python=platform.python_version(), settings=dataclasses.asdict(ran),
                runs=rows, saved_activation_ratio=ratio)


def write_cpu_smoke(results, out_dir):
    """The CPU smoke's JSON and a Markdown table, named like the GPU results; returns the file names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = results["settings"]
    stem = f"cpu-smoke-{s['size']}-base{s['base_channels']}-depth{s['depth']}"
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    lines = [f"CPU smoke: U-Net base {s['base_channels']}, depth {s['depth']}, {s['size']}x{s['size']}, batch "
             f"{s['batch_sizes'][0]}, fp32 — torch {results['torch']}, triton {results['triton']}, {results['date']}. "
             "One forward + backward each; seconds are interpreter time, not throughput.", "",
             "| contender | backend | seconds | saved activations (MiB) |", "|---|---|---|---|"]
    lines += [f"| {r['contender']} | {r['backend']} | {r['seconds']:.1f} | {r['saved_activation_mib']:.2f} |"
              for r in results["runs"]]
    lines += ["", f"Saved-activation memory, fused / eager: {results['saved_activation_ratio']:.2f}x."]
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return [f"{stem}.json", f"{stem}.md"]


def saved_activations(s):
    """What one training forward of the fused and the eager U-Net saves for backward (bytes), measured on meta
    tensors (shapes only: any size, no GPU) in dtype ``s.dtype``, batch ``s.batch_sizes[0]``."""
    from fused_unet.utils import saved_activation_bytes

    dtype = DTYPES[s.dtype]
    x = torch.empty(s.batch_sizes[0], s.in_channels, s.size, s.size, device="meta", dtype=dtype, requires_grad=True)
    saved = {name: saved_activation_bytes(cls(**model_kwargs(s)).to("meta", dtype), x)
             for name, cls in (("fused", UNet), ("eager", ReferenceUNet))}
    return dict(saved, ratio=saved["fused"] / saved["eager"])
