"""Dice, IoU and HD95 on hand-made examples, per image and per class."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from src.metrics import confusion, hd95, image_scores, per_image, pooled_by_class, summarize

CLASSES = ["background", "a", "b", "c"]


def test_per_class_scores_on_a_hand_made_example():
    truth = np.zeros((4, 4), np.uint8)
    truth[0, :] = 1  # 4 px of a
    truth[1, :2] = 2  # 2 px of b; c absent
    pred = truth.copy()
    pred[0, 3] = 0  # a: tp 3, fn 1
    pred[2, 0] = 2  # b: tp 2, fp 1
    rows = {r["class"]: r for r in image_scores(pred, truth, CLASSES)}
    assert rows["a"]["dice"] == pytest.approx(6 / 7) and rows["a"]["iou"] == pytest.approx(3 / 4)
    assert rows["b"]["dice"] == pytest.approx(4 / 5) and rows["b"]["iou"] == pytest.approx(2 / 3)
    assert rows["c"]["dice"] == 1.0 and rows["c"]["hd95"] == 0.0  # absent from both: perfect by convention


def test_torch_confusion_and_summary_agree_with_numpy_rows():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (3, 8, 8))
    pred = rng.integers(0, 4, (3, 8, 8))
    tp, fp, fn = confusion(torch.from_numpy(pred), torch.from_numpy(truth), 4)
    summary = summarize(tp, fp, fn, CLASSES)
    rows = pd.DataFrame([{"id": i, **r} for i in range(3) for r in image_scores(pred[i], truth[i], CLASSES)])
    assert summary["dice"] == pytest.approx(per_image(rows)["dice"].mean())
    for name, dice in pooled_by_class(rows).items():
        assert summary[f"dice_{name}"] == pytest.approx(dice)


def test_binary_confusion_counts_foreground_only():
    tp, fp, fn = confusion(torch.tensor([[[1, 1], [0, 0]]]), torch.tensor([[[1, 0], [1, 0]]]), 2)
    assert (tp.item(), fp.item(), fn.item()) == (1, 1, 1)


def test_hd95_of_a_shifted_square_and_empty_cases():
    a = np.zeros((50, 60), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, a) == 0.0
    assert hd95(np.zeros_like(a), np.zeros_like(a)) == 0.0
    assert hd95(a, np.zeros_like(a)) == pytest.approx(np.hypot(50, 60))


def scipy_hd95(pred, target):
    """The definition with scipy's exact distance transform on the whole image, as a reference."""
    pred_edge, target_edge = (m & ~ndimage.binary_erosion(m) for m in (pred, target))
    distances = np.concatenate([ndimage.distance_transform_edt(~target_edge)[pred_edge],
                                ndimage.distance_transform_edt(~pred_edge)[target_edge]])
    return np.percentile(distances, 95)


@pytest.mark.parametrize("seed", range(6))
def test_hd95_equals_scipys_exact_distance_transform(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(20, 90, 2))
    blobs = [ndimage.zoom(rng.random((5, 5)), np.array(shape) / 5, order=1) > 0.5 for _ in range(2)]
    speckle = rng.random(shape) > 0.97  # isolated pixels and a shape touching the border
    for pred, target in ((blobs[0], blobs[1]), (blobs[0] | speckle, blobs[1]), (speckle, blobs[1])):
        if pred.any() and target.any():
            assert hd95(pred, target) == pytest.approx(scipy_hd95(pred, target), rel=1e-5)


def test_summary_per_tissue_averages_the_images_of_each_tissue():
    tp, fp, fn = torch.tensor([[1], [0], [1]]), torch.tensor([[0], [1], [1]]), torch.tensor([[0], [0], [0]])
    summary = summarize(tp, fp, fn, ["background", "x"], tissues=np.array(["colon", "breast", "colon"]))
    assert summary["dice_tissue_breast"] == 0.0
    assert summary["dice_tissue_colon"] == pytest.approx((1 + 2 / 3) / 2)
