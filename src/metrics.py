"""Dice, IoU (smp's metrics) per image and class, and the 95th-percentile Hausdorff distance.

Conventions: an image where a class is absent from both prediction and truth scores Dice = IoU = 1 for it, and
HD95 = 0; where it is absent from only one of them, HD95 is the image diagonal (the largest possible distance).
Per-image scores average the foreground classes; per-class dataset scores pool the pixels of all images.
"""
import cv2
import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # 4-connected boundaries, as scipy's default erosion


def predicted_classes(logits: torch.Tensor, task: str) -> torch.Tensor:
    """N x C x H x W logits -> N x H x W class indices (binary: foreground probability above 0.5)."""
    return (logits[:, 0] > 0).long() if task == "binary" else logits.argmax(dim=1)


def confusion(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> tuple:
    """Per image and foreground class: true positive, false positive and false negative pixel counts (N x C-1)."""
    pred, target = pred.long(), target.long()
    if n_classes == 2:
        tp, fp, fn, _ = smp.metrics.get_stats(pred[:, None], target[:, None], mode="binary")
        return tp, fp, fn
    tp, fp, fn, _ = smp.metrics.get_stats(pred, target, mode="multiclass", num_classes=n_classes)
    return tp[:, 1:], fp[:, 1:], fn[:, 1:]


def dice_iou(tp, fp, fn) -> tuple:
    """Element-wise Dice and IoU with the empty-vs-empty = 1 convention."""
    tp, fp, fn = (a.double() if torch.is_tensor(a) else torch.tensor(np.array(a), dtype=torch.float64) for a in (tp, fp, fn))
    dice = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.ones_like(tp))
    iou = torch.where(tp + fp + fn > 0, tp / (tp + fp + fn).clamp(min=1), torch.ones_like(tp))
    return dice, iou


def summarize(tp, fp, fn, class_names: list, tissues=None) -> dict:
    """Mean per-image Dice/IoU, pooled Dice/IoU for each foreground class, and mean Dice per tissue if given."""
    dice, iou = dice_iou(tp, fp, fn)
    summary = {"dice": dice.mean(dim=1).mean().item(), "iou": iou.mean(dim=1).mean().item(),
               "dice_std": dice.mean(dim=1).std(unbiased=False).item(), "images": int(dice.shape[0])}
    pooled_dice, pooled_iou = dice_iou(*(torch.as_tensor(a).sum(dim=0) for a in (tp, fp, fn)))
    for name, d, j in zip(class_names[1:], pooled_dice.tolist(), pooled_iou.tolist()):
        summary[f"dice_{name}"], summary[f"iou_{name}"] = d, j
    if tissues is not None:
        tissues = np.asarray(tissues)
        for tissue in sorted(set(tissues)):
            summary[f"dice_tissue_{tissue}"] = dice.mean(dim=1)[torch.from_numpy(tissues == tissue)].mean().item()
    return summary


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """95th percentile of the symmetric boundary distances, in pixels of the given arrays.

    cv2's exact Euclidean distance transform (DIST_MASK_PRECISE, Felzenszwalb's algorithm) gives scipy's
    distance_transform_edt to 1e-4 px, 5x faster on a 2000 px mask.
    """
    pred, target = pred.astype(bool), target.astype(bool)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float(np.hypot(*pred.shape))
    # Every boundary point lies in the union's bounding box, so distances computed inside it are exact.
    union = pred | target
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    pred, target = np.pad(pred[box], 1).astype(np.uint8), np.pad(target[box], 1).astype(np.uint8)
    pred_edge, target_edge = pred - cv2.erode(pred, _CROSS), target - cv2.erode(target, _CROSS)
    to_target = cv2.distanceTransform(1 - target_edge, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[pred_edge > 0]
    to_pred = cv2.distanceTransform(1 - pred_edge, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[target_edge > 0]
    return float(np.percentile(np.concatenate([to_target, to_pred]).astype(np.float64), 95))


def image_scores(pred: np.ndarray, target: np.ndarray, class_names: list, with_hd95: bool = True) -> list:
    """One row per foreground class of one image: pixel counts, Dice, IoU and HD95 (pixels of this image).

    with_hd95=False leaves HD95 out, for callers that need only the overlap scores (it is most of the work).
    """
    rows = []
    for c, name in enumerate(class_names[1:], start=1):
        p, t = pred == c, target == c
        tp = np.count_nonzero(p & t)
        fp, fn = np.count_nonzero(p) - tp, np.count_nonzero(t) - tp
        dice, iou = dice_iou([tp], [fp], [fn])
        rows.append({"class": name, "tp": tp, "fp": fp, "fn": fn, "dice": dice.item(), "iou": iou.item(),
                     **({"hd95": hd95(p, t)} if with_hd95 else {})})
    return rows


def per_image(scores: pd.DataFrame) -> pd.DataFrame:
    """Scores table (one row per image and class) -> one row per image, classes averaged."""
    keep = [c for c in scores.columns if c not in ("class", "tp", "fp", "fn", "dice", "iou", "hd95")]
    return scores.groupby(keep, sort=False)[["dice", "iou", "hd95"]].mean().reset_index()


def pooled_by_class(scores) -> dict:
    """Dice of each class with its pixels pooled over all images (rare classes are not drowned by empty images)."""
    sums = scores.groupby("class", sort=False)[["tp", "fp", "fn"]].sum()
    dice, _ = dice_iou(sums["tp"].to_numpy(), sums["fp"].to_numpy(), sums["fn"].to_numpy())
    return dict(zip(sums.index, dice.tolist()))


def dice_by_group(image_dice: dict, groups: pd.Series) -> pd.DataFrame:
    """Mean per-image Dice of each model (columns) in each subgroup (rows: a value of groups, indexed by image id),
    with the number of images; e.g. chest X-ray view (PA, AP, AP supine) or PanNuke tissue."""
    table = pd.DataFrame(image_dice)
    table["group"] = groups.reindex(table.index).fillna("").astype(str).replace("", "(none)")
    out = table.groupby("group").mean()
    out.insert(0, "images", table.groupby("group").size())
    return out.sort_values("images", ascending=False)
