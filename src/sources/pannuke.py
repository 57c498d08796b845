"""PanNuke's official fold files: 256 x 256 RGB patches, 6-channel instance masks, tissue types."""
import re
from pathlib import Path

import numpy as np

from src.sources.sample import Sample, Source

PANNUKE_CLASSES = ["background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"]


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
