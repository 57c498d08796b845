"""What every source hands to src/canonical.py: a list of Samples plus the problems found."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from src.masks import regions_mask
from src.portable.images import IMAGE_SUFFIXES
from src.portable.problems import Problem


@dataclass
class Sample:
    id: str
    load: Callable[[], tuple]  # -> (image, mask or None); raises ValueError naming the file
    split: str = "train"
    group: str = ""
    extra: dict = field(default_factory=dict)
    file: Path | None = None  # the original image file, kept as it is when it needs no conversion
    mask_files: tuple = ()  # the mask file(s) merged into its mask, named by mask problems


@dataclass
class Source:
    task: str  # "binary", "multiclass" or "multilabel" (one bit per class: src/portable/labels.py)
    classes: list
    channels: int  # 1 or 3; 0: the majority of the images decides (src/canonical.py)
    samples: list
    problems: list
    official_folds: bool = False
    rotation_invariant: bool = False  # no up or down (histology): augmentation adds vertical flips and 90° turns
    class_colors: list | None = None  # colour-coded masks: one RGB colour per class (src/masks.py)
    mask_threshold: int | None = None  # binarise every non-binary mask at this value (src/masks.py)
    submission: dict | None = None  # how the labels came (src/portable/submission.py); None: its default format
    volumes: dict | None = None  # slices of NIfTI volumes: the rules and each case's geometry (src/sources/volumes.py)
    regions: dict | None = None  # multilabel from label maps: {region: its label values} (masks.regions_mask)
    region_order: list | None = None  # nnU-Net v2's regions_class_order: each region's value in a label map


def image_files(folder: Path, leave_out: tuple = ()) -> list:
    """The image files under folder at any depth, as data sets are downloaded (SIIM-ACR's
    <study>/<series>/<uid>.dcm), by path; hidden folders' and those under a folder named in leave_out left out."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") or part in leave_out for part in p.relative_to(folder).parts[:-1]))


def unsafe_id(image_id: str) -> bool:
    """Ids become file names under data/<name>/: no path separators, no '..', nothing empty."""
    return not image_id or "/" in image_id or "\\" in image_id or ".." in image_id or image_id.startswith(".")


def duplicate_id(path: Path, other: Path) -> Problem:
    return Problem(str(path), "duplicate id: another image has the same stem", str(other), "rename one of them")


def as_regions(source: Source, regions: dict) -> Source:
    """A source of label maps as nnU-Net's regions ({name: label values}): each mask one bit per region
    (masks.regions_mask), a multilabel dataset whose classes are the regions."""
    def load(sample_load):
        image, mask = sample_load()
        return image, None if mask is None else regions_mask(mask, list(regions.values()))
    for sample in source.samples:
        sample.load = lambda original=sample.load: load(original)
    source.task, source.classes, source.regions = "multilabel", ["background", *regions], regions
    return source
