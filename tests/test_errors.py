"""Bad input gets a ValueError/TypeError that names the argument and what was expected: every public function,
module, UNet / segment, swap and CLI sub-command, from one table each. Unsupported configurations of a drop-in
module run the torch.nn forward (as the module it replaces would); N = 0 behaves like PyTorch."""
import contextlib
import re

import pytest
import torch
from torch import nn

import fused_unet
from tests.conftest import DEVICE
from fused_unet import cli, functional as FF, nn as fnn


def t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(shape, device=device).to(dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype, device=device)


CONV_CASES = [
    (lambda: FF.conv2d([[1.0]], t(2, 3, 3, 3)), TypeError, "x must be a torch.Tensor"),
    (lambda: FF.conv2d(t(3, 8, 8), t(2, 3, 3, 3)), ValueError, r"x must be 4-D \[N, C, H, W\]"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3)), ValueError, "weight must be 4-D"),
    (lambda: FF.conv2d(t(1, 4, 8, 8), t(2, 3, 3, 3)), ValueError, "weight expects 3 input channels"),
    (lambda: FF.conv2d(t(1, 3, 8, 8, dtype=torch.int32), t(2, 3, 3, 3)), TypeError, "x must be float32, float16"),
    (lambda: FF.conv2d(t(1, 3, 8, 8, dtype=torch.float64), t(2, 3, 3, 3, dtype=torch.float64)), TypeError,
     "x must be float32"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3, dtype=torch.float16)), TypeError, "weight has dtype torch.float16"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3, device="meta")), ValueError, "weight is on meta.*mixed devices"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 2, 2)), ValueError, "padding='same' needs an odd kernel"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 5)), ValueError, "square kernel"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), stride=2), ValueError, "'same' needs an odd kernel and stride 1"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), stride=3, padding=1), ValueError, "stride must be 1 or 2"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 33, 33)), ValueError, "up to 31x31"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), padding=3), ValueError, r"padding must be in \[0, 2\]"),
    (lambda: FF.conv2d_pool(t(1, 3, 8, 8), t(2, 3, 2, 2)), ValueError, "padding='same' needs an odd kernel"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), t(3)), ValueError, r"bias must have shape \[2\]"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), t(2, dtype=torch.int64)), TypeError, "bias must be float32"),
    (lambda: FF.conv2d(t(1, 0, 8, 8), t(2, 0, 3, 3)), ValueError, "x must have at least one channel"),
    (lambda: FF.conv2d(t(1, 2**16, 2**8, 2**8, device="meta"), t(2, 2**16, 1, 1, device="meta")), ValueError,
     "exceeds 2\\^31"),
    (lambda: FF.conv2d(t(2**14, 1, 2**9, 2**9, device="meta"), t(2, 1, 1, 1, device="meta")), ValueError,
     "N\\*H\\*W pixels"),
]
OTHER_CASES = [
    (lambda: FF.max_pool2x2(t(3, 8, 8)), ValueError, "x must be 4-D"),
    (lambda: FF.max_pool2x2(t(1, 3, 8, 8, dtype=torch.uint8)), TypeError, "x must be float32"),
    (lambda: FF.max_pool2x2(t(1, 3, 1, 8)), ValueError, "at least 2x2"),
    (lambda: FF.conv_transpose2x2(t(1, 3, 4, 4), t(4, 2, 2, 2)), ValueError, "weight expects 4 input channels"),
    (lambda: FF.conv_transpose2x2(t(1, 3, 4, 4), t(3, 2, 3, 3)), ValueError, "2x2 kernel"),
    (lambda: FF.conv_transpose2x2(t(2**12, 1, 2**9, 2**9, device="meta"), t(1, 2, 2, 2, device="meta")), ValueError,
     "output's N\\*H\\*W pixels"),
    (lambda: FF.conv_transpose2x2(t(1, 3, 4, 4), t(3, 2, 2, 2), t(3)), ValueError, r"bias must have shape \[2\]"),
    (lambda: FF.conv_transpose2d(t(1, 3, 4, 4), t(3, 2, 3, 3), None, 3), ValueError, "stride must be 1 or 2"),
    (lambda: FF.conv_transpose2d(t(1, 3, 4, 4), t(3, 2, 1, 1), None, 2), ValueError, "larger than the 1x1 kernel"),
    (lambda: FF.conv_transpose2d(t(1, 3, 4, 4), t(3, 2, 3, 3), None, 2, 1, 2), ValueError,
     r"output_padding must be in \[0, 1\]"),
    (lambda: FF.conv_transpose2d(t(1, 3, 4, 4), t(3, 2, 3, 3), None, 2, 3), ValueError, r"padding must be in \[0, 2\]"),
    (lambda: FF.conv_transpose2d(t(1, 3, 1, 1), t(3, 2, 3, 3), None, 1, 2), ValueError, "empty output"),
    (lambda: FF.conv_transpose2d(t(1, 3, 4, 4), t(3, 2, 3, 2)), ValueError, "square kernel"),
    (lambda: FF.conv_transpose2d(t(1, 3, 4, 4), t(3, 2, 3, 3), None, 2, 1, (1, 0)), TypeError,
     "output_padding must be an int"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), None, "gelu"), ValueError, "activation must be one of"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), None, "leaky_relu", -0.1), ValueError,
     "negative_slope must be >= 0"),
    (lambda: FF.conv2d(t(1, 3, 8, 8), t(2, 3, 3, 3), None, "leaky_relu", "0.1"), TypeError,
     "negative_slope must be a float"),
    (lambda: FF.conv2d_pool(t(1, 3, 1, 8), t(2, 3, 3, 3)), ValueError, "at least 2x2"),
    (lambda: FF.concat_conv2d(t(1, 3, 8, 8), t(1, 2, 7, 8), t(2, 5, 3, 3)), ValueError,
     r"up has spatial size \(8, 8\), larger than the skip's \(7, 8\)"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), t(1, 2, 7, 7), t(2, 5, 3, 3), up_mode="nearest"), ValueError,
     r"up up-sampled x2 has spatial size \(8, 8\)"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), t(1, 2, 8, 8), t(2, 5, 3, 3), up_mode="area"), ValueError,
     "up_mode must be one of"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), t(1, 2, 8, 8), t(2, 4, 3, 3), up_mode="bilinear"), ValueError,
     r"weight expects 4 input channels .* up has 3 and skip 2 \(5 concatenated\)"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), None, t(2, 3, 3, 3)), ValueError,
     "up_mode must be 'nearest' or 'bilinear' when there is no skip"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), None, t(2, 5, 3, 3), up_mode="nearest"), ValueError,
     r"weight expects 5 input channels .* but up has 3"),
    (lambda: FF.concat_conv2d(t(1, 3, 4, 4), t(2, 2, 8, 8), t(2, 5, 3, 3), up_mode="nearest"), ValueError,
     "skip has batch 2"),
    (lambda: FF.concat_conv2d(t(1, 3, 8, 8), t(1, 2, 8, 8, dtype=torch.float16), t(2, 5, 3, 3)), TypeError,
     "skip has dtype torch.float16 but up has"),
    (lambda: FF.concat_conv2d(t(1, 3, 8, 8), t(1, 2, 8, 8, device="meta"), t(2, 5, 3, 3)), ValueError,
     "skip is on meta"),
    (lambda: FF.concat_conv2d(t(1, 3, 8, 8), t(1, 2, 8, 8), t(2, 5, 3, 3), align_corners=1), TypeError,
     "align_corners must be a bool"),
]


