"""The fused-unet command: help on every sub-command, info, and a tiny end-to-end demo."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fused_unet.cli import build_parser
from fused_unet.kernels import interpreter_problem


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fused_unet", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", [[], ["demo"], ["info"], ["train"], ["predict"], ["plan"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: fused-unet" in capsys.readouterr().out


def test_info_names_the_backends():
    result = run("info")
    assert result.returncode == 0, result.stderr
    assert "cpu" in result.stdout and "TRITON_INTERPRET" in result.stdout


@pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))
@pytest.mark.parametrize("options", [[], ["--norm", "batch", "--up-mode", "bilinear"]])
def test_tiny_demo_trains_checks_and_writes_a_png(tmp_path, options):
    result = run("demo", "--epochs", "1", "--train-images", "16", "--val-images", "4", "--size", "16",
                 "--base-channels", "4", "--depth", "1", "--out", str(tmp_path), "--device", "cpu", *options,
                 env={"TRITON_INTERPRET": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend: eager (eager PyTorch fallback" in result.stdout and "with backend eager" in result.stdout
    assert "check: UNet via triton-interpreter" in result.stdout and "-> OK" in result.stdout
    assert "val mean IoU" in result.stdout
    assert (tmp_path / "predictions.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["check"]["ok"] and metrics["check"]["ratio_to_eager"] <= 16 and len(metrics["history"]) == 1
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "predictions").exists()


def test_memory_command_reports_fused_and_eager_bytes():
    result = run("memory", "--base-channels", "8", "--depth", "2", "--size", "64", "--norm", "batch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fused UNet" in result.stdout and "eager ReferenceUNet" in result.stdout and "norm batch" in result.stdout
    ratio = float(result.stdout.split("fused / eager")[1].split("x")[0])
    assert 0 < ratio <= 0.5


def test_the_demo_grid_has_column_titles_and_a_class_legend(tmp_path):
    from PIL import Image

    from fused_unet.cli import _save_grid
    from fused_unet.data import CLASS_NAMES
    from fused_unet.train import PALETTE

    images, masks = torch.rand(2, 3, 8, 8), torch.randint(0, 4, (2, 8, 8))
    _save_grid(tmp_path / "grid.png", images, masks, masks, CLASS_NAMES)
    picture = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert picture.shape[0] == 2 * 8 * 4 + 40 and picture.shape[1] >= 3 * 8 * 4  # wide enough for the legend
    assert (picture[:20] < 100).all(axis=2).any()  # dark title text on white
    legend = picture[-20:].reshape(-1, 3)
    assert all((legend == PALETTE[k]).all(axis=1).any() for k in range(len(CLASS_NAMES)))
