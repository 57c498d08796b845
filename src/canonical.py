"""The canonical dataset layout every stage reads.

data/<name>/
  meta.json            task, class names, channels, source, the submission format (src/portable/submission.py);
                       regions: {region: its label values} where a multilabel set came from label maps
  index.csv            one row per image: id, file, split (train/test), height, width, group, foreground,
                       dominant_class (multilabel: labels, the bits of the classes present), and the source's or
                       metadata CSV's own columns; DICOM images with a pixel
                       spacing add spacing_row_mm, spacing_col_mm (mm between rows, between columns; read with
                       spacing_of), empty for the other images
  images/<id>.<ext>    original size: the source file as it is where it is 8-bit PNG/JPEG/TIFF/BMP (read_image then
                       to_channels give the dataset's form), else (DICOM, 16-bit, arrays) the converted PNG, or
                       .npy (H x W x C uint8) where C is neither 1 nor 3: a volume's slice of several modalities
  masks/<id>.png       one class index per pixel (0 background), train rows only; multilabel: one bit per class
                       (class c is bit c - 1, src/portable/labels.py), so that a pixel holds every class it has
  cache/<size>/images.npy, masks.npy   uint8 arrays resized to the working size (N, or HxW), rows in index.csv order
  volumes.json         volumes only: each case's shape, spacing, split and NIfTI header; its slices are the images
                       (index.csv's case and slice columns; the rules in meta.json's volumes: src/portable/volumes.py)
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

from src.portable.dicom import pixel_spacing
from src.portable.images import (bit_depth, exif_orientation, looks_grey, mode, read_as, read_image, resize, sides,
                                 size_text, to_channels, write_npy, write_png)
from src.portable.labels import MAX_LABELS, class_pixels
from src.masks import JPEG_SUFFIXES, binarised_sentences, class_indices
from src.portable.problems import InputError, Problem
from src.portable.submission import default_format
from src.problems import as_problem, report
from src.sources import Sample, Source


class PrepareError(Exception):
    """Everything wrong with an input: Problems or sentences, grouped by kind when told (src/problems.py)."""

    def __init__(self, problems: list):
        self.problems = problems
        super().__init__(report(problems))


def load_meta(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: prepare the dataset first (python -m src.prepare ...)")
    meta = json.loads(path.read_text())
    if "submission" not in meta:
        where = "" if Path(dataset_dir).parent == Path("data") else f" --data-dir {Path(dataset_dir).parent}"
        raise ValueError(f"{path} was written by an older prepare, without the submission format the masks are "
                         f"written in: prepare the dataset again as before (python -m src.prepare SOURCE ... --name "
                         f"{Path(dataset_dir).name}{where}); the fold file and the runs stay valid")
    return meta


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
    """A canonical image in the dataset's form: the same rules as prepare (src/portable/images.py)."""
    return read_as(image_file(dataset_dir, row), channels)


def majority_channels(samples: list, workers: int) -> tuple:
    """1 if most readable images are grey (or grey saved as colour), else 3; and a sentence saying why."""
    def grey(sample):
        try:
            return looks_grey(read_image(sample.file) if sample.file else sample.load()[0])
        except ValueError:
            return None  # unreadable: reported once, by the conversion
    with ThreadPoolExecutor(workers) as pool:
        votes = list(tqdm(pool.map(grey, samples), total=len(samples), desc="colour census", unit="img"))
    readable = [vote for vote in votes if vote is not None]
    channels = 1 if sum(readable) * 2 >= len(readable) else 3
    unreadable, colour = len(votes) - len(readable), len(readable) - sum(readable)
    # Grey input drops the minority's colour, which can matter (the DSB nuclei: docs/results.md), so say so.
    choice = (f"--channels 3 keeps the colour of the other {colour}" if channels == 1 and colour else
              f"--channels {3 if channels == 1 else 1} to choose otherwise")
    return channels, (f"channels: {channels} ({sum(readable)} of {len(readable)} readable images are grey or grey "
                      f"saved as colour{f'; {unreadable} unreadable' if unreadable else ''}; {choice})")


def _mask_where(sample: Sample) -> str:
    """What a mask problem names: the mask file, or the image id when several files (or none) made the mask."""
    return str(sample.mask_files[0]) if len(sample.mask_files) == 1 else sample.id


def _as_problem(error: ValueError | OSError, sample: Sample) -> Problem:
    """Errors that name their file as 'file: sentence' (src/portable/dicom.py...) are grouped by the sentence."""
    if not isinstance(error, InputError):
        for where in (sample.file, sample.id):
            if where and str(error).startswith(f"{where}: "):
                return Problem(str(where), str(error)[len(f"{where}: "):])
    return as_problem(error)


