"""Torch datasets over the resized cache. Samples stay uint8; models.normalize runs on the device."""
import os
import signal
import threading
import zlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset



class CachedSegmentation(Dataset):
    """Rows of the memory-mapped cache: (image uint8 CxHxW, mask uint8 HxW, row position).

    Augmentation is seeded by (seed, epoch, row), so a sample looks the same whichever worker or process draws it,
    and a resumed run sees exactly the augmentations an uninterrupted one would. draws: samples of each row an epoch
    (--patches-per-image); the first keeps that seed, the k-th further one adds k to it.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, rows, augmentation=None, seed: int = 0, draws: int = 1,
                 foreground: tuple | None = None):
        """foreground: (the rows of slices that show some foreground, the probability that an empty slice drawn is
        swapped for one of them, seeded as the augmentation is): foreground_draws()."""
        self.images, self.masks, self.rows = images, masks, np.asarray(rows)
        self.augmentation, self.seed, self.draws = augmentation, seed, draws
        self.foreground_rows, self.swap = foreground or (np.empty(0, int), 0.0)
        self.shows_foreground = set(self.foreground_rows.tolist())
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by persistent worker processes

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(value)

    def __len__(self):
        return len(self.rows) * self.draws

    def __getitem__(self, i):
        draw, row = divmod(i, len(self.rows))
        row = int(self.rows[row])
        if self.swap and row not in self.shows_foreground:
            rng = np.random.default_rng(zlib.crc32(f"{self.seed}/{self.epoch}/{row}/{draw}/foreground".encode()))
            if rng.random() < self.swap:
                row = int(rng.choice(self.foreground_rows))
        image, mask = np.array(self.images[row]), np.array(self.masks[row])  # writable copies of the memory map
        if self.augmentation is not None:
            key = f"{self.seed}/{self.epoch}/{row}" + (f"/{draw}" if draw else "")
            self.augmentation.set_random_seed(zlib.crc32(key.encode()))
            out = self.augmentation(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return channels_first(image), torch.from_numpy(np.ascontiguousarray(mask)), row


def foreground_draws(masks: np.ndarray, rows, share: float) -> tuple:
    """A volume dataset's slices drawn as nnU-Net draws 2D patches (oversample_foreground_percent): at least `share`
    of the slices an epoch show foreground. (foreground rows, the swap probability that lifts their share f to `share`:
    (share - f) / (1 - f), 0 where f is already there), and the rule in words."""
    rows = np.asarray(rows)
    shows = np.concatenate([masks[rows[k:k + 1024]].reshape(len(rows[k:k + 1024]), -1).any(axis=1)
                            for k in range(0, len(rows), 1024)] or [np.zeros(0, bool)])  # a CT cache is large
    found = shows.mean() if len(rows) else 0.0
    swap = (share - found) / (1 - found) if 0 < found < share else 0.0
    rule = (f"slices: {found:.0%} of the training slices show foreground, "
            + (f"so {swap:.0%} of the empty ones drawn are swapped for a foreground one: {share:.0%} show it, as "
               f"--foreground-patches asks (nnU-Net's share for 2D patches)" if swap else
               "none to draw more often: drawn as they are" if not found else
               f"at least the {share:.0%} --foreground-patches asks (nnU-Net's share for 2D patches): drawn as they are"))
    return (rows[shows], swap), rule


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
    Workers end with it.

    SIGTERM from the main process itself still ends a worker (torch's own rule): at exit, after an error, Python's
    multiprocessing ends the workers of a loader still referenced by the traceback that way, and waits for them.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: torch's handler stays (a group's SIGTERM ends workers too)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before any other thread starts: all inherit it
    threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), daemon=True).start()


def _end_on_sigterm_from(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0) -> DataLoader:
    """Persistent, pinned-memory workers: no process start per epoch, asynchronous copies to the GPU."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                      worker_init_fn=leave_signals_to_the_main_process,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)
