"""Torch datasets over the resized cache. Samples stay uint8; models.normalize runs on the device."""
import os
import signal
import zlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class CachedSegmentation(Dataset):
    """Rows of the memory-mapped cache: (image uint8 CxHxW, mask uint8 HxW, row position).

    Augmentation is seeded by (seed, epoch, row), so a sample looks the same whichever worker or process draws it,
    and a resumed run sees exactly the augmentations an uninterrupted one would.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, rows, augmentation=None, seed: int = 0):
        self.images, self.masks, self.rows = images, masks, np.asarray(rows)
        self.augmentation, self.seed = augmentation, seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by persistent worker processes

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(value)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        image, mask = np.array(self.images[row]), np.array(self.masks[row])  # writable copies of the memory map
        if self.augmentation is not None:
            self.augmentation.set_random_seed(zlib.crc32(f"{self.seed}/{self.epoch}/{row}".encode()))
            out = self.augmentation(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return channels_first(image), torch.from_numpy(np.ascontiguousarray(mask)), row


def channels_first(image: np.ndarray) -> torch.Tensor:
    """uint8 H x W (grey) or H x W x C -> C x H x W tensor."""
    image = torch.from_numpy(np.ascontiguousarray(image))
    return image[None] if image.ndim == 2 else image.permute(2, 0, 1)


def default_workers(requested: int, processes: int = 1) -> int:
    """-1: the CPUs shared out among the processes, at most 8 each (uint8 cache reads are cheap)."""
    if requested >= 0:
        return requested
    return max(0, min(8, (os.cpu_count() or 1) // max(1, processes) - 1))


def leave_signals_to_the_main_process(_worker: int) -> None:
    """Ctrl-C, a scheduler's SIGTERM and a closed terminal's SIGHUP reach every process of the group: a worker that
    died of them would crash the epoch that the main process is finishing before it saves (src.checkpoint.StopRequest).
    Workers end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0) -> DataLoader:
    """Persistent, pinned-memory workers: no process start per epoch, asynchronous copies to the GPU."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                      worker_init_fn=leave_signals_to_the_main_process,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)
