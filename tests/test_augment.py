"""Augmentation presets: image and mask move together; histology also gets vertical flips and 90-degree turns."""
import albumentations as A
import numpy as np
import pytest

from src.augment import build_augmentation


@pytest.mark.parametrize("preset", ["light", "medium", "heavy"])
def test_mask_follows_the_image(preset):
    image = np.zeros((64, 64), np.uint8)
    image[10:30, 5:20] = 200
    mask = (image > 0).astype(np.uint8)
    augmentation = build_augmentation(preset)
    for seed in range(10):
        augmentation.set_random_seed(seed)
        out = augmentation(image=image, mask=mask)
        assert out["mask"].shape == (64, 64) and set(np.unique(out["mask"])) <= {0, 1}
        inside = out["image"][out["mask"] == 1]
        assert inside.size == 0 or np.median(inside) > 100  # the bright square is where the mask says


def test_rotation_invariant_datasets_get_the_d4_group():
    def kinds(aug):
        return {type(t) for t in aug.transforms}
    assert {A.VerticalFlip, A.RandomRotate90} <= kinds(build_augmentation("medium", rotation_invariant=True))
    assert not {A.VerticalFlip, A.RandomRotate90} & kinds(build_augmentation("medium"))  # chest X-rays stay upright
    assert build_augmentation("none") is None
