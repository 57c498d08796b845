"""The canonical dataset layout every stage reads.

data/<name>/
  meta.json            task, class names, channels, source, cache sizes
  index.csv            one row per image: id, file, split (train/test), height, width, group, foreground,
                       dominant_class, and the source's or metadata CSV's own columns; DICOM images with a pixel
                       spacing add spacing_row_mm, spacing_col_mm (mm between rows, between columns; read with
                       spacing_of), empty for the other images
  images/<id>.<ext>    original size: the source file as it is where it is 8-bit PNG/JPEG/TIFF/BMP (read_image then
                       to_channels give the dataset's form), else (DICOM, 16-bit, arrays) the converted PNG
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

from src.dicom import pixel_spacing
from src.images import bit_depth, exif_orientation, looks_grey, mode, read_image, resize, to_channels, write_png
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


def image_file(dataset_dir: Path, row) -> Path:
    """Where a canonical image lives (datasets prepared before the `file` column hold images/<id>.png)."""
    return Path(dataset_dir) / (getattr(row, "file", "") or f"images/{row.id}.png")


def spacing_of(row) -> tuple | None:
    """(row_mm, col_mm) of an index.csv row, or None where prepare found no pixel spacing."""
    try:
        spacing = (float(getattr(row, "spacing_row_mm", "")), float(getattr(row, "spacing_col_mm", "")))
    except (TypeError, ValueError):
        return None
    return spacing if np.isfinite(spacing).all() and min(spacing) > 0 else None


def read_dataset_image(dataset_dir: Path, row, channels: int) -> np.ndarray:
    """A canonical image in the dataset's form: the same rules as prepare (src/images.py)."""
    return to_channels(read_image(image_file(dataset_dir, row)), channels, str(image_file(dataset_dir, row)))


def majority_channels(samples: list, workers: int) -> tuple:
    """1 if most images are grey (or grey saved as colour), else 3; and a sentence saying why."""
    def grey(sample):
        try:
            return looks_grey(read_image(sample.file) if sample.file else sample.load()[0])
        except ValueError:
            return True  # unreadable: reported once, by the conversion
    with ThreadPoolExecutor(workers) as pool:
        votes = list(tqdm(pool.map(grey, samples), total=len(samples), desc="colour census", unit="img"))
    channels = 1 if sum(votes) * 2 >= len(votes) else 3
    return channels, (f"channels: {channels} ({sum(votes)} of {len(votes)} images are grey or grey saved as colour; "
                      f"--channels {3 if channels == 1 else 1} to choose otherwise)")


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
    workers = workers or min(8, os.cpu_count() or 1)
    if not source.channels:
        source.channels, why = majority_channels(source.samples, workers)
        print(why)
    try:
        rows, conversions = _convert_all(source, tmp, cache_size, problems, workers)
        if problems:
            raise PrepareError(problems)
        kept = conversions.pop("kept as is", 0)
        print("converted: " + (", ".join(f"{n} {kind}" for kind, n in conversions.most_common()) or "nothing") +
              f"; {kept} of {len(rows)} image files kept as they are, the others written as PNG")
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


def _convert_all(source: Source, tmp: Path, size: int, problems: list, workers: int) -> tuple:
    """Rows of index.csv, and a count of each conversion made (colour mode, bit depth, 'kept as is')."""
    for sub in ("images", "masks", f"cache/{size}"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    n, shape = len(source.samples), (size, size) if source.channels == 1 else (size, size, source.channels)
    cache_images = np.lib.format.open_memmap(tmp / f"cache/{size}/images.npy", "w+", np.uint8, (n, *shape))
    cache_masks = np.lib.format.open_memmap(tmp / f"cache/{size}/masks.npy", "w+", np.uint8, (n, size, size))
    n_classes = len(source.classes)
    target = "grey" if source.channels == 1 else "RGB"

    def convert(position_sample):
        position, sample = position_sample
        try:
            image, mask = sample.load()
            done = [f"{mode(image)} -> {target}"] if mode(image) != target else []
            depth = bit_depth(sample.file) if sample.file else "array"
            if depth not in ("8-bit", "array"):
                done.append(f"{depth} -> 8-bit")
            if sample.file and exif_orientation(sample.file) != 1:  # read_image turned it upright
                done.append("rotated upright by EXIF orientation")
            image = to_channels(image, source.channels, sample.id)
            if depth == "8-bit":  # the file itself: smaller than a re-encoded PNG, and nothing is lost
                file = f"images/{sample.id}{sample.file.suffix.lower()}"
                shutil.copyfile(sample.file, tmp / file)
                done.append("kept as is")
            else:
                file = f"images/{sample.id}.png"
                write_png(tmp / file, image)
            row = {"id": sample.id, "file": file, "split": sample.split, "height": image.shape[0],
                   "width": image.shape[1], "group": sample.group, **sample.extra}
            spacing = pixel_spacing(sample.file) if depth == "DICOM" else None
            if spacing:
                row["spacing_row_mm"], row["spacing_col_mm"] = spacing
            cache_images[position] = resize(image, size, is_mask=False)
            if mask is None:
                if sample.split == "train":
                    raise ValueError(f"{sample.id}: training image without a mask")
                return {**row, "foreground": np.nan, "dominant_class": -1}, done, None
            mask = _check_mask(mask, image, source.task, n_classes, sample.id)
            write_png(tmp / "masks" / f"{sample.id}.png", mask)
            cache_masks[position] = resize(mask, size, is_mask=True)
            counts = np.bincount(mask.ravel(), minlength=n_classes)
            dominant = int(counts[1:].argmax() + 1) if counts[1:].any() else 0
            return ({**row, "foreground": round(float(1 - counts[0] / mask.size), 6), "dominant_class": dominant},
                    done, None)
        except (ValueError, OSError) as error:
            return None, [], str(error)

    rows, conversions = [], Counter()
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(convert, enumerate(source.samples))
        for row, done, problem in tqdm(results, total=n, desc="prepare", unit="img"):
            if problem:
                problems.append(problem)
            else:
                rows.append(row)
                conversions.update(done)
    cache_images.flush()
    cache_masks.flush()
    return rows, conversions
