"""A directory of images plus a directory of masks matched by file stem; chest X-ray layouts built on it."""
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from src.images import IMAGE_SUFFIXES, read_image, read_mask
from src.sources.sample import Sample, Source, image_files


def mask_key(path: Path) -> str:
    """The image stem a mask file belongs to: `x.png`, `x_mask.png` and `leftMask/x.png` all belong to `x`."""
    return re.sub(r"_mask$", "", path.stem, flags=re.IGNORECASE)


def merged_mask(paths: list) -> np.ndarray:
    """Several mask files for one image (left and right lung, say) merge by maximum."""
    masks = [read_mask(p) for p in paths]
    for path, mask in zip(paths, masks):
        if mask.shape != masks[0].shape:
            raise ValueError(f"{path}: size {mask.shape} differs from {paths[0]} {masks[0].shape}")
    return np.maximum.reduce(masks)


def test_samples(folder_path: Path, seen: dict, problems: list) -> list:
    """Unlabelled images of a test folder; ids must not repeat those already seen."""
    samples = []
    for path in image_files(folder_path):
        if path.stem in seen:
            problems.append(f"{path}: duplicate id '{path.stem}' (also {seen[path.stem]})")
            continue
        seen[path.stem] = path
        samples.append(Sample(path.stem, lambda p=path: (read_image(p), None), split="test", file=path))
    return samples


def folder(images: Path, masks: Path, test: Path | None = None, allow_unmasked: bool = False,
           task: str = "binary", classes: list | None = None, channels: int = 0,
           group_of: Callable[[str], str] | None = None) -> Source:
    """Any directory of images plus a directory of masks matched by file stem (masks searched recursively)."""
    problems = [f"{p}: folder does not exist" for p in [images, masks] + ([test] if test else []) if not p.is_dir()]
    if problems:
        return Source(task, classes or [], channels, [], problems)
    files = image_files(images)
    if not files:
        problems.append(f"{images}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    mask_files = defaultdict(list)
    for path in sorted(masks.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            mask_files[mask_key(path)].append(path)
    if not mask_files:
        problems.append(f"{masks}: no mask files in this folder")
    seen, samples = {}, []
    for path in files:
        if path.stem in seen:
            problems.append(f"{path}: duplicate id '{path.stem}' (also {seen[path.stem]})")
            continue
        seen[path.stem] = path
        group = group_of(path.stem) if group_of else ""
        if path.stem in mask_files:
            paths = mask_files[path.stem]
            samples.append(Sample(path.stem, lambda p=path, m=paths: (read_image(p), merged_mask(m)), group=group,
                                  file=path))
        elif allow_unmasked:
            samples.append(Sample(path.stem, lambda p=path: (read_image(p), None), split="test", group=group,
                                  file=path))
        else:
            problems.append(f"{path}: image has no mask in {masks} (pass --allow-unmasked to use it as a test image)")
    for key, paths in mask_files.items():
        if key not in seen:
            problems.extend(f"{p}: mask has no image '{key}.*' in {images}" for p in paths)
    if test is not None:
        samples += test_samples(test, seen, problems)
    classes = classes or (["background", "foreground"] if task == "binary" else [])
    return Source(task, classes, channels, samples, problems)


def _find_dir(root: Path, names: list) -> Path | None:
    wanted = {n.lower() for n in names}
    found = sorted((p for p in root.rglob("*") if p.is_dir() and p.name.lower() in wanted), key=lambda p: len(p.parts))
    return found[0] if found else None


def patient_of(stem: str) -> str:
    """Montgomery/Shenzhen names end in _0/_1 (normal/abnormal): `MCUCXR_0001_0` is patient `MCUCXR_0001`."""
    return re.sub(r"_\d$", "", stem)


def chest_xray(src: Path, allow_unmasked: bool = False, channels: int = 0) -> Source:
    """Montgomery (CXR_png + ManualMask/{left,right}Mask), Shenzhen (*_mask.png) or Kaggle's masks-and-labels."""
    if not src.is_dir():
        return Source("binary", [], 1, [], [f"{src}: folder does not exist"])
    images = _find_dir(src, ["CXR_png", "images", "img"])
    masks = _find_dir(src, ["ManualMask", "masks", "mask"])
    test = _find_dir(src, ["test"])
    if images is None or masks is None:
        return Source("binary", [], 1, [], [
            f"{src}: no image folder (CXR_png/images) or mask folder (ManualMask/masks) found; "
            "use `python -m src.prepare folder --images DIR --masks DIR` for other layouts"])
    return folder(images, masks, test=test if test not in (images, masks) else None, allow_unmasked=allow_unmasked,
                  classes=["background", "lung"], channels=channels or 1, group_of=patient_of)
