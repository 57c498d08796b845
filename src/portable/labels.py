"""Labels that overlap (multilabel): one bit per class in one uint8 per pixel, so masks, the cache and augmentation
keep the form of class-index masks (H x W uint8, nearest-neighbour resampling keeps each bit).

Class c (1..K, after background in the dataset's class list) is bit c - 1: a pixel of the lungs (class 1) under the
heart (class 2) holds 0b11 = 3. Class-index masks (binary, multiclass) hold c itself; label_mask reads either.
"""
import numpy as np

MAX_LABELS = 8  # bits of a uint8


def label_mask(mask: np.ndarray, c: int, task: str) -> np.ndarray:
    """The pixels of class c (1..K) in a mask of the task: its bit for multilabel, its index otherwise."""
    if task == "multilabel":
        return (mask >> (c - 1)) & 1 > 0
    return mask == c


def pack(channels: np.ndarray) -> np.ndarray:
    """K x ... booleans (class 1 first; K x H x W, or K x slices x H x W) -> ... uint8 bits."""
    weights = (1 << np.arange(len(channels), dtype=np.uint16)).reshape(-1, *[1] * (np.ndim(channels) - 1))
    return (np.asarray(channels, dtype=np.uint16) * weights).sum(axis=0).astype(np.uint8)


def unpack(mask: np.ndarray, k: int) -> np.ndarray:
    """... uint8 bits (H x W, or N x H x W) -> K x ... booleans, class 1 first."""
    return (mask[None] >> np.arange(k, dtype=np.uint8).reshape(-1, *[1] * mask.ndim)) & 1 > 0
