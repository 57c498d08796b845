"""Post-processing of averaged probabilities into the final class map, and its tuning on out-of-fold data: the
settings ensemble.py chooses, and an exported package applies, in one place.

Binary: threshold -> fill holes -> drop components below a minimum area -> keep the k largest.
Multiclass: argmax -> per class, drop components below a minimum area (they become background).
Tuning scores every candidate from one connected-component labelling per (threshold, fill): a component is kept or
dropped whole, so its size and its overlap with the truth give each candidate's Dice without redrawing the mask.

Multiclass tuning follows nnU-Net's semantics: a class absent from both truth and prediction in an image is not a
score there (NaN, left out of the class's mean over images), so erasing a rare class earns nothing on the images
without it; and a minimum area may not lower its class's Dice pooled over the tuning images by more than
POOLED_TOLERANCE below its value without post-processing.
"""
import itertools
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .labels import pack


THRESHOLDS = [round(float(t), 2) for t in np.arange(0.3, 0.701, 0.05)]
MIN_AREAS = [0.0, 0.0005, 0.002, 0.005, 0.01]  # fraction of the image's pixels; the first is no post-processing
POOLED_TOLERANCE = 0.005  # multiclass: the most a chosen minimum area may lower its class's pooled Dice
KEEP_LARGEST = [0, 1, 2]  # 0: keep all
FILL_HOLES = [False, True]
# multilabel: a class predicted on less than this share of the image is emptied there (the "empty if smaller than A"
# rule of SIIM's and Severstal's winning solutions), 0: never
MIN_TOTALS = [0.0, 0.001, 0.005, 0.01, 0.02]


@dataclass(frozen=True)
class BinarySettings:
    threshold: float = 0.5
    fill_holes: bool = False
    min_area: float = 0.0
    keep_largest: int = 0
    min_total: float = 0.0  # multilabel's per class (MIN_TOTALS); binary tuning keeps it 0


def _labelled(mask: np.ndarray) -> tuple:
    """4-connected components of a boolean mask (scipy.ndimage.label's default structure): (labels, stats), cv2's
    connectedComponentsWithStats, which gives each component's area and box in the same pass: ndimage.label and a
    bincount of its labels took 1.5-3x as long (270 px to 2000 px masks)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, dtype=bool).view(np.uint8),
                                                           connectivity=4, ltype=cv2.CV_32S)
    return labels, stats


def _components(mask: np.ndarray) -> tuple:
    """(labels, the pixel count of components 1..n): label 0 is the background."""
    labels, stats = _labelled(mask)
    return labels, stats[1:, cv2.CC_STAT_AREA].astype(np.int64)


def _kept(sizes: np.ndarray, min_pixels: float, keep_largest: int = 0) -> np.ndarray:
    keep = sizes >= min_pixels
    if keep_largest and keep.sum() > keep_largest:
        keep &= sizes >= np.sort(sizes[keep])[-keep_largest]
    return keep


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """scipy's binary_fill_holes, from one labelling of the background (4-connected, as its default): a hole is a
    background component whose box does not reach the image's edge. 2.7x faster than binary_fill_holes on a
    2000 px mask (28 vs 77 ms)."""
    background, stats = _labelled(~mask)
    left, top, width, height = (stats[:, k] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                      cv2.CC_STAT_HEIGHT))
    filled = (left > 0) & (top > 0) & (left + width < mask.shape[1]) & (top + height < mask.shape[0])
    filled[0] = True  # label 0 of the background's labelling: the mask itself
    return filled[background]


def _binary_mask(prob: np.ndarray, threshold: float, fill_holes: bool) -> np.ndarray:
    mask = prob >= threshold
    return _fill_holes(mask) if fill_holes else mask


def apply_binary(prob: np.ndarray, settings: BinarySettings) -> np.ndarray:
    """H x W probabilities in [0, 1] -> uint8 0/1 mask."""
    mask = _binary_mask(prob, settings.threshold, settings.fill_holes)
    if settings.min_area or settings.keep_largest:
        labels, sizes = _components(mask)
        mask = np.concatenate([[False], _kept(sizes, settings.min_area * mask.size, settings.keep_largest)])[labels]
    if settings.min_total and np.count_nonzero(mask) < settings.min_total * mask.size:
        return np.zeros(mask.shape, np.uint8)
    return mask.astype(np.uint8)


def apply_multiclass(probs: np.ndarray, min_areas: list) -> np.ndarray:
    """C x H x W probabilities -> class map; min_areas[c-1] is class c's minimum component area (fraction)."""
    classes = probs.argmax(axis=0).astype(np.uint8)
    for c, min_area in enumerate(min_areas, start=1):
        if min_area > 0:
            labels, sizes = _components(classes == c)
            drop = np.concatenate([[False], ~_kept(sizes, min_area * classes.size)])
            classes[drop[labels]] = 0
    return classes


