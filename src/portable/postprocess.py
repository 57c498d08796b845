"""Post-processing of averaged probabilities into the final class map, with the settings ensemble.py chose on OOF
data (their tuning is the project's src/postprocess.py).

Binary: threshold -> fill holes -> drop components below a minimum area -> keep the k largest.
Multiclass: argmax -> per class, drop components below a minimum area (they become background).
"""
from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class BinarySettings:
    threshold: float = 0.5
    fill_holes: bool = False
    min_area: float = 0.0
    keep_largest: int = 0


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
    if not settings.min_area and not settings.keep_largest:
        return mask.astype(np.uint8)
    labels, sizes = _components(mask)
    keep = np.concatenate([[False], _kept(sizes, settings.min_area * mask.size, settings.keep_largest)])
    return keep[labels].astype(np.uint8)


def apply_multiclass(probs: np.ndarray, min_areas: list) -> np.ndarray:
    """C x H x W probabilities -> class map; min_areas[c-1] is class c's minimum component area (fraction)."""
    classes = probs.argmax(axis=0).astype(np.uint8)
    for c, min_area in enumerate(min_areas, start=1):
        if min_area > 0:
            labels, sizes = _components(classes == c)
            drop = np.concatenate([[False], ~_kept(sizes, min_area * classes.size)])
            classes[drop[labels]] = 0
    return classes


# No post-processing: threshold 0.5 (binary) or argmax (multiclass).
PLAIN = {"binary": {"task": "binary", **asdict(BinarySettings())}, "multiclass": {"task": "multiclass", "min_areas": []}}


def apply(probs: np.ndarray, settings: dict) -> np.ndarray:
    """Probabilities (C x H x W, floats in [0, 1]) -> final class map with the chosen settings."""
    if settings["task"] == "binary":
        return apply_binary(probs[0], BinarySettings(**{k: v for k, v in settings.items() if k != "task"}))
    return apply_multiclass(probs, settings["min_areas"])
