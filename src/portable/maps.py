"""Probability maps from the model's input size back to each image's own: the two roundings every ensemble mask goes
through, in one place, so that the project's ensemble.py and an exported package compute the same masks.

1. Each model's map leaves the model as uint8 (probability * 255) at its training size: infer.py stores it so, and a
   package keeps it so in memory (uint8_maps).
2. The weighted mean of one image's maps, one per model size, is rounded to uint8 again (mean_maps); resized to the
   image's size (resize_prob, bilinear) and averaged over the sizes, it gives the probabilities post-processing reads
   (mean_at).
"""
import cv2
import numpy as np

from .images import resize
from .postprocess import apply


def model_input(original: np.ndarray, size) -> np.ndarray:
    """An image in the dataset's form (images.read_as) as the model reads it, at its working size (N or (H, W)):
    uint8 C x H x W."""
    resized = resize(original, size, is_mask=False)
    return np.ascontiguousarray(resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1))


def uint8_maps(probs: np.ndarray) -> np.ndarray:
    """Probabilities (float32, any shape) -> uint8 maps, probability * 255 rounded half to even: rounding 1."""
    return (probs * np.float32(255)).round().astype(np.uint8)


def resize_prob(prob: np.ndarray, size: tuple) -> np.ndarray:
    """uint8 C x h x w map (a model's working size) -> float32 C x H x W probabilities at size (H, W), bilinear.

    cv2's INTER_LINEAR samples at pixel centres like torch's bilinear with align_corners=False (equal to 1e-5), is
    ~10x faster than torch on the host (0.3 vs 2.8 ms, 128 -> 2000 px) and releases the GIL, so threads scale.
    """
    height, width = (int(n) for n in size)
    channels_last = np.ascontiguousarray(prob.transpose(1, 2, 0), dtype=np.float32) / 255
    resized = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, -1).transpose(2, 0, 1)  # cv2 drops a single channel's axis


def mean_maps(weighted: list) -> list:
    """[(uint8 map, weight)] of one image -> [(uint8 weighted mean map, summed weight)], one per map size: rounding 2.

    Runs trained at different sizes are combined by mean_at() after resizing, which equals resizing every map first
    (bilinear resizing is linear)."""
    sums = {}
    for prob, weight in weighted:
        total, total_weight = sums.get(prob.shape, (0.0, 0.0))
        sums[prob.shape] = (total + weight * prob.astype(np.float32), total_weight + weight)
    return [((total / w).round().astype(np.uint8), w) for total, w in sums.values()]


def mean_at(maps: list, size: tuple) -> np.ndarray:
    """mean_maps()'s maps -> float32 C x H x W mean probabilities at size (H, W)."""
    total = sum(w for _, w in maps)
    return sum(w / total * resize_prob(prob, size) for prob, w in maps)


def final_mask(weighted: list, size: tuple, settings: dict) -> np.ndarray:
    """[(uint8 map, weight)] of one image's models -> its post-processed class map at size (H, W): the test masks."""
    return apply(mean_at(mean_maps(weighted), size), settings)