SLICE_FREE = ("task", "largest_3d")  # settings that are not a slice's: largest_3d is a volume's (volumes.keep_largest)

# No post-processing: threshold 0.5 (binary; multilabel: each class's sigmoid) or argmax (multiclass).
PLAIN = {"binary": {"task": "binary", **asdict(BinarySettings())},
         "multiclass": {"task": "multiclass", "min_areas": []},
         "multilabel": {"task": "multilabel", "by_class": []}}


def apply(probs: np.ndarray, settings: dict) -> np.ndarray:
    """Probabilities (C x H x W, floats in [0, 1]) -> final class map with the chosen settings; multilabel: each
    class's binary settings (by_class, class 1 first; the plain ones where none), one bit each (labels.py)."""
    if settings["task"] == "binary":
        return apply_binary(probs[0], BinarySettings(**{k: v for k, v in settings.items() if k not in SLICE_FREE}))
    if settings["task"] == "multilabel":
        chosen = settings["by_class"] or [{}] * len(probs)
        return pack(np.stack([apply_binary(prob, BinarySettings(**by)) for prob, by in zip(probs, chosen)]))
    return apply_multiclass(probs, settings["min_areas"])


def binary_candidates(min_totals: tuple = (0.0,)) -> list:
    """Every setting tuning tries; min_totals: the minimum total areas (multilabel: MIN_TOTALS)."""
    return [BinarySettings(*c) for c in itertools.product(THRESHOLDS, FILL_HOLES, MIN_AREAS, KEEP_LARGEST, min_totals)]


def candidates_of(task: str) -> list:
    """The binary settings a task's tuning scores (choose() reads the scores in this order): multilabel adds each
    class's minimum total area."""
    return binary_candidates(tuple(MIN_TOTALS) if task == "multilabel" else (0.0,))


def binary_candidate_counts(prob: np.ndarray, truth: np.ndarray, candidates: list) -> np.ndarray:
    """(candidates x 3) pixel counts (true positive, predicted, true) of every candidate setting on one image (same
    order as candidates): its Dice on the image, and on a volume's slices summed, the case's 3D Dice. float32, exact
    for the pixels of a tuning-size image (below 2^24), so that thousands of images x 1350 candidates fit in memory."""
    truth = truth.astype(bool)
    truth_area = int(truth.sum())
    cache, counts = {}, np.zeros((len(candidates), 3), np.float32)
    for j, c in enumerate(candidates):
        if (c.threshold, c.fill_holes) not in cache:
            labels, sizes = _components(_binary_mask(prob, c.threshold, c.fill_holes))
            cache[(c.threshold, c.fill_holes)] = sizes, np.bincount(labels[truth], minlength=len(sizes) + 1)[1:]
        sizes, overlaps = cache[(c.threshold, c.fill_holes)]
        keep = _kept(sizes, c.min_area * prob.size, c.keep_largest)
        predicted = int(sizes[keep].sum())
        if predicted < c.min_total * prob.size:  # emptied: too little of the class to keep
            keep, predicted = np.zeros_like(keep), 0
        counts[j] = overlaps[keep].sum(), predicted, truth_area
    return counts


