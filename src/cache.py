"""The pre-resized uint8 cache: training reads memory-mapped arrays, never a full-size PNG per step."""
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.portable import volumes
from src.canonical import load_index, load_meta, read_dataset_image
from src.portable.images import read_image, resize, sides, size_text


def cache_dir(dataset_dir: Path, size) -> Path:
    """data/<name>/cache/<N or HxW>/ of a working size (images.as_size's)."""
    return Path(dataset_dir) / "cache" / size_text(size)


def open_cache(dataset_dir: Path, size, context: int = 1) -> tuple:
    """(images, masks) as read-only memory maps, rows in index.csv order; builds the cache first if absent. context
    > 1: a volume dataset's images with each slice's neighbours as channels (src/portable/volumes.py's ContextImages)."""
    folder = cache_dir(dataset_dir, size)
    if not (folder / "masks.npy").exists():
        build_cache(dataset_dir, size)
    images, masks = np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "masks.npy", mmap_mode="r")
    if context > 1:
        index = load_index(dataset_dir)
        images = volumes.ContextImages(images, volumes.neighbour_rows(index["case"], index["slice"], context))
    return images, masks


def input_channels(meta: dict, context: int) -> int:
    """The model's input channels: the dataset's, times the slices stacked (--context)."""
    return meta["channels"] * context


def context_problem(meta: dict, context: int) -> str | None:
    """Why --context cannot be used on this dataset, or None."""
    if context < 1 or context % 2 == 0:
        return f"--context {context}: choose an odd number (1: 2D slices; 3: a slice and one neighbour each side)"
    if context > 1 and "volumes" not in meta:
        return (f"--context {context}: {meta['name']} holds 2D images, not slices of volumes; drop it (prepare NIfTI "
                f"volumes to stack neighbouring slices)")
    return None


def build_cache(dataset_dir: Path, size) -> None:
    """Resize every canonical image and mask to the working size, N x N or H x W (written to a temporary folder,
    then renamed)."""
    dataset_dir = Path(dataset_dir)
    meta, index = load_meta(dataset_dir), load_index(dataset_dir)
    folder = cache_dir(dataset_dir, size)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    shape = sides(size) if meta["channels"] == 1 else (*sides(size), meta["channels"])
    images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (len(index), *shape))
    masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (len(index), *sides(size)))
    try:
        for position, row in enumerate(tqdm(index.itertuples(), total=len(index), desc=f"cache {folder.name}px", unit="img")):
            images[position] = resize(read_dataset_image(dataset_dir, row, meta["channels"]), size, is_mask=False)
            if row.split == "train":
                masks[position] = resize(read_image(dataset_dir / "masks" / f"{row.id}.png"), size, is_mask=True)
        images.flush()
        masks.flush()
        del images, masks
        try:
            tmp.rename(folder)
        except OSError:  # another process built it first
            pass
    finally:  # as in canonical.write_dataset: nothing left once renamed; a failed or lost build's gigabytes go
        shutil.rmtree(tmp, ignore_errors=True)
