"""Training and prediction for ``fused-unet train`` / ``fused-unet predict``: an image/mask folder (or the synthetic
set), our ``UNet`` or a swapped MONAI / segmentation_models_pytorch model, AMP, channels_last, activation
checkpointing, the largest batch that fits, checkpoints with resume, and DDP when launched by ``torchrun``.

Folder layout: ``DATA/images/NAME.png|jpg|jpeg`` and ``DATA/masks/NAME.png``, a mask being a single-channel PNG of
class ids 0 .. num_classes - 1, the same size as its image."""
import contextlib
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fused_unet.utils import error_summary

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Colours per class id, for overlays and the demo's grid (cycled for more classes); the synthetic set's
# background, disc, square, triangle first.
PALETTE = np.array([[20, 20, 20], [230, 60, 60], [60, 200, 90], [70, 100, 240], [240, 200, 40], [200, 80, 220],
                    [60, 210, 220], [250, 140, 60]], dtype=np.uint8)
AMP_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# The settings a checkpoint's weights depend on: --resume must repeat them.
_MODEL_OPTIONS = ("model", "num_classes", "base_channels", "depth", "up_mode", "norm", "block")


class DataError(ValueError):
    """A file of the dataset cannot be used; the message names it."""


def _open_image(path, mode, what="image"):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode) if mode else image)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the {what} ({error})") from None


