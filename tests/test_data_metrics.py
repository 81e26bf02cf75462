import pytest
import torch

from fused_unet.data import CLASS_NAMES, make_shapes_dataset
from fused_unet.metrics import iou_per_class, mean_iou


def test_dataset_is_seeded_and_well_formed():
    images, masks = make_shapes_dataset(4, size=24, seed=3)
    again, masks_again = make_shapes_dataset(4, size=24, seed=3)
    assert torch.equal(images, again) and torch.equal(masks, masks_again)
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.float32
    assert masks.shape == (4, 24, 24) and masks.dtype == torch.int64
    assert 0 <= masks.min() and masks.max() < len(CLASS_NAMES) and (masks > 0).any()
    with pytest.raises(ValueError):
        make_shapes_dataset(0)


def test_iou():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    ious = iou_per_class(pred, target, 3)
    assert ious[0] == 0.5 and abs(ious[1] - 2 / 3) < 1e-12 and ious[2].isnan()
    assert abs(mean_iou(pred, target, 3) - (0.5 + 2 / 3) / 2) < 1e-12
    assert mean_iou(target, target, 3) == 1.0