def conv():
    return fnn.Conv2d(3, 4, 3, padding=1).to(DEVICE)


def unet():
    return fused_unet.UNet(3, 2, base_channels=4, depth=1).to(DEVICE)


MODULE_CASES = [
    (lambda: conv()(t(1, 1, 3, 8, 8)), RuntimeError, "Expected 3D .*or 4D"),  # torch.nn's own message (fallback)
    (lambda: conv()(t(1, 4, 8, 8)), ValueError, "weight expects 3 input channels .* x has 4"),
    (lambda: conv()(t(1, 3, 8, 8, dtype=torch.int32)), TypeError, "x must be a floating-point tensor"),
    (lambda: conv()(t(1, 3, 8, 8, dtype=torch.bool)), TypeError, "x must be a floating-point tensor.*bool"),
    (lambda: conv()(torch.ones(1, 3, 8, 8, dtype=torch.complex64, device=DEVICE)), TypeError,
     "x must be a floating-point tensor.*complex64"),
    (lambda: conv()(t(1, 3, 8, 8, dtype=torch.float16)), TypeError, "weight has dtype torch.float32 but the input x"),
    (lambda: conv()(torch.empty(1, 3, 8, 8, device="meta")), ValueError, "weight is on .* x is on meta"),
    (lambda: fnn.Conv2d(3, 4, 3, activation="tanh"), ValueError, "activation must be one of"),
    (lambda: fnn.Conv2d(3, 4, 3, norm="layer"), ValueError, "norm must be one of"),
    (lambda: fnn.MaxPool2d(2).to(DEVICE)(t(1, 3, 1, 1)), ValueError, "x must be at least 2x2"),
    (lambda: fnn.ConvTranspose2d(3, 4, 2, stride=2).to(DEVICE)(t(1, 4, 8, 8)), ValueError,
     "weight expects 3 input channels"),
    (lambda: fnn.UpConcatConv2d(5, 4, up_mode="nearest").to(DEVICE)(t(1, 3, 4, 4), t(1, 2, 7, 7)), ValueError,
     r"up up-sampled x2 has spatial size \(8, 8\), larger than the skip's \(7, 7\)"),
    (lambda: fnn.UpConcatConv2d(5, 4).to(DEVICE)(t(1, 3, 4, 4), t(1, 3, 4, 4)), ValueError,
     r"weight expects 5 input channels .* up has 3 and skip 3"),
    (lambda: fnn.UpConcatConv2d(5, 4).to(DEVICE)(t(1, 3, 4, 4, dtype=torch.int64), t(1, 2, 4, 4)), TypeError,
     "up must be a floating-point tensor"),
    (lambda: fnn.UpConcatConv2d(5, 4, up_mode="area"), ValueError, "up_mode must be one of"),
    (lambda: unet()(t(1, 4, 8, 8)), ValueError, r"x must be \[N, 3, H, W\], got torch.Size\(\[1, 4, 8, 8\]\)"),
    (lambda: unet()(t(3, 8, 8)), ValueError, r"x must be \[N, 3, H, W\]"),
    (lambda: unet()(t(1, 3, 8, 8, dtype=torch.int64)), TypeError, "x must be a floating-point image batch"),
    (lambda: unet().segment(t(4, 8, 8)), ValueError, r"x must be \[N, 3, H, W\]"),
    (lambda: unet().segment([1, 2]), ValueError, r"x must be \[N, 3, H, W\], got list"),
    (lambda: fused_unet.UNet(3, 2, base_channels=0), ValueError, "base_channels must be a positive int"),
    (lambda: fused_unet.UNet(3, 2, up_mode="area"), ValueError, "up_mode must be one of"),
    (lambda: fused_unet.UNet(3, 2, activation="tanh"), ValueError, "activation must be one of"),
    (lambda: fused_unet.UNet(3, 2, activation="gelu"), ValueError, "fuses after a norm only"),
    (lambda: fused_unet.swap(3), TypeError, "model must be a torch.nn.Module, got int"),
    (lambda: fused_unet.swap(nn.Conv2d(3, 4, 3), t(1, 5, 8, 8)), ValueError,
     "example_input: the model's forward raised RuntimeError"),
]

