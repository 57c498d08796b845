"""A directory of images plus a directory of masks matched by rule; chest X-ray layouts built on it.

Images: every image file under the images folder at any depth (`images/<id>.png`, SIIM-ACR's
`<study>/<series>/<uid>.dcm`), but those under a folder named `masks` (the Data Science Bowl's `<id>/images/<id>.png`
beside `<id>/masks/*.png`) or under the masks folder; the id is the file's stem, one image each. A file named like
another image plus a mask suffix is that image's mask, so images and masks may share a folder (BUSI).
Masks, searched recursively, belong to the image whose id is their stem less a usual suffix (`x.png`, `x_mask.png`,
`x_mask_1.png`, `x_segmentation.png`, `x-seg.png`, `x_gt.png`, `leftMask/x.png`), else to the nearest folder named
after an image (`masks/<id>/*.png`, `<id>/masks/*.png`: one file per instance). Several masks of one image merge.
For a multiclass task, masks in folders named after the classes (`masks/<class>/<id>.png`) give their foreground
that class; two classes on one pixel are refused. A multilabel task reads such folders, or one file of a channel per
class for each image (`.npy`, TIFF), every class a bit of the mask (src/portable/labels.py).
"""
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from src.portable.images import IMAGE_SUFFIXES, read_image
from src.portable.labels import pack
from src.masks import overlap_error, paint_class, read_mask
from src.portable.problems import InputError, Problem
from src.sources.sample import Sample, Source, duplicate_id, image_files

MASK_SUFFIX = re.compile(r"[_-](mask|masks|segmentation|seg|label|labels|gt|groundtruth|annotation)([_-]?\d+)?$",
                         flags=re.IGNORECASE)


def mask_key(path: Path) -> str:
    """The image stem a mask file's name points to: `x.png`, `x_mask.png`, `x_mask_1.png` all point to `x`."""
    return MASK_SUFFIX.sub("", path.stem)


def mask_owner(path: Path, root: Path, ids: set) -> str:
    """The image a mask belongs to: by its name, else by the nearest enclosing folder named after an image."""
    key = mask_key(path)
    if key in ids:
        return key
    return next((folder.name for folder in path.relative_to(root).parents if folder.name in ids), key)


def looked_for(path: Path, root: Path) -> str:
    """The image names an unmatched mask could have belonged to: by its own name, and by its top folder under the
    masks folder (`masks/<id>/*.png`, `<id>/masks/*.png`)."""
    folders = path.relative_to(root).parts[:-1]
    return f"looked for '{mask_key(path)}.*'" + (f" (its name) and '{folders[0]}.*' (its folder)" if folders else "")


def merged_mask(paths: list, class_of: dict | None = None, classes: list | None = None,
                multilabel: bool = False) -> np.ndarray:
    """Several mask files for one image (left and right lung, the instances of a nucleus set) merge by maximum:
    their union for binary masks. class_of: {file: class index} for files in per-class folders
    (`masks/<class>/<id>.png`), each file's foreground painted with its class; two classes on one pixel are refused
    (masks.overlap_error), never one overwriting the other."""
    masks = [read_mask(p) for p in paths]
    for path, mask in zip(paths, masks):
        if mask.shape != masks[0].shape:
            raise InputError(path, "mask size differs from the image's other masks", f"{mask.shape[1]}x"
                             f"{mask.shape[0]}, {paths[0].name} {masks[0].shape[1]}x{masks[0].shape[0]}")
    if not class_of:
        return np.maximum.reduce(masks)
    merged = np.zeros(masks[0].shape[:2], np.uint8)
    for path, mask in zip(paths, masks):
        clash = paint_class(merged, mask > 0, class_of[path], multilabel)
        if clash:
            raise overlap_error(path.stem, clash[0], classes[clash[1]], classes[class_of[path]])
    return merged


def channel_mask(paths: list, labels: int) -> np.ndarray:
    """A multilabel image's one mask file of a channel per class (NumPy, or a TIFF of pages or samples; channels
    first or last, any value above 0 the class) -> its bits (src/portable/labels.py)."""
    if len(paths) != 1:
        raise InputError(paths[0], f"{len(paths)} mask files for one image", ", ".join(p.name for p in paths),
                         "--task multilabel reads one file of a channel per class, or masks/<class>/<id>.png")
    path = paths[0]
    if path.suffix.lower() == ".npy":
        array = np.load(path)
    else:
        import tifffile
        array = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else read_mask(path)
    if array.ndim == 3 and array.shape[0] == labels and array.shape[-1] != labels:
        array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[-1] != labels:
        raise InputError(path, f"mask is not a channel per class ({labels})", "x".join(map(str, array.shape)),
                         "a multilabel mask file holds one channel per --classes label, first or last")
    return pack(np.moveaxis(array > 0, -1, 0))


