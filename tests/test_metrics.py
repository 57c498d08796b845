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
    assert hd95(a, np.zeros_like(a), spacing=(0.5, 2.0)) == pytest.approx(np.hypot(25, 120))


def reference_hd95(pred, target, spacing=(1.0, 1.0)):
    """HD95 from its definition with scipy alone, on the whole image: boundaries as MedPy draws them (mask XOR its
    erosion by the connectivity-1 structure), exact distances, and the larger of the two directed 95th percentiles.
    Also the distances of each direction."""
    cross = ndimage.generate_binary_structure(2, 1)
    pred_edge, target_edge = (m ^ ndimage.binary_erosion(m, cross) for m in (pred, target))
    to_target = ndimage.distance_transform_edt(~target_edge, sampling=spacing)[pred_edge]
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=spacing)[target_edge]
    return max(np.percentile(to_target, 95), np.percentile(to_pred, 95)), to_target, to_pred


@pytest.mark.parametrize("seed", range(6))
def test_hd95_equals_its_definition_written_with_scipy(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(20, 90, 2))
    blobs = [ndimage.zoom(rng.random((5, 5)), np.array(shape) / 5, order=1) > 0.5 for _ in range(2)]
    speckle = rng.random(shape) > 0.97  # isolated pixels and a shape touching the border
    for pred, target in ((blobs[0], blobs[1]), (blobs[0] | speckle, blobs[1]), (speckle, blobs[1])):
        if pred.any() and target.any():
            assert hd95(pred, target) == pytest.approx(reference_hd95(pred, target)[0], rel=1e-5)
            for spacing in ((0.3, 0.3), (0.5, 1.7)):
                assert hd95(pred, target, spacing) == pytest.approx(reference_hd95(pred, target, spacing)[0], rel=1e-5)


def test_a_far_stray_blob_in_the_prediction_sets_hd95():
    rows, cols = np.mgrid[:1024, :1024]
    lung = ((rows - 500) / 250) ** 2 + ((cols - 300) / 150) ** 2 <= 1
    stray = (rows - 500) ** 2 + (cols - 800) ** 2 <= 20 ** 2  # radius 20 px, 350 px beyond the lung's edge
    standard, to_target, to_pred = reference_hd95(lung | stray, lung)
    assert hd95(lung | stray, lung) == pytest.approx(standard, rel=1e-5) and standard > 300
    # Both directions pooled, the blob's boundary is under 5% of all boundary pixels and would count for nothing.
    assert np.percentile(np.concatenate([to_target, to_pred]), 95) < 5


def test_hd95_normalised_by_the_diagonal_and_in_mm():
    truth = np.zeros((120, 160), np.uint8)
    truth[40:80, 40:80] = 1
    pred = np.roll(truth, 3, axis=1)
    classes = ["background", "a", "b"]
    a, b = image_scores(pred, truth, classes)
    assert a["hd95"] == pytest.approx(3.0) and a["hd95_pct"] == pytest.approx(3.0 / 200 * 100) and "hd95_mm" not in a
    assert (b["hd95"], b["hd95_pct"]) == (0.0, 0.0)
    assert image_scores(pred, truth, classes, spacing=(0.5, 0.5))[0]["hd95_mm"] == pytest.approx(1.5)
    anisotropic = image_scores(pred, truth, classes, spacing=(0.5, 2.0))[0]
    assert anisotropic["hd95_mm"] == pytest.approx(reference_hd95(pred == 1, truth == 1, (0.5, 2.0))[0])
    assert anisotropic["hd95_mm"] == pytest.approx(3 * 2.0)  # the shift runs along the columns, 2 mm apart
    missed = image_scores(np.zeros_like(truth), truth, classes, spacing=(0.5, 2.0))[0]
    assert missed["hd95_pct"] == pytest.approx(100) and missed["hd95_mm"] == pytest.approx(np.hypot(60, 320))


FIVE = ["background", "a", "b", "c", "d", "e"]


def test_per_image_scores_average_only_the_classes_present():
    truth = np.zeros((3, 8, 8), np.uint8)
    truth[:2, 0, :4] = 1  # images 0 and 1: 4 px of class a, nothing else
    pred = truth.copy()
    pred[:2, 0, 3], pred[:2, 5, 5] = 0, 1  # a: tp 3, fp 1, fn 1 -> Dice 0.75
    pred[1, 7, 7] = 2  # image 1: a stray pixel of b, absent from its truth; image 2: empty against empty
    rows = pd.DataFrame([{"id": str(i), "view": [None, "PA", "AP"][i], **r}
                         for i in range(3) for r in image_scores(pred[i], truth[i], FIVE)])
    images = per_image(rows).set_index("id")
    assert images.loc["0", "dice"] == pytest.approx(0.75)  # not (0.75 + 4 x 1) / 5 = 0.95
    assert images.loc["1", "dice"] == pytest.approx((0.75 + 0) / 2)
    assert images.loc["1", "hd95_pct"] == pytest.approx((rows.loc[5, "hd95_pct"] + 100) / 2)
    assert (images.loc["2", "dice"], images.loc["2", "iou"], images.loc["2", "hd95"]) == (1.0, 1.0, 0.0)
    assert len(images) == 3  # an image whose own column is empty is kept
    tp, fp, fn = confusion(torch.from_numpy(pred), torch.from_numpy(truth), len(FIVE))
    summary = summarize(tp, fp, fn, FIVE)
    assert summary["dice"] == pytest.approx(images["dice"].mean()) and summary["iou"] == pytest.approx(images["iou"].mean())


def test_binary_per_image_scores_are_the_one_class():
    truth, pred = np.zeros((2, 6, 6), np.uint8), np.zeros((2, 6, 6), np.uint8)
    truth[0, :2], pred[0, :3] = 1, 1
    rows = pd.DataFrame([{"id": i, **r} for i in range(2) for r in image_scores(pred[i], truth[i], ["bg", "x"])])
    assert per_image(rows)["dice"].tolist() == pytest.approx([0.8, 1.0])


def test_summary_per_tissue_averages_the_images_of_each_tissue():
    tp, fp, fn = torch.tensor([[1], [0], [1]]), torch.tensor([[0], [1], [1]]), torch.tensor([[0], [0], [0]])
    summary = summarize(tp, fp, fn, ["background", "x"], tissues=np.array(["colon", "breast", "colon"]))
    assert summary["dice_tissue_breast"] == 0.0
    assert summary["dice_tissue_colon"] == pytest.approx((1 + 2 / 3) / 2)