def multiclass_candidate_counts(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(foreground classes x MIN_AREAS x 3) pixel counts (true positive, predicted, true) of each class at each minimum
    area on one image: its Dice on the image, and pooled over images, both follow from them."""
    classes = probs.argmax(axis=0)
    counts = np.zeros((probs.shape[0] - 1, len(MIN_AREAS), 3))
    for c in range(1, probs.shape[0]):
        true_c = truth == c
        labels, sizes = _components(classes == c)
        overlaps = np.bincount(labels[true_c], minlength=len(sizes) + 1)[1:]
        for j, min_area in enumerate(MIN_AREAS):
            keep = _kept(sizes, min_area * classes.size)
            counts[c - 1, j] = overlaps[keep].sum(), sizes[keep].sum(), true_c.sum()
    return counts


def shrink(array: np.ndarray, max_side: int) -> np.ndarray:
    """A mask (or image) scaled, nearest neighbour at pixel centres (as src.portable.images.resize), so its longer side is at most max_side; as it is if smaller.

    Tuning resizes the probabilities to the shrunk truth's shape: areas are fractions of the image, so settings
    chosen on a 512 px copy of a 2000 px X-ray carry over, for a fraction of the labelling work.
    """
    height, width = array.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST_EXACT)


def by_group(counts: np.ndarray, groups) -> np.ndarray:
    """Candidate counts of images summed within each group (a volume's slices: its case), so that a group is scored
    as one image: the case's 3D Dice. groups None: the images as they are."""
    if groups is None:
        return counts
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    summed = np.zeros((group.max() + 1, *counts.shape[1:]))
    np.add.at(summed, group, counts)
    return summed


def choose(task: str, candidate_counts: np.ndarray, groups=None) -> dict:
    """The best settings on OOF images, from each image's candidate counts (true positive, predicted, true in the
    last axis). Binary: the highest mean Dice over images (an image without the class in truth or prediction scores
    1); multilabel: so for each class, its bit a binary mask. Multiclass (multiclass_candidate_counts): per class, the
    minimum area of highest mean Dice over the images where the class is in truth or prediction, among those within
    POOLED_TOLERANCE of its pooled Dice without one. groups (one per image, e.g. a volume's case): each group's
    counts summed first, so that the mean is over groups (cases scored in 3D, as nnU-Net chooses its
    post-processing), never over the slices a metric does not score."""
    tp, predicted, truth = np.moveaxis(by_group(candidate_counts, groups), -1, 0)
    if task in ("binary", "multilabel"):
        mean = _dice_or(tp, predicted + truth, 1.0).mean(axis=0)  # candidates, or classes x candidates
        candidates = candidates_of(task)
        if task == "binary":
            return {"task": task, **asdict(candidates[int(mean.argmax())])}
        return {"task": task, "by_class": [asdict(candidates[int(j)]) for j in mean.argmax(axis=1)]}
    dice = _dice_or(tp, predicted + truth, np.nan)  # images x classes x areas, NaN where the class is absent
    scored = (predicted + truth > 0).sum(axis=0)
    mean = np.where(scored > 0, np.nansum(dice, axis=0) / np.maximum(scored, 1), 1.0)  # present nowhere: nothing lost
    pooled = _dice_or(tp.sum(axis=0), (predicted + truth).sum(axis=0), 1.0)
    allowed = pooled >= pooled[:, :1] - POOLED_TOLERANCE
    return {"task": task, "min_areas": [MIN_AREAS[j] for j in np.where(allowed, mean, -np.inf).argmax(axis=1)]}


def _dice_or(tp: np.ndarray, predicted_and_true: np.ndarray, empty: float) -> np.ndarray:
    """Element-wise Dice, `empty` where a class is neither predicted nor true."""
    return np.divide(2 * tp, predicted_and_true, out=np.full(tp.shape, empty), where=predicted_and_true > 0)


def choose_by_fold(task: str, candidate_counts: np.ndarray, folds, groups=None) -> dict:
    """{fold: the settings chosen on the images of every other fold}: applied to its own fold, each is scored on
    images its choice never saw, so the mean score is an estimate, not a fit (cross-validated tuning).

    candidate_counts: one row per image, as for choose(); folds: each row's fold; groups: each row's group (a case
    lies in one fold).
    """
    folds = np.asarray(folds)
    groups = None if groups is None else np.asarray(groups)
    return {int(f): choose(task, candidate_counts[folds != f], None if groups is None else groups[folds != f])
            for f in np.unique(folds)}
