"""Plain-PyTorch twins of every fused op: the eager fallback, and the one place that says what an op means."""
import torch
import torch.nn.functional as F


def conv2d(x, weight, bias=None, relu=False):
    y = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)
    return F.relu(y) if relu else y


def max_pool2x2(x):
    return F.max_pool2d(x, 2)


def conv_transpose2x2(x, weight, bias=None, relu=False):
    y = F.conv_transpose2d(x, weight, bias, stride=2)
    return F.relu(y) if relu else y


def up_concat(x, skip, weight, bias=None, relu=True):
    return torch.cat([conv_transpose2x2(x, weight, bias, relu), skip], dim=1)
