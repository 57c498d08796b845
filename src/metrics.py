"""Dice, IoU (smp's metrics) per image and class, and the 95th-percentile Hausdorff distance (HD95).

Conventions: a class absent from both prediction and truth scores Dice = IoU = 1 and HD95 = 0 for its image; absent
from only one of them, HD95 is the image diagonal (the largest possible distance). HD95 comes in pixels (`hd95`),
in percent of the image diagonal (`hd95_pct`, comparable across image sizes) and, where the pixel spacing is known,
in mm (`hd95_mm`). A per-image score averages the foreground classes present in the image (in truth or prediction),
so that absent classes do not pad it with perfect scores; an image where no class is present scores Dice = IoU = 1
and HD95 = 0 (binary: the one class, as it is). Per-class dataset scores pool the pixels of all images.
"""
import cv2
import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch
from scipy import ndimage

from src.portable.labels import label_mask

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # 4-connected boundaries, as scipy's default erosion


def predicted_classes(logits: torch.Tensor, task: str, threshold: float = 0.0) -> torch.Tensor:
    """N x C x H x W logits -> N x H x W class indices (binary: foreground probability above 0.5; multilabel: each
    class above 0.5, its bit). Probabilities instead of logits: threshold 0.5."""
    if task == "multilabel":
        bits = 1 << torch.arange(logits.shape[1], device=logits.device)
        return ((logits > threshold).long() * bits[:, None, None]).sum(dim=1)
    return (logits[:, 0] > threshold).long() if task == "binary" else logits.argmax(dim=1)


def unpack_labels(mask: torch.Tensor, k: int) -> torch.Tensor:
    """N x H x W bits (src/portable/labels.py) -> N x K x H x W of 0 and 1, class 1 first."""
    return (mask.long()[:, None] >> torch.arange(k, device=mask.device)[:, None, None]) & 1


def confusion(pred: torch.Tensor, target: torch.Tensor, n_classes: int, task: str = "") -> tuple:
    """Per image and foreground class: true positive, false positive and false negative pixel counts (N x C-1)."""
    pred, target = pred.long(), target.long()
    if task == "multilabel":
        tp, fp, fn, _ = smp.metrics.get_stats(*(unpack_labels(m, n_classes - 1) for m in (pred, target)),
                                              mode="multilabel")
        return tp, fp, fn
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


def _counted_classes(tp, fp, fn) -> torch.Tensor:
    """N x C: which classes a per-image score averages, those present in the image (all, where none is)."""
    present = (torch.as_tensor(tp) + torch.as_tensor(fp) + torch.as_tensor(fn)) > 0
    return present | ~present.any(dim=1, keepdim=True)


def summarize(tp, fp, fn, class_names: list, tissues=None) -> dict:
    """Mean per-image Dice/IoU, pooled Dice/IoU for each foreground class, and mean Dice per tissue if given."""
    dice, iou = dice_iou(tp, fp, fn)
    weights = _counted_classes(tp, fp, fn).double()
    image_dice, image_iou = ((s * weights).sum(dim=1) / weights.sum(dim=1) for s in (dice, iou))
    summary = {"dice": image_dice.mean().item(), "iou": image_iou.mean().item(),
               "dice_std": image_dice.std(unbiased=False).item(), "images": int(dice.shape[0])}
    pooled_dice, pooled_iou = dice_iou(*(torch.as_tensor(a).sum(dim=0) for a in (tp, fp, fn)))
    for name, d, j in zip(class_names[1:], pooled_dice.tolist(), pooled_iou.tolist()):
        summary[f"dice_{name}"], summary[f"iou_{name}"] = d, j
    if tissues is not None:
        tissues = np.asarray(tissues)
        for tissue in sorted(set(tissues)):
            summary[f"dice_tissue_{tissue}"] = image_dice[torch.from_numpy(tissues == tissue)].mean().item()
    return summary