def nested_images(folder: Path, masks: Path | None = None) -> list:
    """The image files under folder at any depth but those under a `masks` folder (the Data Science Bowl's
    `<id>/masks/`) or under masks (a masks folder inside the images folder)."""
    found = image_files(folder, leave_out=("masks",))
    inside = masks is not None and masks != folder and folder in masks.parents
    return [p for p in found if not (inside and masks in p.parents)]


def test_samples(folder_path: Path, seen: dict, problems: list) -> list:
    """Unlabelled images of a test folder; ids must not repeat those already seen."""
    samples = []
    for path in nested_images(folder_path):
        if path.stem in seen:
            problems.append(duplicate_id(path, seen[path.stem]))
            continue
        seen[path.stem] = path
        samples.append(Sample(path.stem, lambda p=path: (read_image(p), None), split="test", file=path))
    return samples


def folder(images: Path, masks: Path, test: Path | None = None, allow_unmasked: bool = False,
           task: str = "binary", classes: list | None = None, channels: int = 0,
           group_of: Callable[[str], str] | None = None) -> Source:
    """Any directory of images plus a directory of masks (searched recursively; it may be the images' own)."""
    problems = [f"{p}: folder does not exist" for p in [images, masks] + ([test] if test else []) if not p.is_dir()]
    if problems:
        return Source(task, classes or [], channels, [], problems)
    files = nested_images(images, masks)
    stems = {p.stem for p in files}
    files = [p for p in files if mask_key(p) == p.stem or mask_key(p) not in stems]  # BUSI: x_mask.png beside x.png
    if not files:
        problems.append(f"{images}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    ids, image_paths = {p.stem for p in files}, set(files)
    mask_files = defaultdict(list)
    suffixes = IMAGE_SUFFIXES | ({".npy"} if task == "multilabel" else set())  # multilabel: channel arrays too
    for path in sorted(masks.rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes and path not in image_paths:
            mask_files[mask_owner(path, masks, ids)].append(path)
    if not mask_files:
        problems.append(f"{masks}: no mask files in this folder")
    if problems:  # an empty folder is a wrong path: said alone, not as every file of the other folder lacking a match
        return Source(task, classes or [], channels, [], problems)
    class_of = class_folders(mask_files, masks, classes) if task in ("multiclass", "multilabel") else None
    channel_files = task == "multilabel" and class_of is None  # one file of a channel per class for each image
    seen, samples = {}, []
    for path in files:
        if path.stem in seen:
            problems.append(duplicate_id(path, seen[path.stem]))
            continue
        seen[path.stem] = path
        group = group_of(path.stem) if group_of else ""
        if path.stem in mask_files:
            paths = mask_files[path.stem]
            samples.append(Sample(path.stem, lambda p=path, m=paths: (read_image(p), channel_mask(
                m, len(classes) - 1) if channel_files else merged_mask(m, class_of, classes, task == "multilabel")),
                group=group, file=path, mask_files=tuple(paths)))
        elif allow_unmasked:
            samples.append(Sample(path.stem, lambda p=path: (read_image(p), None), split="test", group=group,
                                  file=path))
        else:
            problems.append(Problem(str(path), f"image has no mask in {masks}",
                                    fix="pass --allow-unmasked to use such images as test images"))
    for key, paths in mask_files.items():
        if key not in seen:
            problems.extend(Problem(str(p), f"mask has no image in {images}", looked_for(p, masks),
                                    "name masks <image stem>[_mask].png, or put them in a folder named after the "
                                    "image") for p in paths)
    if test is not None:
        samples += test_samples(test, seen, problems)
    classes = classes or (["background", "foreground"] if task == "binary" else [])
    return Source(task, classes, channels, samples, problems)


def class_folders(mask_files: dict, root: Path, classes: list | None) -> dict | None:
    """{mask file: class index} where every mask file lies in a folder named after one of --classes
    (`masks/<class>/<id>.png`, one binary file per class, as many public sets ship them); None otherwise,
    the files then holding class indices themselves."""
    names = {name: index for index, name in enumerate(classes or []) if index > 0}
    found = {p: names.get(p.relative_to(root).parts[0]) for paths in mask_files.values() for p in paths}
    if not names or not found or any(index is None or len(p.relative_to(root).parts) < 2 for p, index in found.items()):
        return None
    return found


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
