"""The cache keeps masks aligned with their images: both are sampled at pixel centres."""
import cv2
import numpy as np

from src.portable import postprocess
from src.portable.images import resize
from src.metrics import image_scores
from src.portable.maps import resize_prob


def centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([rows.mean(), cols.mean()])


def test_cached_rectangles_map_back_without_a_systematic_offset():
    """Rectangles at 20 positions on 2000 px images, cached at 64 px: mapped back, their centroids sit where they
    were (plain INTER_NEAREST shifted every one by half a cache pixel, about 15 px, always up and left). Steps of 67
    and 59 px against cache cells of 31.25 px put the rectangles' edges at every phase of a cell."""
    side, size, offsets = 2000, 64, {"centred": [], "legacy": []}
    for i in range(20):
        mask = np.zeros((side, side), np.uint8)
        top, left, height, width = 100 + 67 * i, 100 + 59 * i, 150 + 17 * i, 150 + 7 * i
        mask[top:top + height, left:left + width] = 1
        for name, cached in (("centred", resize(mask, size, is_mask=True)),
                             ("legacy", cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))):
            # Cache cell i covers original pixels [i * scale, (i + 1) * scale): its centre is (i + 0.5) * scale - 0.5.
            offsets[name].append((centroid(cached) + 0.5) * side / size - 0.5 - centroid(mask))
    centred, legacy = (np.mean(offsets[name], axis=0) for name in ("centred", "legacy"))
    assert np.all(np.abs(centred) < 2.0), centred  # pixels of the 2000 px original
    assert np.all(legacy > 12), legacy  # plain INTER_NEAREST: half a cache pixel (15.6 px), always down and right


def lungs(side: int) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    for centre_x in (0.3, 0.7):
        cv2.ellipse(mask, (int(centre_x * side), int(0.5 * side)), (int(0.16 * side), int(0.32 * side)), 0, 0, 360, 1, -1)
    return mask


def test_a_perfect_cached_mask_scores_above_099_at_original_size():
    """A model that outputs the 128 px cache mask exactly, scored as infer.py scores OOF on a 2000 px image."""
    truth = lungs(2000)
    prob = resize(truth, 128, is_mask=True)[None] * np.uint8(255)
    pred = postprocess.apply(resize_prob(prob, truth.shape), postprocess.PLAIN["binary"])
    dice = image_scores(pred, truth, ["background", "lung"])[0]["dice"]
    assert dice >= 0.99, dice
