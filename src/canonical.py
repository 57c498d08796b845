"""The canonical dataset layout every stage reads.

data/<name>/
  meta.json            task, class names, channels, source, cache sizes
  index.csv            one row per image: id, split (train/test), height, width, group, foreground, dominant_class, ...
  images/<id>.png      grey or RGB, original size
  masks/<id>.png       one class index per pixel (0 background), train rows only
  cache/<size>/images.npy, masks.npy   uint8 arrays resized to size x size, rows in index.csv order
"""
import json
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from src.images import resize, to_channels, write_png
from src.sources import Source


class PrepareError(Exception):
    """Everything wrong with an input, one problem per line."""

    def __init__(self, problems: list):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the input, nothing was written:\n  " + "\n  ".join(problems))


def load_meta(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: prepare the dataset first (python -m src.prepare ...)")
    return json.loads(path.read_text())


def load_index(dataset_dir: Path) -> pd.DataFrame:
    path = Path(dataset_dir) / "index.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: prepare the dataset first (python -m src.prepare ...)")
    return pd.read_csv(path, dtype={"id": str, "group": str}, keep_default_na=False)


def _check_mask(mask: np.ndarray, image: np.ndarray, task: str, n_classes: int, name: str) -> np.ndarray:
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"{name}: mask size {mask.shape[1]}x{mask.shape[0]} does not match its image "
                         f"{image.shape[1]}x{image.shape[0]}")
    values = np.unique(mask)
    if task == "binary":
        if not (set(values) <= {0, 1} or set(values) <= {0, 255}):
            raise ValueError(f"{name}: mask values {values[:8].tolist()} are not binary (0/1 or 0/255)")
        return (mask > 0).astype(np.uint8)
    if values.max() >= n_classes:
        raise ValueError(f"{name}: mask value {int(values.max())} is not a class id (0..{n_classes - 1})")
    return mask.astype(np.uint8)


def write_dataset(source: Source, out_dir: Path, cache_size: int, source_name: str,
                  overwrite: bool = False, workers: int | None = None) -> pd.DataFrame:
    """Check and convert every sample into a temporary folder, then rename it into place; all problems at once."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise PrepareError([f"{out_dir}: already exists (pass --overwrite to replace it)"])
    problems = list(source.problems)
    problems += [f"duplicate id '{i}'" for i, n in Counter(s.id for s in source.samples).items() if n > 1]
    if not source.samples and not problems:
        problems.append("the source holds no images")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        rows = _convert_all(source, tmp, cache_size, problems, workers) if source.samples else []
        if problems:
            raise PrepareError(problems)
        index = pd.DataFrame(rows)
        index.to_csv(tmp / "index.csv", index=False)
        meta = {"name": out_dir.name, "task": source.task, "classes": source.classes, "channels": source.channels,
                "source": source_name, "official_folds": source.official_folds,
                "rotation_invariant": source.rotation_invariant}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        return index
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_all(source: Source, tmp: Path, size: int, problems: list, workers: int | None) -> list:
    for sub in ("images", "masks", f"cache/{size}"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    n, shape = len(source.samples), (size, size) if source.channels == 1 else (size, size, source.channels)
    cache_images = np.lib.format.open_memmap(tmp / f"cache/{size}/images.npy", "w+", np.uint8, (n, *shape))
    cache_masks = np.lib.format.open_memmap(tmp / f"cache/{size}/masks.npy", "w+", np.uint8, (n, size, size))
    n_classes = len(source.classes)

    def convert(position_sample):
        position, sample = position_sample
        try:
            image, mask = sample.load()
            image = to_channels(image, source.channels, sample.id)
            row = {"id": sample.id, "split": sample.split, "height": image.shape[0], "width": image.shape[1],
                   "group": sample.group, **sample.extra}
            write_png(tmp / "images" / f"{sample.id}.png", image)
            cache_images[position] = resize(image, size, is_mask=False)
            if mask is None:
                if sample.split == "train":
                    raise ValueError(f"{sample.id}: training image without a mask")
                return {**row, "foreground": np.nan, "dominant_class": -1}, None
            mask = _check_mask(mask, image, source.task, n_classes, sample.id)
            write_png(tmp / "masks" / f"{sample.id}.png", mask)
            cache_masks[position] = resize(mask, size, is_mask=True)
            counts = np.bincount(mask.ravel(), minlength=n_classes)
            dominant = int(counts[1:].argmax() + 1) if counts[1:].any() else 0
            return {**row, "foreground": round(float(1 - counts[0] / mask.size), 6), "dominant_class": dominant}, None
        except (ValueError, OSError) as error:
            return None, str(error)

    rows = []
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(convert, enumerate(source.samples))
        for row, problem in tqdm(results, total=n, desc="prepare", unit="img"):
            if problem:
                problems.append(problem)
            else:
                rows.append(row)
    cache_images.flush()
    cache_masks.flush()
    return rows
