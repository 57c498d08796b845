"""Dataset sources: each turns what a publisher distributes into a list of Samples plus the problems found."""
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from src import demo
from src.images import IMAGE_SUFFIXES, read_image

PANNUKE_CLASSES = ["background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"]


@dataclass
class Sample:
    id: str
    load: Callable[[], tuple]  # -> (image, mask or None); raises ValueError naming the file
    split: str = "train"
    group: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Source:
    task: str  # "binary" or "multiclass"
    classes: list
    channels: int
    samples: list
    problems: list
    official_folds: bool = False
    rotation_invariant: bool = False  # no up or down (histology): augmentation adds vertical flips and 90° turns


def _image_files(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def mask_key(path: Path) -> str:
    """The image stem a mask file belongs to: `x.png`, `x_mask.png` and `leftMask/x.png` all belong to `x`."""
    return re.sub(r"_mask$", "", path.stem, flags=re.IGNORECASE)


def _merged_mask(paths: list) -> np.ndarray:
    """Several mask files for one image (left and right lung, say) merge by maximum."""
    masks = [read_image(p) for p in paths]
    for path, mask in zip(paths, masks):
        if mask.ndim == 3:  # a mask saved as RGB(A) with equal channels is still a mask
            if not all((mask[..., c] == mask[..., 0]).all() for c in range(1, mask.shape[2])):
                raise ValueError(f"{path}: mask has {mask.shape[2]} differing channels; expected one")
        if mask.shape[:2] != masks[0].shape[:2]:
            raise ValueError(f"{path}: size {mask.shape[:2]} differs from {paths[0]} {masks[0].shape[:2]}")
    return np.maximum.reduce([m if m.ndim == 2 else m[..., 0] for m in masks])


def folder(images: Path, masks: Path, test: Path | None = None, allow_unmasked: bool = False,
           task: str = "binary", classes: list | None = None, channels: int = 0,
           group_of: Callable[[str], str] | None = None) -> Source:
    """Any directory of images plus a directory of masks matched by file stem (masks searched recursively)."""
    problems = []
    for folder_path in [images, masks] + ([test] if test else []):
        if not folder_path.is_dir():
            problems.append(f"{folder_path}: folder does not exist")
    if problems:
        return Source(task, classes or [], channels or 1, [], problems)
    image_files = _image_files(images)
    if not image_files:
        problems.append(f"{images}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    mask_files = defaultdict(list)
    for path in sorted(masks.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            mask_files[mask_key(path)].append(path)
    if not mask_files:
        problems.append(f"{masks}: no mask files in this folder")
    seen = {}
    samples = []
    for path in image_files:
        if path.stem in seen:
            problems.append(f"{path}: duplicate id '{path.stem}' (also {seen[path.stem]})")
            continue
        seen[path.stem] = path
        group = group_of(path.stem) if group_of else ""
        if path.stem in mask_files:
            paths = mask_files[path.stem]
            samples.append(Sample(path.stem, lambda p=path, m=paths: (read_image(p), _merged_mask(m)), group=group))
        elif allow_unmasked:
            samples.append(Sample(path.stem, lambda p=path: (read_image(p), None), split="test", group=group))
        else:
            problems.append(f"{path}: image has no mask in {masks} (pass --allow-unmasked to use it as a test image)")
    for key, paths in mask_files.items():
        if key not in seen:
            problems.extend(f"{p}: mask has no image '{key}.*' in {images}" for p in paths)
    if test is not None:
        for path in _image_files(test):
            if path.stem in seen:
                problems.append(f"{path}: duplicate id '{path.stem}' (also {seen[path.stem]})")
                continue
            seen[path.stem] = path
            samples.append(Sample(path.stem, lambda p=path: (read_image(p), None), split="test"))
    if not channels and image_files:
        try:
            first = read_image(image_files[0])
            channels = 1 if first.ndim == 2 else 3
        except ValueError:
            channels = 1
    classes = classes or (["background", "foreground"] if task == "binary" else [])
    return Source(task, classes, channels or 1, samples, problems)


def _find_dir(root: Path, names: list) -> Path | None:
    wanted = {n.lower() for n in names}
    found = sorted((p for p in root.rglob("*") if p.is_dir() and p.name.lower() in wanted), key=lambda p: len(p.parts))
    return found[0] if found else None


def patient_of(stem: str) -> str:
    """Montgomery/Shenzhen names end in _0/_1 (normal/abnormal): `MCUCXR_0001_0` is patient `MCUCXR_0001`."""
    return re.sub(r"_\d$", "", stem)


def chest_xray(src: Path, allow_unmasked: bool = False) -> Source:
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
                  classes=["background", "lung"], channels=1, group_of=patient_of)


def pannuke_class_map(instances: np.ndarray) -> tuple:
    """(H, W, 6) per-class instance ids (last channel background) -> class-index mask and overlap pixel count.

    Where instances of two classes overlap, the later channel wins, as in HoVer-Net's PanNuke conversion.
    """
    present = instances[..., :5] > 0
    class_map = np.zeros(instances.shape[:2], np.uint8)
    for channel in range(5):
        class_map[present[..., channel]] = channel + 1
    return class_map, int((present.sum(axis=-1) > 1).sum())


def pannuke(src: Path) -> Source:
    """The official fold files: Fold k/images/foldk/{images,types}.npy and Fold k/masks/foldk/masks.npy."""
    problems, samples = [], []
    image_files = sorted(src.rglob("images.npy")) if src.is_dir() else []
    if not image_files:
        problems.append(f"{src}: no PanNuke images.npy found (expected 'Fold 1/images/fold1/images.npy')")
    for image_file in image_files:
        match = re.search(r"fold\s*(\d+)", str(image_file.relative_to(src)), flags=re.IGNORECASE)
        fold = int(match.group(1)) if match else 0
        fold_root = image_file.parents[2] if len(image_file.relative_to(src).parts) >= 3 else image_file.parent
        mask_files = sorted(fold_root.rglob("masks.npy"))
        types_file = image_file.parent / "types.npy"
        if not mask_files or not types_file.exists():
            problems.append(f"{image_file}: no masks.npy or types.npy beside it for fold {fold}")
            continue
        images = np.load(image_file, mmap_mode="r")
        masks = np.load(mask_files[0], mmap_mode="r")
        types = np.load(types_file)
        if images.ndim != 4 or images.shape[-1] != 3:
            problems.append(f"{image_file}: shape {images.shape}, expected N x H x W x 3")
            continue
        if masks.shape[:3] != images.shape[:3] or masks.shape[-1] != 6:
            problems.append(f"{mask_files[0]}: shape {masks.shape} does not match images {images.shape} x 6 channels")
            continue
        if len(types) != len(images):
            problems.append(f"{types_file}: {len(types)} tissue types for {len(images)} images")
            continue

        def load(i=0, images=images, masks=masks):
            return np.clip(images[i], 0, 255).astype(np.uint8), pannuke_class_map(np.asarray(masks[i]))[0]

        for i in range(len(images)):
            samples.append(Sample(f"fold{fold}_{i:05d}", lambda i=i, load=load: load(i),
                                  extra={"tissue": str(types[i]), "official_fold": fold}))
    return Source("multiclass", PANNUKE_CLASSES, 3, samples, problems, official_folds=True, rotation_invariant=True)


def _labelled_only_in_train(generate, split):
    def load():
        image, mask = generate()[:2]
        return image, mask if split == "train" else None
    return load


def demo_source(count: int, seed: int, multiclass: bool, test_count: int) -> Source:
    """The embedded default: generated lungs (binary) or nuclei (multiclass); the last test_count unlabelled."""
    samples = []
    for i in range(count + test_count):
        split = "train" if i < count else "test"
        if multiclass:
            load = _labelled_only_in_train(lambda i=i: demo.histology(seed, i), split)
            samples.append(Sample(f"nuclei_{i:04d}", load, split=split, extra={"tissue": demo.tissue_of(seed, i)}))
        else:
            load = _labelled_only_in_train(lambda i=i: demo.chest_xray(seed, i), split)
            samples.append(Sample(f"cxr_{i:04d}", load, split=split, group=f"patient_{i // 2:04d}"))
    if multiclass:
        return Source("multiclass", demo.NUCLEUS_CLASSES, 3, samples, [], rotation_invariant=True)
    return Source("binary", ["background", "lung"], 1, samples, [])