def write_dataset(source: Source, out_dir: Path, cache_size, source_name: str,
                  overwrite: bool = False, workers: int | None = None) -> pd.DataFrame:
    """Check and convert every sample into a temporary folder, then rename it into place; all problems at once."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise PrepareError([f"{out_dir}: already exists (pass --overwrite to replace it)"])
    problems = list(source.problems)
    problems += [Problem(i, "duplicate id", fix="rename one of its files")
                 for i, n in Counter(s.id for s in source.samples).items() if n > 1]
    if not source.samples:  # said before a colour census of nothing
        raise PrepareError(problems or ["the source holds no images"])
    if source.task == "multilabel" and len(source.classes) - 1 > MAX_LABELS:
        raise PrepareError([f"{len(source.classes) - 1} labels: a multilabel mask holds at most {MAX_LABELS}, one bit "
                            f"each of a byte"])
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    workers = workers or min(8, os.cpu_count() or 1)
    if not source.channels:
        source.channels, why = majority_channels(source.samples, workers)
        print(why)
    try:
        rows, conversions, binarised = _convert_all(source, tmp, cache_size, problems, workers)
        if problems:
            raise PrepareError(problems)
        kept = conversions.pop("kept as is", 0)
        files = sum(1 for sample in source.samples if sample.file)
        print("converted: " + (", ".join(f"{n} {kind}" for kind, n in conversions.most_common()) or "nothing")
              + (f"; {kept} of {files} image files kept as they are" if files else "")
              + (f"; {len(rows) - kept} images written as {'PNG' if source.channels in (1, 3) else '.npy'}"
                 if len(rows) > kept else ""))
        for sentence in binarised_sentences(binarised):
            print(sentence)
        index = pd.DataFrame(rows)
        index.to_csv(tmp / "index.csv", index=False)
        meta = {"name": out_dir.name, "task": source.task, "classes": source.classes, "channels": source.channels,
                "source": source_name, "official_folds": source.official_folds,
                "rotation_invariant": source.rotation_invariant,
                "submission": source.submission or default_format(source.task),
                **({"regions": source.regions} if source.regions else {}),
                **({"regions_class_order": source.region_order} if source.region_order else {})}
        if source.volumes:  # the rules in meta.json, each case's geometry beside it
            meta["volumes"] = {k: v for k, v in source.volumes.items() if k != "cases"}
            (tmp / "volumes.json").write_text(json.dumps(source.volumes["cases"]) + "\n")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        return index
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_all(source: Source, tmp: Path, size, problems: list, workers: int) -> tuple:
    """Rows of index.csv, a count of each conversion made (colour mode, bit depth, 'kept as is'), and how the
    binarised masks were binarised."""
    cache = Path("cache") / size_text(size)
    for sub in ("images", "masks", cache):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    n, shape = len(source.samples), sides(size) if source.channels == 1 else (*sides(size), source.channels)
    cache_images = np.lib.format.open_memmap(tmp / cache / "images.npy", "w+", np.uint8, (n, *shape))
    cache_masks = np.lib.format.open_memmap(tmp / cache / "masks.npy", "w+", np.uint8, (n, *sides(size)))
    n_classes = len(source.classes)
    target = "grey" if source.channels == 1 else "RGB"

    def class_mask(mask, image, sample):
        where = _mask_where(sample)
        if mask.shape[:2] != image.shape[:2]:
            raise InputError(where, "mask size does not match its image",
                             f"mask {mask.shape[1]}x{mask.shape[0]}, image {image.shape[1]}x{image.shape[0]}",
                             "give each image the mask drawn on it, at its size (prepare does not guess how a mask of "
                             "another size lines up; resize it yourself, nearest neighbour, where it only was scaled)")
        jpeg = any(Path(f).suffix.lower() in JPEG_SUFFIXES for f in sample.mask_files)
        return class_indices(mask, source.task, source.classes, where, source.class_colors, source.mask_threshold,
                             jpeg)

    def convert(position_sample):
        position, sample = position_sample
        try:
            image, mask = sample.load()
            as_is = image.ndim == 3 and image.shape[2] == source.channels  # colour, or a volume's modalities
            done = [f"{mode(image)} -> {target}"] if mode(image) != target and not as_is else []
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
            elif source.channels in (1, 3):
                file = f"images/{sample.id}.png"
                write_png(tmp / file, image)
            else:  # channels PNG cannot hold as they are
                file = f"images/{sample.id}.npy"
                write_npy(tmp / file, image)
            row = {"id": sample.id, "file": file, "split": sample.split, "height": image.shape[0],
                   "width": image.shape[1], "group": sample.group, **sample.extra}
            spacing = pixel_spacing(sample.file) if depth == "DICOM" else None
            if spacing:
                row["spacing_row_mm"], row["spacing_col_mm"] = spacing
            cache_images[position] = resize(image, size, is_mask=False)
            if mask is None:
                if sample.split == "train":
                    raise InputError(sample.id, "training image without a mask")
                return {**row, "foreground": np.nan, "dominant_class": -1}, done, None, None
            mask, binarised = class_mask(mask, image, sample)
            write_png(tmp / "masks" / f"{sample.id}.png", mask)
            cache_masks[position] = resize(mask, size, is_mask=True)
            counts = class_pixels(mask, source.task, n_classes)
            dominant = int(counts[1:].argmax() + 1) if counts[1:].any() else 0
            extra = {"labels": int(np.bitwise_or.reduce(mask.ravel()))} if source.task == "multilabel" else {}
            return ({**row, "foreground": round(float(1 - counts[0] / mask.size), 6),
                     "dominant_class": dominant, **extra}, done, binarised, None)
        except (ValueError, OSError) as error:
            return None, [], None, _as_problem(error, sample)

    rows, conversions, binarised_masks = [], Counter(), []
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(convert, enumerate(source.samples))
        for row, done, binarised, problem in tqdm(results, total=n, desc="prepare", unit="img"):
            if problem:
                problems.append(problem)
            else:
                rows.append(row)
                conversions.update(done)
                binarised_masks += [binarised] if binarised else []
    cache_images.flush()
    cache_masks.flush()
    return rows, conversions, binarised_masks
