"""The embedded default: chest-X-ray-like and histology-like images generated from a seed.

Each image is drawn from its own generator seeded by (seed, index), so image i is the same whatever the count.
"""
import cv2
import numpy as np

NUCLEUS_CLASSES = ["background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"]
TISSUES = ["breast", "colon", "lung"]
# (colour RGB, radius range, class frequency): dead nuclei are rare, as in PanNuke.
_NUCLEUS_LOOK = {
    1: ((70, 30, 110), (5, 8), 0.35),
    2: ((40, 20, 80), (2, 4), 0.25),
    3: ((120, 60, 140), (2, 4), 0.2),
    4: ((20, 10, 30), (3, 5), 0.05),
    5: ((150, 80, 170), (4, 6), 0.15),
}


def _smooth_noise(rng, shape, scale):
    small = rng.normal(0, 1, (max(2, shape[0] // scale), max(2, shape[1] // scale))).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def chest_xray(seed: int, index: int):
    """A grey chest-X-ray-like image (uint8 HxW), its binary lung mask (uint8 0/1: the lung fields the heart leaves)
    and its labels that overlap (bits, src/portable/labels.py: the whole lungs 1, the heart over them 2)."""
    rng = np.random.default_rng([seed, index])
    h, w = int(rng.integers(200, 320)), int(rng.integers(200, 320))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)
    image = 40 + 20 * _smooth_noise(rng, (h, w), 32)
    body = ((xx - cx) / (0.46 * w)) ** 2 + ((yy - cy) / (0.6 * h)) ** 2 < 1
    image[body] += 110
    mask = np.zeros((h, w), np.uint8)
    lung_w, lung_h = w * rng.uniform(0.13, 0.17), h * rng.uniform(0.27, 0.34)
    for side in (-1, 1):
        lx = cx + side * w * rng.uniform(0.17, 0.21)
        ly = cy - h * rng.uniform(0.0, 0.06)
        wobble = 1 + 0.12 * _smooth_noise(rng, (h, w), 24)
        lung = (((xx - lx) / lung_w) ** 2 + ((yy - ly) / lung_h) ** 2) * wobble < 1
        mask[lung] = 1
    heart = ((xx - cx - 0.05 * w) / (0.13 * w)) ** 2 + ((yy - cy - 0.15 * h) / (0.13 * h)) ** 2 < 1
    overlapping = mask | (heart.astype(np.uint8) << 1)
    mask[heart] = 0
    image[mask == 1] -= rng.uniform(55, 85)
    image[heart] += 30
    rib_period = h * rng.uniform(0.07, 0.1)
    ribs = np.sin((yy + 0.25 * np.abs(xx - cx)) / rib_period * 2 * np.pi) > 0.75
    image[ribs & body] += 25
    image += rng.normal(0, rng.uniform(4, 12), (h, w))
    contrast, gamma = rng.uniform(0.7, 1.3), rng.uniform(0.8, 1.25)
    image = 255 * (np.clip((image - 128) * contrast + 128, 0, 255) / 255) ** gamma
    return image.astype(np.uint8), mask, overlapping


def tissue_of(seed: int, index: int) -> str:
    return TISSUES[int(np.random.default_rng([seed, index]).integers(len(TISSUES)))]


def histology(seed: int, index: int, size: int = 96):
    """An RGB histology-like patch, its class-index mask (0 background, 1-5 nuclei) and its tissue name."""
    rng = np.random.default_rng([seed, index])
    tissue = int(rng.integers(len(TISSUES)))  # the same first draw as tissue_of
    base = np.array([(235, 180, 210), (225, 170, 190), (215, 190, 215)][tissue], np.float32)
    image = base + 12 * _smooth_noise(rng, (size, size), 12)[..., None]
    mask = np.zeros((size, size), np.uint8)
    classes = list(_NUCLEUS_LOOK)
    probabilities = np.array([_NUCLEUS_LOOK[c][2] for c in classes])
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(8, 25))):
        cls = int(rng.choice(classes, p=probabilities / probabilities.sum()))
        colour, (r_min, r_max), _ = _NUCLEUS_LOOK[cls]
        ry, rx = rng.uniform(r_min, r_max, 2)
        cy, cx = rng.uniform(0, size, 2)
        nucleus = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        mask[nucleus] = cls
        image[nucleus] = colour
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask, TISSUES[tissue]
