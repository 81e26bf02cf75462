"""The ``fused-unet`` command (also ``python -m fused_unet``)."""
import argparse
import contextlib
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch



def _positive(text):
    """argparse type of a count: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def _enable_interpreter_for_cpu_check(device):
    """On a CPU, switch the Triton interpreter on before the kernels are first imported, so the check runs the
    real kernels. Training still uses the eager fallback: the interpreter is far too slow to train with."""
    if device.type == "cpu" and "fused_unet.kernels.configs" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"


def _save_grid(path, images, masks, preds, class_names):
    """Rows of image | true mask | predicted mask, with column titles above and a class legend below."""
    from PIL import Image, ImageDraw

    from fused_unet.train import PALETTE

    rows = []
    for image, mask, pred in zip(images, masks, preds):
        rgb = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        rows.append(np.concatenate([rgb, PALETTE[mask.numpy()], PALETTE[pred.numpy()]], axis=1))
    grid = np.concatenate(rows, axis=0)
    grid = Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST)
    band = 20
    measure = ImageDraw.Draw(grid)
    legend_width = sum(15 + int(measure.textlength(name)) + 12 for name in class_names)
    canvas = Image.new("RGB", (max(grid.width, legend_width), grid.height + 2 * band), "white")
    canvas.paste(grid, (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(("image", "true mask", "predicted mask")):
        draw.text((i * grid.width // 3 + 4, 4), title, fill="black")
    x, y = 4, grid.height + band + 4
    for k, name in enumerate(class_names):
        draw.rectangle([x, y, x + 11, y + 11], fill=tuple(int(c) for c in PALETTE[k % len(PALETTE)]))
        draw.text((x + 15, y), name, fill="black")
        x += 15 + int(draw.textlength(name)) + 12
    canvas.save(path)


def cmd_demo(args):
    device = _pick_device(args.device)
    _enable_interpreter_for_cpu_check(device)
    import fused_unet
    from fused_unet import train, verify
    from fused_unet.data import CLASS_NAMES

    out = Path(args.out)
    total = args.train_images + args.val_images
    config = train.TrainConfig(
        out=str(out), size=args.size, base_channels=args.base_channels, depth=args.depth, up_mode=args.up_mode,
        norm=None if args.norm == "none" else args.norm, block=args.block, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr,
        synthetic_images=total, val_fraction=args.val_images / total, seed=args.seed, device=str(device),
        save_predictions=False)
    started = time.time()
    model, history = train.train(config)
    training_backend = "eager" if device.type == "cpu" else fused_unet.backend(device)
    print(f"trained in {time.time() - started:.1f}s with backend {training_backend}")
    _, (val_x, val_y, _) = train.split_dataset(config)
    result = {"device": str(device), "training_backend": training_backend,
              "settings": {k: v for k, v in vars(args).items() if k != "func"}, "history": history,
              "chance_mean_iou": 1.0 / len(CLASS_NAMES)}
    if args.check:
        check_backend = fused_unet.backend(device)
        if check_backend == "eager":
            print("check: skipped (no Triton backend on this machine: install triton, or use a CUDA GPU)")
        else:
            started = time.time()
            # A training step (batch statistics included) of a copy: the trained model's running statistics stay.
            check = verify.check_model(copy.deepcopy(model).train(), fused_unet.ReferenceUNet(**model.config),
                                       val_x[:2].to(device))
            name, ratio = check["worst"]
            print(f"check: UNet via {fused_unet.describe(device)}\n"
                  f"       vs ReferenceUNet in float64 on 2 images, one training step: largest error "
                  f"{ratio:.1f}x eager fp32's own ({name}; at most {verify.EAGER_ERROR_FACTOR}x) -> "
                  f"{'OK' if check['ok'] else 'FAILED'} ({time.time() - started:.1f}s)")
            result["check"] = {"backend": check_backend, "worst": name, "ratio_to_eager": ratio,
                               "limit": verify.EAGER_ERROR_FACTOR, "ok": check["ok"]}
            if not check["ok"]:
                return 1
    with fused_unet.force_eager() if device.type == "cpu" else contextlib.nullcontext():  # as it trained
        preds = train.predict_masks(model, val_x[:6], args.batch_size, device)
    _save_grid(out / "predictions.png", val_x[:6], val_y[:6], preds, CLASS_NAMES)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'predictions.png'} (image | true mask | predicted mask), {out / 'metrics.json'} and "
          f"{out / 'checkpoint.pt'} (for `fused-unet predict`)")
    return 0


def _print_environment():
    import fused_unet
    from fused_unet import doctor

    env = doctor.environment()
    print(f"fused-unet {fused_unet.__version__}  |  python {env['python']}  |  torch {env['torch']}  |  "
          f"triton {env['triton'] or 'not installed'}  |  CUDA {env['cuda']}")
    print("GPUs: " + (", ".join(f"{g['name']} ({g['capability']})" for g in env["gpus"]) or "none"))
    print(f"TRITON_INTERPRET: {'on' if env['interpreter'] else 'off'}")
    for device in env["backends"]:
        print(f"  {device}: {fused_unet.describe(device)}")
    return env


def cmd_info(args):
    _print_environment()
    return 0


def cmd_doctor(args):
    from tqdm import tqdm

    from fused_unet import doctor

    report = {"environment": _print_environment()}
    status = 0
    archs = [a.strip() for a in args.aot.split(",") if a.strip() and a.strip() != "none"]
    if archs:
        print(f"\nahead-of-time compile for {', '.join(archs)} (no GPU needed) ...")
        bar = tqdm(total=len(doctor.registry_jobs([a for a in archs if a in doctor.ARCHS])), disable=None,
                   desc="compiling")
        results, unsupported = doctor.run_aot(archs, jobs=args.jobs, progress=lambda r: bar.update())
        bar.close()
        for arch, reason in unsupported.items():
            print(f"{arch}: cannot be targeted: {reason}")
        print(doctor.format_table(results))
        verdicts = doctor.main_loop_verdicts(results)
        references = doctor.compile_references("sm_90") if "sm_90" in archs else []
        print(doctor.format_main_loops(verdicts, references))
        problems = [p for r in results for p in doctor.problems(r)]
        problems += [f"main loop {v['name']}: ceiling {v['ceiling']} below {v['target']} or slow loads"
                     for v in verdicts if not v["ok"]]
        problems += [p for arch in archs if arch not in unsupported
                     for p in doctor.specialisation_problems(arch, jobs=args.jobs)]
        print(f"\n{len(results)} compiles, {len(problems)} problems")
        for problem in problems:
            print(f"  FAIL {problem}")
        report.update(results=results, unsupported=unsupported, problems=problems, main_loops=verdicts,
                      references=references)
        status = 1 if problems or unsupported else 0
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return status


def _bench_settings(args):
    from fused_unet.benchmark import Settings

    # The settings this command has arguments for (and were given, or have a default); the rest keep Settings'.
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
              if getattr(args, f.name, None) is not None}
    values.update({k: tuple(v) for k, v in values.items() if isinstance(v, list)})
    return Settings(**values)


def cmd_bench(args):
    from fused_unet import benchmark

    if args.compare:
        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        print(f"A = {args.compare[0]}\nB = {args.compare[1]}\n" + benchmark.compare(a, b))
        return 0
    if args.plot:
        written = benchmark.plot(json.loads(Path(args.plot).read_text()), Path(args.plot).parent)
        print(f"wrote {', '.join(written)}" if written else "plots need matplotlib: pip install -e '.[bench]'")
        return 0 if written else 1
    # Shape flags left out take the GPU headline's defaults, or with --cpu-smoke the tiny model's.
    for name, value in (benchmark.CPU_SMOKE if args.cpu_smoke else {}).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    s = _bench_settings(args)
    if not torch.cuda.is_available():
        print("No CUDA GPU here: throughput, memory and batch-size numbers need one (run this command on a GPU).")
        if not args.cpu_smoke:
            print("--cpu-smoke runs a tiny configuration through the Triton interpreter and compares the "
                  "saved-activation memory of the fused and eager models, which is meaningful on a CPU.")
            return 1  # nothing was measured
        _enable_interpreter_for_cpu_check(torch.device("cpu"))
        print(f"CPU smoke (Triton interpreter for the fused model; not throughput numbers): U-Net base "
              f"{s.base_channels}, depth {s.depth}, {s.size}x{s.size}, batch {s.batch_sizes[0]}, fp32")
        out = Path(args.out) if args.out else Path("bench") / "results" / "cpu-smoke"
        files = benchmark.write_cpu_smoke(benchmark.cpu_smoke(s), out)
        print(f"wrote {', '.join(str(out / f) for f in files)}")
        return 0
    import fused_unet
    from tqdm import tqdm

    print(f"backend of the fused contenders: {fused_unet.describe('cuda')}")
    with tqdm(total=len(s.contenders), desc="contenders", disable=None) as bar:
        results = benchmark.run(s, "cuda", log=tqdm.write, contender_done=lambda: bar.update())
    out = Path(args.out) if args.out else benchmark.default_out_dir(results["gpu"]["name"])
    files = benchmark.write(results, out)
    print("\n" + benchmark.table(results))
    print(f"\nwrote {', '.join(str(out / f) for f in files)}")
    return 0


def cmd_profile(args):
    from fused_unet import perf

    s = _bench_settings(args)
    if not torch.cuda.is_available():
        print("No CUDA GPU here: the FLOP / byte model alone (no times). Bytes are what a fused kernel must move "
              "(input + weights + output); training counts backward as 2x forward.")
        title, rows = perf.cost_model(s)
        print(perf.format_profile(rows, title))
        return 0
    report = perf.profile(s, trace=args.trace)
    if args.doctor_json:
        print("\nstatic report (fused-unet doctor) of the kernels the fused model launches:")
        for line in perf.static_lines(json.loads(Path(args.doctor_json).read_text()), report["gpu"]["capability"],
                                      s.dtype):
            print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def _add_unet_args(parser):
    from fused_unet.kernels.codes import DECODER_UP_MODES
    from fused_unet.models import BLOCKS

    parser.add_argument("--up-mode", choices=DECODER_UP_MODES, default="transpose", help="decoder up-sampling")
    parser.add_argument("--norm", choices=("none", "batch", "instance", "group"), default="none",
                        help="the norm after every 3x3 conv (group: 32 groups, or base channels if fewer)")
    parser.add_argument("--block", choices=BLOCKS, default="plain",
                        help="each encoder level: two convs, or a ResNet basic block (the skip added in a kernel)")


def _add_shape_args(parser, batch_default, size_default=512):
    from fused_unet.benchmark import DTYPES

    parser.add_argument("--base-channels", type=_positive, default=64)
    parser.add_argument("--depth", type=_positive, default=4)
    parser.add_argument("--size", type=_positive, default=size_default,
                        help=f"image height and width (default: {size_default})")
    parser.add_argument("--batch-sizes", type=_positive, nargs="+", default=batch_default)
    _add_unet_args(parser)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16",
                        help="autocast dtype of the fused and *-amp / compile contenders (fp32: no autocast)")
    parser.add_argument("--mode", choices=("train", "infer"), default="train",
                        help="train: forward + backward + optimizer step; infer: forward only")


def _add_model_args(parser, batch_default):
    from fused_unet.benchmark import CONTENDERS

    _add_shape_args(parser, batch_default)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS,
                        default=["fused", "eager", "eager-cl-amp", "compile", "compile-max-autotune"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=_positive, default=20)
    parser.add_argument("--no-max-batch", dest="max_batch", action="store_false",
                        help="skip the search for the largest batch that fits")


def build_parser():
    from fused_unet.train import AMP_DTYPES

    parser = argparse.ArgumentParser(prog="fused-unet", description="Fused Triton U-Net kernels: demo and tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small U-Net on synthetic shapes, check it against eager PyTorch",
                          description="Train a small fused U-Net on a seeded synthetic shapes set, print loss and "
                                      "mean IoU per epoch, check the fused kernels against ReferenceUNet and write "
                                      "a PNG grid (image | true mask | predicted mask).")
    demo.add_argument("--epochs", type=_positive, default=10)
    demo.add_argument("--train-images", type=_positive, default=512)
    demo.add_argument("--val-images", type=_positive, default=64)
    demo.add_argument("--size", type=_positive, default=48, help="image height and width")
    demo.add_argument("--batch-size", type=_positive, default=16)
    demo.add_argument("--base-channels", type=_positive, default=16)
    demo.add_argument("--depth", type=_positive, default=2)
    _add_unet_args(demo)
    demo.add_argument("--lr", type=float, default=3e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--out", default="./fused-unet-demo/", help="output folder for the PNG and metrics.json")
    demo.add_argument("--no-check", dest="check", action="store_false",
                      help="skip the fused-vs-reference check (it runs the Triton kernels, interpreted on a CPU)")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train a U-Net (ours, or a swapped smp / MONAI one) on your images",
                           description="Train on DATA/images/NAME.png|jpg with DATA/masks/NAME.png (single-channel "
                                       "class ids 0..num-classes-1, same size as the image), or on the synthetic "
                                       "shapes set without --data. Prints loss and validation mean IoU per epoch, "
                                       "writes OUT/checkpoint.pt each epoch (model, optimizer, scaler, epoch) and "
                                       "OUT/predictions/*_mask.png + *_overlay.png. Under torchrun: DDP, one "
                                       "process per GPU (gloo on CPUs), rank 0 logs and writes.")
    train.add_argument("--data", help="dataset folder (default: the synthetic shapes set, 4 classes)")
    train.add_argument("--num-classes", type=_positive,
                       help="classes (default: the largest class id in DATA/masks + 1; 4 for the synthetic set)")
    train.add_argument("--size", type=_positive, help="resize images and masks to SIZE x SIZE (default: as they are)")
    train.add_argument("--model", default="unet",
                       help="unet (ours), smp-unet:ENCODER (e.g. smp-unet:resnet34) or monai-basicunet, swapped "
                            "with fused_unet.swap (the compat extra)")
    train.add_argument("--base-channels", type=_positive, default=16, help="--model unet")
    train.add_argument("--depth", type=_positive, default=2, help="--model unet")
    _add_unet_args(train)
    train.add_argument("--epochs", type=_positive, default=5)
    train.add_argument("--batch-size", type=_positive, default=8, help="per process")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none",
                       help="autocast (fp16 with a gradient scaler)")
    train.add_argument("--channels-last", action="store_true")
    train.add_argument("--checkpoint-levels", action="store_true",
                       help="recompute each encoder / decoder level in backward (less activation memory)")
    train.add_argument("--find-max-batch", action="store_true",
                       help="on a GPU: print the largest batch that fits at --size (doubling, then bisection) and stop")
    train.add_argument("--val-fraction", type=float, default=0.1)
    train.add_argument("--resume", help="a checkpoint.pt to continue from")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--out", default="./fused-unet-train/")
    train.set_defaults(func=cmd_train)

    predict = sub.add_parser("predict", help="masks and overlays for a folder of images from a train checkpoint",
                             description="Write OUT/NAME_mask.png (class ids) and OUT/NAME_overlay.png for every "
                                         ".png / .jpg in IMAGES using a `fused-unet train` checkpoint. Unreadable "
                                         "files are named and skipped (exit 1 at the end); the others are written.")
    predict.add_argument("checkpoint")
    predict.add_argument("images")
    predict.add_argument("--out", default="./fused-unet-predictions/")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    predict.set_defaults(func=cmd_predict)

    info = sub.add_parser("info", help="versions and which backend each device gets",
                          description="Print versions and the backend (triton / triton-interpreter / eager) per device.")
    info.set_defaults(func=cmd_info)

    doctor = sub.add_parser("doctor", help="environment + ahead-of-time compile of every kernel for NVIDIA GPUs",
                            description="Print the environment and backends, then compile every registered kernel "
                                        "configuration ahead of time (no GPU needed) and report tensor-core MMA, "
                                        "registers, spills, shared memory and occupancy. Exits 1 when any kernel "
                                        "fails to compile, spills, overflows shared memory or lacks MMA.")
    doctor.add_argument("--aot", default="sm_90,sm_80", help="comma-separated targets, or 'none' (default: %(default)s)")
    doctor.add_argument("--json", help="also write the full report to this JSON file")
    doctor.add_argument("--jobs", type=_positive, default=None, help="compile processes (default: all cores)")
    doctor.set_defaults(func=cmd_doctor)

    bench = sub.add_parser("bench", help="img/s, peak memory, TFLOP/s and the largest batch: fused vs eager vs compile",
                           description="Benchmark the fused U-Net against eager PyTorch (NCHW fp32; channels_last + "
                                       "autocast) and torch.compile on a CUDA GPU: img/s (median, p20-p80), ms/iter, "
                                       "peak memory, TFLOP/s and %% of the measured matmul peak, and the largest batch "
                                       "that fits. Writes JSON + Markdown (+ PNG plots with matplotlib) to "
                                       "bench/results/<gpu>/ unless --out says otherwise.")
    _add_model_args(bench, [16])
    bench.add_argument("--out", help="output folder (default: bench/results/<gpu-name>/)")
    bench.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print the ratios B/A of two results")
    bench.add_argument("--plot", metavar="RESULTS.json", help="(re)draw the PNG plots of a results file beside it")
    bench.add_argument("--cpu-smoke", action="store_true",
                       help="without a GPU: one training step of a tiny U-Net (by default base 8, depth 2, 32x32, "
                            "batch 2; about a minute on 2 cores) through the Triton interpreter and eager, with "
                            "their saved-activation memory; writes JSON + Markdown to bench/results/cpu-smoke/")
    # Shape defaults depend on the mode (GPU headline or --cpu-smoke): cmd_bench fills in what is left out.
    bench.set_defaults(size=None, base_channels=None, depth=None, batch_sizes=None)
    bench.set_defaults(func=cmd_bench)

    profile = sub.add_parser("profile", help="per-layer time, FLOPs, bytes and %% of roofline of one training step",
                             description="Per-layer breakdown of one training step, fused vs eager-cl-amp: time "
                                         "(CUDA events), FLOPs, bytes moved, arithmetic intensity and %% of the "
                                         "roofline, sorted by time lost. Without a GPU: the FLOP / byte model only.")
    _add_model_args(profile, [8])
    profile.add_argument("--trace", help="also export a Chrome trace per model (FILE.<model>.json)")
    profile.add_argument("--json", help="write the per-layer rows to this JSON file")
    profile.add_argument("--doctor-json", help="a `fused-unet doctor --json` report to show next to the times")
    profile.set_defaults(func=cmd_profile)

    plan = sub.add_parser("plan", help="static time of every kernel launch of a training step (no GPU needed)",
                          description="Every kernel launch of one training (or inference) step of a model, recorded "
                                      "on meta tensors, each compiled for the target and timed statically: "
                                      "tensor-core, L2 and HBM bounds, the limiting one, %% of peak; then the step. "
                                      "Compiled kernels are cached: a second plan of the same model takes seconds.")
    plan.add_argument("--model", default="unet", help="unet (ours), smp-unet:ENCODER or monai-basicunet (swapped)")
    plan.add_argument("--base-channels", type=_positive, default=64, help="--model unet")
    plan.add_argument("--depth", type=_positive, default=4, help="--model unet")
    _add_unet_args(plan)
    plan.add_argument("--classes", type=_positive, default=2)
    plan.add_argument("--size", type=_positive, default=512, help="image height and width (default: 512)")
    plan.add_argument("--batch", type=_positive, default=16)
    plan.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    plan.add_argument("--mode", choices=("train", "infer"), default="train")
    plan.add_argument("--arch", choices=("sm_90", "sm_80"), default="sm_90")
    plan.add_argument("--top", type=_positive, help="list only the TOP slowest launches")
    plan.add_argument("--json", help="also write the plan to this JSON file")
    plan.add_argument("--jobs", type=_positive, help="compile processes (default: all cores)")
    plan.set_defaults(func=cmd_plan)

    memory = sub.add_parser("memory", help="activation memory saved for backward: fused vs eager (no GPU needed)",
                            description="Bytes one training forward saves for backward, fused UNet vs eager "
                                        "ReferenceUNet, measured shape-only on meta tensors (any size, no GPU).")
    _add_shape_args(memory, [2], size_default=256)
    memory.set_defaults(func=cmd_memory, dtype="fp32", mode="train")
    return parser


def cmd_train(args):
    from fused_unet import train

    fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    config = train.TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    config = dataclasses.replace(config, norm=None if args.norm == "none" else args.norm)
    if args.find_max_batch:
        train.find_max_batch(config)
    else:
        train.train(config)
    return 0


def cmd_predict(args):
    from fused_unet import train

    for path in (args.checkpoint, args.images):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    return 1 if train.predict(args.checkpoint, args.images, args.out, args.device) else 0


def cmd_plan(args):
    from tqdm import tqdm

    from fused_unet import static_plan, train

    model, _ = train.build_model(args.model, 3, args.classes, args.base_channels, args.depth, args.up_mode,
                                 None if args.norm == "none" else args.norm, args.block)
    x = torch.empty(args.batch, 3, args.size, args.size, device="meta")
    print(f"plan: {args.model} at {args.size}x{args.size}, batch {args.batch}, {args.dtype}, {args.mode}, "
          f"{static_plan.HARDWARE[args.arch]['gpu']} ({args.arch}); kernels compiled for the target, no GPU used")
    with tqdm(desc="compiling", unit="kernel", leave=False, disable=None) as bar:
        result = static_plan.plan(model, x, args.dtype, args.mode, args.arch, workers=args.jobs,
                                  progress=bar.update)
    print(static_plan.format_plan(result, args.top))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_memory(args):
    from fused_unet import benchmark

    s = _bench_settings(args)
    saved = benchmark.saved_activations(s)
    print(f"saved for backward, U-Net base {s.base_channels}, depth {s.depth}, up {s.up_mode}, norm {s.norm}, "
          f"block {s.block}, {s.size}x{s.size}, batch {s.batch_sizes[0]}, {s.dtype} (shapes only, on meta tensors):")
    print(f"  fused UNet          {saved['fused'] / 2**20:9.1f} MiB\n"
          f"  eager ReferenceUNet {saved['eager'] / 2**20:9.1f} MiB\n"
          f"  fused / eager       {saved['ratio']:9.3f}x")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError) as error:
        # Bad input (a file, a size, a missing optional package): one line naming it, exit status 1.
        raise SystemExit(f"fused-unet {args.command}: error: {error}") from None