def load_folder(root, num_classes=None, size=None):
    """(images [N, 3, H, W] float32 in [0, 1], masks [N, H, W] int64, names) from ``root/images`` and
    ``root/masks``; every file is checked before anything trains (class ids below ``num_classes`` when given).
    ``size``: resize to size x size."""
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder (expected {root}/images/*.png|jpg and {root}/masks/*.png)")
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{image_dir}: no .png / .jpg images")
    images, masks = [], []
    for path in paths:
        mask_path = mask_dir / f"{path.stem}.png"
        if not mask_path.is_file():
            raise DataError(f"{mask_path}: missing (the mask of {path})")
        image, mask = _open_image(path, "RGB"), _open_image(mask_path, None, "mask")
        if mask.ndim != 2:
            raise DataError(f"{mask_path}: a mask must be a single-channel PNG of class ids, got shape {mask.shape}")
        if mask.shape != image.shape[:2]:
            raise DataError(f"{mask_path}: size {mask.shape[::-1]} differs from its image's {image.shape[1::-1]}")
        if num_classes is not None and int(mask.max()) >= num_classes:
            raise DataError(f"{mask_path}: class id {int(mask.max())} >= --num-classes {num_classes}")
        image = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
        mask = torch.from_numpy(mask.astype(np.int64))
        if size is not None:
            image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
        images.append(image)
        masks.append(mask)
    shapes = {tuple(m.shape) for m in masks}
    if len(shapes) > 1:
        raise DataError(f"{root}: images of different sizes {sorted(shapes)[:3]}...; pass --size to resize them")
    return torch.stack(images), torch.stack(masks), [p.stem for p in paths]


def build_model(spec, in_channels, num_classes, base_channels=32, depth=4, up_mode="transpose", norm=None,
                block="plain"):
    """``spec``: "unet" (ours; ``block`` as UNet's), "smp-unet:ENCODER" (segmentation_models_pytorch, no pretrained
    download) or "monai-basicunet"; the others are swapped with ``fused_unet.swap``. Returns (model, swap report or
    None)."""
    import fused_unet

    if spec == "unet":
        return fused_unet.UNet(in_channels, num_classes, base_channels, depth, up_mode=up_mode, norm=norm,
                               block=block), None
    if block != "plain":
        raise ValueError(f"--block {block} works with --model unet, got --model {spec}")
    if spec.startswith("smp-unet:"):
        import segmentation_models_pytorch as smp

        model = smp.Unet(spec.split(":", 1)[1], encoder_weights=None, in_channels=in_channels, classes=num_classes)
    elif spec == "monai-basicunet":
        from monai.networks.nets import BasicUNet

        model = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, norm="batch")
    else:
        raise ValueError(f"--model must be 'unet', 'smp-unet:ENCODER' or 'monai-basicunet', got {spec!r}")
    return fused_unet.swap(model)


def checkpoint_levels(model):
    """Recompute each encoder / decoder level of our UNet in backward instead of keeping its activations."""
    for level in [*model.encoder, *model.decoder]:
        forward = level.forward
        level.forward = lambda *inputs, _forward=forward: checkpoint(_forward, *inputs, use_reentrant=False)


@dataclasses.dataclass
class TrainConfig:
    out: str = "./fused-unet-train"
    data: str = None
    num_classes: int = None  # with --data: the largest class id in the masks + 1; the synthetic set has 4
    size: int = None
    model: str = "unet"
    base_channels: int = 16
    depth: int = 2
    up_mode: str = "transpose"
    norm: str = None
    block: str = "plain"
    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-3
    amp: str = "none"
    channels_last: bool = False
    checkpoint_levels: bool = False
    val_fraction: float = 0.1
    synthetic_images: int = 256
    resume: str = None
    seed: int = 0
    device: str = "auto"
    save_predictions: bool = True  # a mask and an overlay PNG per validation image, in OUT/predictions


def _distributed():
    """(rank, world size), joining the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _device(name, rank):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA GPU is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device(name)


def split_dataset(config):
    """((train images, masks), (validation images, masks, names)) as ``config`` says: its folder, or the synthetic
    shapes, the last ``val_fraction`` of them held out."""
    from fused_unet.data import make_shapes_dataset

    if config.data is None:
        images, masks = make_shapes_dataset(config.synthetic_images, config.size or 48, seed=config.seed)
        names = [f"synthetic-{i:04d}" for i in range(len(images))]
    else:
        images, masks, names = load_folder(config.data, config.num_classes, config.size)
    if not 0 <= config.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    val = max(1, round(len(images) * config.val_fraction)) if config.val_fraction and len(images) > 1 else 0
    split = len(images) - val
    return (images[:split], masks[:split]), (images[split:], masks[split:], names[split:])


def _model(config, device):
    """(model on device, swap report or None) as config says, with its levels checkpointed if asked."""
    import fused_unet

    model, report = build_model(config.model, 3, config.num_classes, config.base_channels, config.depth,
                                config.up_mode, config.norm, config.block)
    if config.checkpoint_levels:
        if not isinstance(model, fused_unet.UNet):
            raise ValueError("--checkpoint-levels works with --model unet (its encoder / decoder levels)")
        checkpoint_levels(model)
    fmt = torch.channels_last if config.channels_last else torch.preserve_format
    return model.to(device, memory_format=fmt), report


def _loss(net, x, y, amp_dtype):
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return F.cross_entropy(net(x).float(), y)


def train(config, log=print):
    """Train as ``config`` says; returns (model, history). Rank 0 logs, checkpoints and writes predictions."""
    import fused_unet
    from fused_unet.metrics import mean_iou
    from tqdm import tqdm

    rank, world = _distributed()
    device = _device(config.device, rank)
    state = load_checkpoint(config.resume, device) if config.resume else None  # a bad file fails before any work
    torch.manual_seed(config.seed)
    (train_x, train_y), (val_x, val_y, val_names) = split_dataset(config)
    if config.data is None:
        config = dataclasses.replace(config, num_classes=4)
    elif config.num_classes is None:
        largest = max(int(m.max()) for m in (train_y, val_y) if m.numel())
        config = dataclasses.replace(config, num_classes=largest + 1)
        if rank == 0:
            log(f"classes: {largest + 1} (the largest class id in {config.data}/masks + 1; --num-classes sets it)")
    model, report = _model(config, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    amp_dtype = AMP_DTYPES[config.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    start = 1
    if state is not None:
        saved = {k: state["config"].get(k, getattr(TrainConfig, k)) for k in _MODEL_OPTIONS}  # older: no block
        if saved != {k: getattr(config, k) for k in _MODEL_OPTIONS}:
            raise ValueError(f"--resume {config.resume}: it was trained with {saved}; pass the same options")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = state["epoch"] + 1
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    out = Path(config.out)
    lead = rank == 0
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        on_cpu = device.type == "cpu"
        log(f"device: {device} x {world}  |  backend: "
            f"{'eager (eager PyTorch fallback; CPU training is too slow through the Triton interpreter)' if on_cpu else fused_unet.describe(device)}")
        log(f"data: {len(train_x)} train / {len(val_x)} val images {tuple(train_x.shape[2:])}, "
            f"{config.num_classes} classes ({config.data or 'synthetic shapes'})")
        if report is not None:
            log(report.table())
    cpu_eager = fused_unet.force_eager() if device.type == "cpu" else contextlib.nullcontext()
    history = []
    # Each rank its share of every epoch; drop_last keeps the batch count equal on every rank (or DDP waits).
    sampler = DistributedSampler(TensorDataset(train_x, train_y), num_replicas=world, rank=rank, seed=config.seed,
                                 drop_last=world > 1)
    loader = DataLoader(sampler.dataset, batch_size=config.batch_size, sampler=sampler)
    with cpu_eager:
        for epoch in range(start, config.epochs + 1):
            model.train()
            sampler.set_epoch(epoch)
            losses = []
            bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None if lead else True)
            for x, y in bar:
                x, y = x.to(device), y.to(device)
                if config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss = _loss(net, x, y, amp_dtype)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{loss.item():.3f}")
            model.eval()
            preds = predict_masks(model, val_x, config.batch_size, device, amp_dtype) if len(val_x) else None
            miou = mean_iou(preds, val_y, config.num_classes) if preds is not None else float("nan")
            history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                            "val_mean_iou": miou})
            if lead:
                log(f"epoch {epoch:3d}  loss {history[-1]['loss']:.4f}  val mean IoU {miou:.3f}")
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict(), "epoch": epoch, "config": dataclasses.asdict(config)},
                           out / "checkpoint.pt")
    if lead and config.save_predictions and len(val_x) and history:
        for name, image, pred in zip(val_names, val_x, preds):
            save_prediction(out / "predictions", name, image, pred)
    return model, history


def load_checkpoint(path, device):
    """A ``train`` checkpoint, loaded without running any code from the file (``weights_only``); a file that is not
    one, or a damaged one, is a ValueError naming it."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError:
        raise
    except Exception as error:  # not a torch file, truncated, or holding objects other than tensors and settings
        raise ValueError(f"{path} is not a readable fused-unet checkpoint ({error_summary(error)})") from error
    if not isinstance(state, dict) or not {"model", "optimizer", "scaler", "epoch", "config"} <= state.keys():
        raise ValueError(f"{path} is not a fused-unet train checkpoint (no model / optimizer / epoch / config)")
    return state


def find_max_batch(config, limit=4096, log=print):
    """The largest training batch at ``config.size`` that fits on this CUDA GPU (doubling, then bisection),
    with the model, AMP, channels_last and checkpointing options of ``config``."""
    from fused_unet.benchmark import fits_in_memory, largest_batch

    device = _device(config.device, 0)
    if device.type != "cuda":
        raise ValueError("--find-max-batch needs a CUDA GPU (it fills the GPU's memory)")
    config = dataclasses.replace(config, num_classes=config.num_classes or 4)
    model, _ = _model(config, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    amp_dtype, size = AMP_DTYPES[config.amp], config.size or 256

    def step(batch):
        x = torch.rand(batch, 3, size, size, device=device)
        y = torch.randint(0, config.num_classes, (batch, size, size), device=device)
        _loss(model, x, y, amp_dtype).backward()
        optimizer.step()

    batch = largest_batch(lambda batch: fits_in_memory(lambda: step(batch), optimizer), 1, limit)
    log(f"largest batch at {size}x{size}: {batch}")
    return batch


def predict_masks(model, images, batch_size, device, amp_dtype=None):
    """Class-id masks [N, H, W] (on the CPU) of ``images`` by ``model``, ``batch_size`` at a time on ``device``."""
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return torch.cat([model(images[i:i + batch_size].to(device)).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)])


def save_prediction(folder, name, image, pred):
    """``NAME_mask.png`` (class ids) and ``NAME_overlay.png`` (the image with the classes tinted)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = pred.numpy().astype(np.uint8)
    Image.fromarray(ids, mode="L").save(folder / f"{name}_mask.png")
    rgb = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.float32)
    tint = PALETTE[ids % len(PALETTE)].astype(np.float32)
    Image.fromarray((0.55 * rgb + 0.45 * tint).astype(np.uint8)).save(folder / f"{name}_overlay.png")


def predict(checkpoint_path, images_dir, out, device="auto", log=print):
    """Masks and overlays for every image of ``images_dir`` from a ``train`` checkpoint. A file that cannot be
    read is reported and skipped; returns the list of such problems."""
    import fused_unet

    paths = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{images_dir} has no images ({', '.join(IMAGE_SUFFIXES)})")
    device = _device(device, 0)
    state = load_checkpoint(checkpoint_path, device)
    model, _ = _model(dataclasses.replace(TrainConfig(**state["config"]), checkpoint_levels=False), device)
    model.load_state_dict(state["model"])
    model.eval()
    problems = []
    with fused_unet.force_eager() if device.type == "cpu" else contextlib.nullcontext():
        for path in paths:
            try:
                image = torch.from_numpy(_open_image(path, "RGB").copy()).permute(2, 0, 1).float() / 255
            except DataError as error:
                problems.append(str(error))
                log(f"skipped {error}")
                continue
            pred = predict_masks(model, image[None], 1, device)[0]
            save_prediction(out, path.stem, image, pred)
    log(f"wrote {len(paths) - len(problems)} mask(s) and overlay(s) to {out}")
    return problems
