"""The cached dataset: augmentation depends on (seed, epoch, image) only, whatever the workers."""
import numpy as np
import torch

from src.augment import build_augmentation
from src.data import CachedSegmentation, make_loader


def batches(workers: int, epochs: int = 2) -> list:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 32, 32), dtype=np.uint8)
    masks = (rng.random((12, 32, 32)) > 0.5).astype(np.uint8)
    dataset = CachedSegmentation(images, masks, range(12), build_augmentation("heavy"), seed=3)
    loader = make_loader(dataset, batch_size=4, shuffle=False, workers=workers)
    out = []
    for epoch in range(epochs):
        dataset.epoch = epoch
        out.append(torch.cat([b[0] for b in loader]))
    return out


def test_persistent_workers_see_each_epoch_and_match_the_main_process():
    in_process, in_workers = batches(0), batches(2)
    for a, b in zip(in_process, in_workers):
        torch.testing.assert_close(a, b)
    assert not torch.equal(in_process[0], in_process[1])  # a new epoch draws new augmentations


def test_items_are_uint8_channels_first_with_their_cache_row():
    images = np.zeros((5, 16, 16, 3), np.uint8)
    masks = np.ones((5, 16, 16), np.uint8)
    image, mask, row = CachedSegmentation(images, masks, [4, 2])[1]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and mask.shape == (16, 16) and row == 2
