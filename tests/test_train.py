"""fused-unet train / predict: folder data and its errors, checkpoints and resume, activation checkpointing,
swapped library models, and DDP replicas (2 processes, gloo, CPU). CPU training runs the eager fallback."""
import dataclasses
import os
import re
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from fused_unet import cli, train
from fused_unet.train import DataError, TrainConfig

TINY = dict(epochs=1, batch_size=4, base_channels=4, depth=2, size=16, synthetic_images=12, device="cpu")


def _write_folder(root, count=6, size=(12, 10), classes=3):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / f"img{i}.png")
        Image.fromarray(rng.integers(0, classes, size, dtype=np.uint8), mode="L").save(root / "masks" / f"img{i}.png")
    return root


def test_synthetic_training_writes_checkpoints_and_predictions_and_resumes(tmp_path):
    config = TrainConfig(out=str(tmp_path), **dict(TINY, epochs=2))
    _, history = train.train(config, log=lambda *_: None)
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 2 and {"model", "optimizer", "scaler", "config"} <= set(state)
    assert len(list((tmp_path / "predictions").glob("*_mask.png"))) == 1  # 12 images, 10% for validation
    _, resumed = train.train(dataclasses.replace(config, epochs=3, resume=str(tmp_path / "checkpoint.pt")),
                             log=lambda *_: None)
    assert [h["epoch"] for h in resumed] == [3]
    with pytest.raises(ValueError, match="it was trained with .*pass the same options"):
        train.train(dataclasses.replace(config, depth=1, resume=str(tmp_path / "checkpoint.pt")), log=lambda *_: None)


def test_folder_training_and_prediction(tmp_path):
    data = _write_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), "--num-classes", "3", "--epochs", "1", "--base-channels", "4",
                     "--depth", "1", "--device", "cpu", "--out", str(out), "--val-fraction", "0.34"]) == 0
    (tmp_path / "new").mkdir()
    Image.open(data / "images" / "img0.png").save(tmp_path / "new" / "a.png")
    (tmp_path / "new" / "broken.png").write_bytes(b"not a png")
    assert cli.main(["predict", str(out / "checkpoint.pt"), str(tmp_path / "new"), "--out",
                     str(tmp_path / "pred"), "--device", "cpu"]) == 1  # broken.png is named and skipped
    mask = np.asarray(Image.open(tmp_path / "pred" / "a_mask.png"))
    assert mask.shape == (12, 10) and mask.max() < 3
    assert (tmp_path / "pred" / "a_overlay.png").is_file() and not (tmp_path / "pred" / "broken_mask.png").exists()


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "masks" / "img1.png").unlink(), "img1.png: missing"),
    (lambda d: (d / "images" / "img2.png").write_bytes(b"garbage"), "img2.png: cannot read the image"),
    (lambda d: (d / "masks" / "img2.png").write_bytes(b"garbage"), "img2.png: cannot read the mask"),
    (lambda d: Image.fromarray(np.full((12, 10), 7, np.uint8), mode="L").save(d / "masks" / "img3.png"),
     "img3.png: class id 7 >= --num-classes 3"),
    (lambda d: Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(d / "masks" / "img4.png"),
     "img4.png: size (8, 8) differs"),
    (lambda d: Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(d / "masks" / "img5.png"),
     "img5.png: a mask must be a single-channel PNG"),
])
def test_bad_data_is_named_before_anything_is_written(tmp_path, damage, message):
    data = _write_folder(tmp_path / "data")
    damage(data)
    with pytest.raises(DataError, match=re.escape(message)):
        train.load_folder(data, 3)
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=re.escape(message)):
        cli.main(["train", "--data", str(data), "--num-classes", "3", "--device", "cpu", "--out", str(out)])
    assert not out.exists()


def test_num_classes_comes_from_the_masks_when_not_given(tmp_path):
    data = _write_folder(tmp_path / "data", classes=3)
    Image.fromarray(np.full((12, 10), 5, np.uint8), mode="L").save(data / "masks" / "img0.png")
    lines = []
    model, _ = train.train(TrainConfig(out=str(tmp_path / "run"), data=str(data), **dict(TINY, size=None)),
                           log=lines.append)
    assert model.config["num_classes"] == 6
    assert any(line.startswith("classes: 6 (the largest class id in") for line in lines)


def test_checkpointed_levels_train_exactly_like_plain_ones(tmp_path):
    runs = [train.train(TrainConfig(out=str(tmp_path / str(flag)), checkpoint_levels=flag, **TINY),
                        log=lambda *_: None) for flag in (False, True)]
    (plain, plain_history), (checkpointed, checkpointed_history) = runs
    assert plain_history == checkpointed_history
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), checkpointed.state_dict().values()))


def test_find_max_batch_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here; bench/ measures the largest batch there")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        train.find_max_batch(TrainConfig(device="cpu"))


def test_swapped_library_model_trains(tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the compat extra")
    config = TrainConfig(out=str(tmp_path), model="smp-unet:resnet18", **dict(TINY, size=32, synthetic_images=4))
    _, history = train.train(config, log=lambda *_: None)
    assert np.isfinite(history[0]["loss"])
    with pytest.raises(ValueError, match="--model must be"):
        train.build_model("resnet", 3, 2)


def _replica(rank, port, out):
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    model, _ = train.train(TrainConfig(out=out, **dict(TINY, epochs=2, synthetic_images=20)), log=lambda *_: None)
    torch.save(model.state_dict(), f"{out}/replica{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_replicas_stay_identical(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_replica, args=(port, str(tmp_path)), nprocs=2)
    replicas = [torch.load(tmp_path / f"replica{r}.pt") for r in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*(r.values() for r in replicas)))
    single, _ = train.train(TrainConfig(out=str(tmp_path / "one"), **dict(TINY, epochs=2, synthetic_images=20)),
                            log=lambda *_: None)
    # Each process saw half of every epoch: the replicas moved, and not like one process on all of it.
    assert any(not torch.equal(a, b) for a, b in zip(single.state_dict().values(), replicas[0].values()))
    assert (tmp_path / "checkpoint.pt").is_file()
