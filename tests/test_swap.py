"""swap_modules: the fused layers in a model that was written with plain torch.nn."""
import copy

import torch
from torch import nn

import fused_unet
from fused_unet import nn as fnn
from tests.conftest import DEVICE, MODEL_TOLERANCE_FACTOR, assert_close


def _plain_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.ConvTranspose2d(8, 4, 2, stride=2), nn.ReLU(),
        nn.Conv2d(4, 2, 1),
    ).to(DEVICE)


def test_swap_keeps_weights_keys_and_results():
    torch.manual_seed(0)
    model = _plain_model()
    original = copy.deepcopy(model).double()
    keys = list(model.state_dict())
    swapped, counts = fused_unet.swap_modules(model)
    assert swapped is model
    assert counts == {"Conv2d": 3, "MaxPool2d": 1, "ConvTranspose2d": 1, "ReLU fused": 3}
    assert list(model.state_dict()) == keys
    assert isinstance(model[0], fnn.Conv2d) and model[0].activation == "relu" and isinstance(model[1], nn.Identity)
    assert isinstance(model[4], fnn.ConvTranspose2d) and model[4].activation == "relu"
    assert model[6].activation is None
    x = torch.randn(2, 3, 10, 14, device=DEVICE)
    out = model(x)
    ref = original(x.double())
    assert_close(out, ref, torch.float32, "swapped model", MODEL_TOLERANCE_FACTOR)


def test_swap_without_relu_fusion_and_leaves_subclasses_alone():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).to(DEVICE)
    _, counts = fused_unet.swap_modules(model, fuse_relu=False)
    assert type(model[0]) is MyConv and isinstance(model[1], fnn.Conv2d) and isinstance(model[2], nn.ReLU)
    assert counts["Conv2d"] == 1 and counts["ReLU fused"] == 0