def hd95(pred: np.ndarray, target: np.ndarray, spacing=None) -> float:
    """The larger of the two directed 95th percentiles of boundary distances (prediction -> truth, truth ->
    prediction), in pixels, or in mm given spacing = (row_mm, col_mm).

    This is MONAI's compute_hausdorff_distance(percentile=95) and DeepMind surface-distance's robust Hausdorff, not
    the 95th percentile of both directions pooled (MedPy's hd95), where a false blob far away is ignored as long as
    its boundary is under 5% of all boundary pixels. Boundaries: the mask minus its 4-connected erosion.
    """
    pred, target = pred.astype(bool), target.astype(bool)
    scale = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float(np.hypot(pred.shape[0] * scale[0], pred.shape[1] * scale[1]))
    # Every boundary point lies in the union's bounding box, so distances computed inside it are exact.
    union = pred | target
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    pred, target = np.pad(pred[box], 1).astype(np.uint8), np.pad(target[box], 1).astype(np.uint8)
    pred_edge, target_edge = pred - cv2.erode(pred, _CROSS), target - cv2.erode(target, _CROSS)
    to_target = _distance_to(target_edge, scale)[pred_edge > 0]
    to_pred = _distance_to(pred_edge, scale)[target_edge > 0]
    return float(max(np.percentile(to_target, 95), np.percentile(to_pred, 95)))


def _distance_to(edge: np.ndarray, scale: tuple) -> np.ndarray:
    """Distance from every pixel to the nearest edge pixel. Square pixels: cv2's exact Euclidean transform
    (DIST_MASK_PRECISE, Felzenszwalb's algorithm), scipy's distance_transform_edt to 1e-4 px and 5x faster on a
    2000 px mask; rectangular pixels need scipy's, which takes the spacing."""
    if scale[0] == scale[1]:
        return cv2.distanceTransform(1 - edge, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64) * scale[0]
    return ndimage.distance_transform_edt(edge == 0, sampling=scale)


def image_scores(pred: np.ndarray, target: np.ndarray, class_names: list, with_hd95: bool = True,
                 spacing=None, task: str = "") -> list:
    """One row per foreground class of one image: pixel counts, Dice, IoU, HD95 in pixels of this image and in percent
    of its diagonal, and given spacing = (row_mm, col_mm) (src.canonical.spacing_of), HD95 in mm.

    with_hd95=False leaves HD95 out, for callers that need only the overlap scores (it is most of the work).
    task multilabel: the masks hold a bit per class (src/portable/labels.py), each class scored on its own pixels.
    """
    diagonal = float(np.hypot(*target.shape[:2]))
    rows = []
    for c, name in enumerate(class_names[1:], start=1):
        p, t = label_mask(pred, c, task), label_mask(target, c, task)
        tp = np.count_nonzero(p & t)
        fp, fn = np.count_nonzero(p) - tp, np.count_nonzero(t) - tp
        dice, iou = dice_iou([tp], [fp], [fn])
        row = {"class": name, "tp": tp, "fp": fp, "fn": fn, "dice": dice.item(), "iou": iou.item()}
        if with_hd95:
            row["hd95"] = hd95(p, t)
            row["hd95_pct"] = 100 * row["hd95"] / diagonal
            if spacing is not None:  # square pixels: the pixel value scaled, without a second pass
                square = float(spacing[0]) == float(spacing[1])
                row["hd95_mm"] = row["hd95"] * float(spacing[0]) if square else hd95(p, t, spacing)
        rows.append(row)
    return rows


SCORES = ["dice", "iou", "hd95", "hd95_pct", "hd95_mm"]


def per_image(scores: pd.DataFrame) -> pd.DataFrame:
    """Scores table (one row per image and class) -> one row per image: the mean over the classes present in it."""
    keys = [c for c in scores.columns if c not in ("class", "tp", "fp", "fn", *SCORES)]
    present = scores[["tp", "fp", "fn"]].sum(axis=1) > 0
    none_present = ~present.groupby([scores[k] for k in keys], sort=False, dropna=False).transform("any")
    counted = scores[present | none_present]
    return counted.groupby(keys, sort=False, dropna=False)[[c for c in SCORES if c in scores]].mean().reset_index()


def image_dice(scores: pd.DataFrame) -> pd.Series:
    """A scores table's Dice per image, indexed by image id."""
    return per_image(scores).set_index("id")["dice"]


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
