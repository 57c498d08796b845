"""The cached dataset: augmentation depends on (seed, epoch, image) only, whatever the workers."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from conftest import ROOT, TINY, infer_args, paths
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


class Pids(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return os.getpid()


def test_a_worker_outlives_a_sigterm_sent_to_the_process_group_but_not_its_parents():
    loader = make_loader(Pids(), batch_size=4, shuffle=False, workers=1)
    worker = int(next(iter(loader))[0])
    subprocess.run(["kill", "-TERM", str(worker)], check=True)  # as a scheduler's signal to the whole group
    assert int(next(iter(loader))[0]) == worker  # still serving: the epoch being finished is not broken
    os.kill(worker, signal.SIGTERM)  # as multiprocessing ends a loader's workers at exit
    deadline = time.time() + 20
    while Path(f"/proc/{worker}").exists() and open(f"/proc/{worker}/stat").read().split()[2] != "Z":
        assert time.time() < deadline, "the worker ignored its parent's SIGTERM"
        time.sleep(0.1)


FAILING_WORKER = """
import sys, torch
sys.path.insert(0, {root!r})
from src.data import make_loader
class Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        raise RuntimeError("broken sample")
for batch in make_loader(Broken(), batch_size=2, shuffle=False, workers=1):
    pass
"""


def test_an_error_in_a_worker_ends_the_process_instead_of_waiting_forever(tmp_path):
    script = tmp_path / "failing_worker.py"
    script.write_text(FAILING_WORKER.format(root=str(ROOT)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "broken sample" in done.stderr


def corrupt_copy(source: Path, target: Path) -> Path:
    """The first PNG of source truncated to half its bytes, beside full copies of the others."""
    target.mkdir()
    for i, path in enumerate(sorted(source.glob("*.png"))[:3]):
        data = path.read_bytes()
        (target / path.name).write_bytes(data[:len(data) // 2] if i == 0 else data)
    return target / sorted(source.glob("*.png"))[0].name


def test_infer_ends_in_seconds_with_one_line_naming_a_corrupt_image(trained_dir, tmp_path):
    bad = corrupt_copy(trained_dir / "data" / "demo" / "images", tmp_path / "new")
    command = [sys.executable, "infer.py", "--tta", "--images", str(tmp_path / "new"), "--runs", "unet-*",
               "--folds", "0", *infer_args(trained_dir), "--preds-dir", str(tmp_path / "preds")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (f"infer: {bad}: cannot be read as an image by OpenCV (corrupt "
                                                    f"or not an image file)")
    assert "Traceback" not in done.stderr


def test_train_names_a_prepared_image_damaged_since_prepare(demo_dir, tmp_path):
    shutil.copytree(demo_dir / "data", tmp_path / "data", ignore=shutil.ignore_patterns("cache"))
    shutil.copytree(demo_dir / "folds", tmp_path / "folds")
    image = sorted((tmp_path / "data" / "demo" / "images").glob("*.png"))[0]
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(SystemExit) as stop:
        train.main([*TINY, *paths(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--fold", "0", "--epochs", "1"])
    assert str(stop.value) == (f"train: {image}: cannot be read as an image by OpenCV (corrupt or not an image file); "
                               f"prepare the dataset again (python -m src.prepare ... --overwrite)")
    assert list((tmp_path / "data" / "demo" / "cache").iterdir()) == []  # no half-built cache left behind
