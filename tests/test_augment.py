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
    strips = kinds(build_augmentation("medium", rotation_invariant=True, square=False))  # a turned strip: no batch
    assert A.VerticalFlip in strips and A.RandomRotate90 not in strips


@pytest.mark.parametrize("share", [0.0, 0.33, 1.0])
def test_the_share_of_foreground_patches_over_an_epoch_is_the_flags(share):
    """One 3 x 3 object in a 256 px image: a uniform 32 px patch holds it 2% of the time, a foreground one always.
    Drawn as train.py draws an epoch (CachedSegmentation, seeded by epoch and row), the light preset applied after."""
    from src.config import Config
    from src.data import CachedSegmentation
    from src.augment import training_augmentation
    rng = np.random.default_rng(0)
    n = 600
    images, masks = np.zeros((n, 256, 256), np.uint8), np.zeros((n, 256, 256), np.uint8)
    for k, (y, x) in enumerate(rng.integers(16, 237, (n, 2))):
        masks[k, y - 1:y + 2, x - 1:x + 2] = 1
    cfg = Config(size=256, patch=32, foreground_patches=share, aug="light")
    dataset = CachedSegmentation(images, masks, range(n), training_augmentation(cfg, {}), seed=1)
    dataset.epoch = 3
    held = np.array([dataset[i][1].any().item() for i in range(len(dataset))])
    assert dataset[0][1].shape == (32, 32)
    uniform = (32 / (256 - 32 + 1)) ** 2  # a random crop holding a given interior pixel
    assert abs(held.mean() - (share + (1 - share) * uniform)) < 0.05 and abs(held.mean() - share) < 0.05


def test_without_a_patch_no_crop_is_built_and_the_draws_are_unchanged():
    from src.config import Config
    from src.augment import training_augmentation
    for cfg in (Config(size=64, aug="light"), Config(size=64, patch=64, aug="light"), Config(size=64, aug="none")):
        built, plain = training_augmentation(cfg, {}), build_augmentation(cfg.aug)
        assert (built is None) == (plain is None)
        if built is not None:
            assert [type(t) for t in built.transforms] == [type(t) for t in plain.transforms]
    crop = training_augmentation(Config(size=64, patch=32, aug="none"), {})
    assert [type(t) for t in crop.transforms] == [A.OneOf]
    assert [type(t) for t in crop.transforms[0].transforms] == [A.CropNonEmptyMaskIfExists, A.RandomCrop]


def test_each_image_gives_patches_per_image_different_patches_an_epoch():
    from src.config import Config
    from src.data import CachedSegmentation
    from src.augment import training_augmentation
    images = np.random.default_rng(0).integers(0, 256, (4, 128, 128), dtype=np.uint8)
    cfg = Config(size=128, patch=32, aug="none", patches_per_image=3)
    dataset = CachedSegmentation(images, np.zeros_like(images), [0, 2], training_augmentation(cfg, {}), draws=3)
    patches = [dataset[i] for i in range(len(dataset))]
    assert len(dataset) == 6 and [row for *_, row in patches] == [0, 2] * 3
    assert len({patch.numpy().tobytes() for patch, *_ in patches}) == 6
