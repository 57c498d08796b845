"""SegmentationLoss and --class-weights against values worked by hand from the formulas the README names."""
import math

import numpy as np
import pytest
import torch
from segmentation_models_pytorch import losses

from src.losses import SegmentationLoss, class_weights


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_binary_loss_is_dice_plus_0_8_bce():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1, 0, 1, 1]).reshape(1, 2, 2)
    p = [sigmoid(x) for x in (2.0, -1.0, 0.5, -3.0)]
    t = [1, 0, 1, 1]
    dice = 1 - 2 * sum(pi * ti for pi, ti in zip(p, t)) / (sum(p) + sum(t))
    bce = -sum(ti * math.log(pi) + (1 - ti) * math.log(1 - pi) for pi, ti in zip(p, t)) / 4
    loss = SegmentationLoss("binary")(logits, target)
    assert loss.item() == pytest.approx(dice + 0.8 * bce, rel=1e-6)
    assert SegmentationLoss("binary", dice_weight=0, ce_weight=1)(logits, target).item() == pytest.approx(bce, rel=1e-6)


# Three pixels, three classes, every class present once: logits per pixel and the true class.
LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 1.0, 0.2]]
TRUTH = [0, 1, 2]


def multiclass_inputs():
    logits = torch.tensor(LOGITS).T.reshape(1, 3, 1, 3)  # N x C x H x W
    return logits, torch.tensor(TRUTH).reshape(1, 1, 3)


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def hand_dice():
    probs = [softmax(row) for row in LOGITS]
    per_class = []
    for c in range(3):
        inter = sum(p[c] for p, t in zip(probs, TRUTH) if t == c)
        per_class.append(1 - 2 * inter / (sum(p[c] for p in probs) + TRUTH.count(c)))
    return sum(per_class) / 3


def test_multiclass_loss_is_dice_plus_weighted_cross_entropy():
    logits, target = multiclass_inputs()
    probs = [softmax(row) for row in LOGITS]
    ce = -sum(math.log(p[t]) for p, t in zip(probs, TRUTH)) / 3
    assert SegmentationLoss("multiclass")(logits, target).item() == pytest.approx(hand_dice() + 0.8 * ce, rel=1e-6)
    w = [1.0, 2.0, 4.0]  # weighted mean: each pixel's term times its class's weight, over the sum of those weights
    weighted_ce = -sum(w[t] * math.log(p[t]) for p, t in zip(probs, TRUTH)) / sum(w[t] for t in TRUTH)
    loss = SegmentationLoss("multiclass", weights=torch.tensor(w))(logits, target)
    assert loss.item() == pytest.approx(hand_dice() + 0.8 * weighted_ce, rel=1e-6)


def test_focal_replaces_cross_entropy_by_smps_per_class_focal_term():
    """smp's multiclass FocalLoss: a sigmoid focal term (gamma 2) per class and pixel, averaged over both."""
    logits, target = multiclass_inputs()
    focal = 0.0
    for c in range(3):
        terms = []
        for row, t in zip(LOGITS, TRUTH):
            pt = sigmoid(row[c]) if t == c else 1 - sigmoid(row[c])
            terms.append((1 - pt) ** 2 * -math.log(pt))
        focal += sum(terms) / len(terms) / 3
    loss = SegmentationLoss("multiclass", focal=True)(logits, target)
    assert loss.item() == pytest.approx(hand_dice() + 0.8 * focal, rel=1e-6)


def test_auto_class_weights_are_inverse_sqrt_frequency_with_mean_one():
    masks = np.array([0] * 899 + [1] * 99 + [2] * 0).reshape(1, -1)  # class 2 absent: counted as 1 pixel
    counts = np.array([900, 100, 1])  # +1 each, so an absent class gets a finite weight
    raw = 1 / np.sqrt(counts / counts.sum())
    weights = class_weights("auto", masks, 3)
    np.testing.assert_allclose(weights.numpy(), raw / raw.mean(), rtol=1e-6)
    assert weights.mean().item() == pytest.approx(1.0) and weights[1] / weights[0] == pytest.approx(3.0)


def test_class_weights_as_a_list_or_none():
    masks = np.zeros((1, 4), dtype=np.uint8)
    assert class_weights("none", masks, 3) is None
    assert class_weights("1,2.5,4", masks, 3).tolist() == [1.0, 2.5, 4.0]
    with pytest.raises(ValueError, match="--class-weights has 2 values for 3 classes"):
        class_weights("1,2", masks, 3)


def lovasz_batch():
    """Two 4 x 4 images whose hinge losses differ, the second with an empty mask: per image is not pooled."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 4, 4, generator=generator)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:4] = 1
    return logits, target


def test_the_default_loss_is_dice_bce_or_dice_ce_and_names_it():
    logits, target = lovasz_batch()
    default, chosen = SegmentationLoss("binary"), SegmentationLoss("binary", loss="dice_bce")
    assert default.loss == "dice_bce" and type(default.ce).__name__ == "SoftBCEWithLogitsLoss"
    assert torch.equal(default(logits, target), chosen(logits, target))
    assert SegmentationLoss("multiclass").loss == "dice_ce"
    with pytest.raises(ValueError, match="--loss dice_ce is for the other task: binary masks take dice_bce or lovasz"):
        SegmentationLoss("binary", loss="dice_ce")


def test_lovasz_is_smps_lovasz_loss_per_image_alone_and_on_every_head():
    logits, target = lovasz_batch()
    loss = SegmentationLoss("binary", loss="lovasz")
    per_image = losses.LovaszLoss("binary", per_image=True)(logits, target[:, None].float())
    pooled = losses.LovaszLoss("binary")(logits, target[:, None].float())
    assert loss(logits, target).item() == pytest.approx(per_image.item(), rel=1e-6)
    assert per_image.item() != pytest.approx(pooled.item(), rel=1e-3)  # the reference's choice, not smp's default
    heads = SegmentationLoss("binary", loss="lovasz", head_weights=[1.0, 3.0])  # unetpp_ds: each head's Lovász
    second = losses.LovaszLoss("binary", per_image=True)(-logits, target[:, None].float())
    assert heads([logits, -logits], target).item() == pytest.approx((per_image + 3 * second).item() / 4, rel=1e-6)
    multiclass, truth = multiclass_inputs()
    expected = losses.LovaszLoss("multiclass", per_image=True)(multiclass, truth)
    assert SegmentationLoss("multiclass", loss="lovasz")(multiclass, truth).item() == pytest.approx(expected.item())
