"""Segmentation metrics."""
import torch


def iou_per_class(pred, target, num_classes):
    """IoU of each class over all pixels; NaN for a class absent from both prediction and target."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.reshape(-1), target.reshape(-1)
    ious = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    for c in range(num_classes):
        p, t = pred == c, target == c
        union = (p | t).sum().item()
        if union:
            ious[c] = (p & t).sum().item() / union
    return ious


def mean_iou(pred, target, num_classes):
    """Mean IoU over the classes present in prediction or target."""
    return torch.nanmean(iou_per_class(pred, target, num_classes)).item()
