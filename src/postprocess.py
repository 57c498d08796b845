"""Post-processing of averaged probabilities, and its tuning on out-of-fold data.

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
from dataclasses import asdict

import cv2
import numpy as np

from src.portable.postprocess import (PLAIN, BinarySettings, _binary_mask, _components, _kept,  # noqa: F401
                                      apply, apply_binary, apply_multiclass)

THRESHOLDS = [round(float(t), 2) for t in np.arange(0.3, 0.701, 0.05)]
MIN_AREAS = [0.0, 0.0005, 0.002, 0.005, 0.01]  # fraction of the image's pixels; the first is no post-processing
POOLED_TOLERANCE = 0.005  # multiclass: the most a chosen minimum area may lower its class's pooled Dice
KEEP_LARGEST = [0, 1, 2]  # 0: keep all
FILL_HOLES = [False, True]


def binary_candidates() -> list:
    return [BinarySettings(*c) for c in itertools.product(THRESHOLDS, FILL_HOLES, MIN_AREAS, KEEP_LARGEST)]


def _dice(tp: int, predicted: int, truth: int) -> float:
    return 1.0 if predicted + truth == 0 else 2 * tp / (predicted + truth)


def binary_candidate_dice(prob: np.ndarray, truth: np.ndarray, candidates: list) -> np.ndarray:
    """Dice of every candidate setting on one image (same order as candidates)."""
    truth = truth.astype(bool)
    truth_area = int(truth.sum())
    cache, scores = {}, []
    for c in candidates:
        if (c.threshold, c.fill_holes) not in cache:
            labels, sizes = _components(_binary_mask(prob, c.threshold, c.fill_holes))
            cache[(c.threshold, c.fill_holes)] = sizes, np.bincount(labels[truth], minlength=len(sizes) + 1)[1:]
        sizes, overlaps = cache[(c.threshold, c.fill_holes)]
        keep = _kept(sizes, c.min_area * prob.size, c.keep_largest)
        scores.append(_dice(int(overlaps[keep].sum()), int(sizes[keep].sum()), truth_area))
    return np.array(scores)


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


def choose(task: str, candidate_scores: np.ndarray) -> dict:
    """The best settings on OOF images. Binary: the highest mean Dice over images. Multiclass (candidate_scores of
    multiclass_candidate_counts, one per image): per class, the minimum area of highest mean Dice over the images where
    the class is in truth or prediction, among those within POOLED_TOLERANCE of its pooled Dice without one."""
    if task == "binary":
        return {"task": task, **asdict(binary_candidates()[int(candidate_scores.mean(axis=0).argmax())])}
    tp, predicted, truth = np.moveaxis(candidate_scores, -1, 0)  # each images x classes x areas
    dice = _dice_or(tp, predicted + truth, np.nan)  # images x classes x areas, NaN where the class is absent
    scored = (predicted + truth > 0).sum(axis=0)
    mean = np.where(scored > 0, np.nansum(dice, axis=0) / np.maximum(scored, 1), 1.0)  # present nowhere: nothing lost
    pooled = _dice_or(tp.sum(axis=0), (predicted + truth).sum(axis=0), 1.0)
    allowed = pooled >= pooled[:, :1] - POOLED_TOLERANCE
    return {"task": task, "min_areas": [MIN_AREAS[j] for j in np.where(allowed, mean, -np.inf).argmax(axis=1)]}


def _dice_or(tp: np.ndarray, predicted_and_true: np.ndarray, empty: float) -> np.ndarray:
    """Element-wise Dice, `empty` where a class is neither predicted nor true."""
    return np.divide(2 * tp, predicted_and_true, out=np.full(tp.shape, empty), where=predicted_and_true > 0)


def choose_by_fold(task: str, candidate_scores: np.ndarray, folds) -> dict:
    """{fold: the settings chosen on the images of every other fold}: applied to its own fold, each is scored on
    images its choice never saw, so the mean score is an estimate, not a fit (cross-validated tuning).

    candidate_scores: one row per image, as for choose(); folds: each row's fold.
    """
    folds = np.asarray(folds)
    return {int(f): choose(task, candidate_scores[folds != f]) for f in np.unique(folds)}