CLI_CASES = [
    (["demo", "--epochs", "0"], "expected a positive integer, got 0"),
    (["demo", "--size", "4", "--epochs", "1", "--no-check"], "fused-unet demo: error: .*size >= 8"),
    (["train", "--batch-size", "x"], "expected a positive integer, got 'x'"),
    (["train", "--model", "nope"], "fused-unet train: error: --model must be"),
    (["train", "--data", "/nonexistent-dir"], "/nonexistent-dir/images: no such folder"),
    (["train", "--val-fraction", "1.5"], "--val-fraction must be in \\[0, 1\\), got 1.5"),
    (["predict", "/nonexistent.pt", "."], "fused-unet predict: error: /nonexistent.pt: no such file"),
    (["bench", "--dtype", "int8"], "invalid choice: 'int8'"),
    (["bench", "--compare", "/nope-a.json", "/nope-b.json"], "fused-unet bench: error: .*nope-a.json"),
    (["profile", "--base-channels", "-1"], "expected a positive integer, got -1"),
    (["memory", "--depth", "0"], "expected a positive integer, got 0"),
    (["doctor", "--jobs", "0"], "expected a positive integer, got 0"),
    (["info", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.filterwarnings("ignore:fused_unet.nn.Conv2d. input must be a 4-D")  # the 5-D case's fallback
@pytest.mark.parametrize("call,error,message", MODULE_CASES)
def test_bad_input_to_modules_models_and_swap(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("argv,message", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_bad_cli_input_exits_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a failing command writes lands in the repository
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    text = f"{exit_info.value.code}\n{capsys.readouterr().err}"
    assert exit_info.value.code != 0
    assert re.search(message, text), text


@pytest.mark.parametrize("module,shape,expected", [
    (conv, (0, 3, 8, 8), (0, 4, 8, 8)),
    (lambda: fnn.MaxPool2d(2).to(DEVICE), (0, 3, 8, 8), (0, 3, 4, 4)),
    (lambda: fnn.ConvTranspose2d(3, 4, 2, stride=2).to(DEVICE), (0, 3, 4, 4), (0, 4, 8, 8)),
    (unet, (0, 3, 8, 8), (0, 2, 8, 8)),
    (conv, (3, 8, 8), (4, 8, 8)),  # unbatched [C, H, W]: the torch.nn forward, as nn.Conv2d takes it
])
def test_empty_batches_and_unbatched_input_behave_like_pytorch(module, shape, expected):
    unbatched = len(shape) == 3
    with pytest.warns(UserWarning, match="using the torch.nn forward") if unbatched else contextlib.nullcontext():
        out = module()(t(*shape))
    assert tuple(out.shape) == expected and out.dtype == torch.float32


@pytest.mark.parametrize("call,error,message", CONV_CASES + OTHER_CASES)
def test_bad_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_outputs_may_pass_2_to_the_31_elements_per_image():
    # A first conv 3 -> 64 at 8192^2 writes 4.3e9 elements per image: its offsets are int64, so it is accepted
    # (shape-only on meta tensors; the GPU session runs it for real).
    x = torch.empty(1, 3, 2**13, 2**13, device="meta", requires_grad=True)
    out = FF.conv2d(x, torch.empty(64, 3, 3, 3, device="meta", requires_grad=True), None, "relu")
    assert out.shape == (1, 64, 2**13, 2**13) and out[0].numel() > 2**31
    out.sum().backward()


class _RunsCode:
    def __reduce__(self):
        return (print, ("this checkpoint ran code",))


def test_checkpoints_load_without_running_code_and_bad_files_get_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")  # predict reads the checkpoint before any image
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"model": {}, "payload": _RunsCode()}, tmp_path / "code.pt")
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, tmp_path / "whole.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:500])
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 1}, tmp_path / "partial.pt")
    for name, message in [("text.pt", "is not a readable fused-unet checkpoint"),
                          ("code.pt", "is not a readable fused-unet checkpoint"),
                          ("truncated.pt", "is not a readable fused-unet checkpoint"),
                          ("partial.pt", "is not a fused-unet train checkpoint")]:
        for argv in (["predict", name, "images"], ["train", "--resume", name, "--epochs", "1"]):
            with pytest.raises(SystemExit) as exit_info:
                cli.main(argv)
            assert "ran code" not in capsys.readouterr().out
            assert re.search(f"^fused-unet {argv[0]}: error: {name} {message}", str(exit_info.value.code))


def test_predict_on_a_folder_without_images_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "some.pt").write_text("never read")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", str(tmp_path / "some.pt"), str(tmp_path / "empty")])
    assert "empty has no images (.png, .jpg, .jpeg)" in str(exit_info.value.code)
