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


def class_pixels(mask: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    """Pixels of each class (background first: the pixels of no class) in a mask of the task."""
    if task != "multilabel":
        return np.bincount(np.ravel(mask), minlength=n_classes)
    return np.array([np.count_nonzero(mask == 0)] + [np.count_nonzero(label_mask(mask, c, task))
                                                     for c in range(1, n_classes)])


def pack(channels: np.ndarray) -> np.ndarray:
    """K x ... booleans (class 1 first; K x H x W, or K x slices x H x W) -> ... uint8 bits."""
    weights = (1 << np.arange(len(channels), dtype=np.uint16)).reshape(-1, *[1] * (np.ndim(channels) - 1))
    return (np.asarray(channels, dtype=np.uint16) * weights).sum(axis=0).astype(np.uint8)


def unpack(mask: np.ndarray, k: int) -> np.ndarray:
    """... uint8 bits (H x W, or N x H x W) -> K x ... booleans, class 1 first."""
    return (mask[None] >> np.arange(k, dtype=np.uint8).reshape(-1, *[1] * mask.ndim)) & 1 > 0


def label_order(meta: dict) -> list:
    """The label value each region (meta.json's regions, {name: its values}) becomes in a label map: nnU-Net v2's
    regions_class_order where dataset.json gave one, else the smallest of the region's values that no later region
    holds (whole=1,2 core=2 -> 1, 2; BraTS' whole=1,2,3 core=2,3 enhancing=3 -> 1, 2, 3: nnU-Net's own order for
    nested regions)."""
    if meta.get("regions_class_order"):
        return list(meta["regions_class_order"])
    regions = list(meta["regions"].values())
    order = []
    for i, values in enumerate(regions):
        own = set(values) - {v for later in regions[i + 1:] for v in later}
        order.append(min(own) if own else max(values))
    return order


def to_labels(bits: np.ndarray, order: list) -> np.ndarray:
    """Bits of regions -> a label map as nnU-Net writes one: each region's pixels take its label value (order), a
    later region over an earlier one (the nested core inside the whole)."""
    labels = np.zeros(bits.shape, np.uint8)
    for i, value in enumerate(order):
        labels[(bits >> i) & 1 > 0] = value
    return labels
