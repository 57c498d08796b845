"""The one loop that takes images through models, for infer.py and an exported package alike (as nnU-Net's predictor
runs trained folders and exported models): batches of images in; out, each image's uint8 maps at each model's size,
with the image's original size. infer.py writes what it yields, a file per image and model; a package averages the
maps, brings them to the original size and post-processes them (maps.final_mask). Each model's TTA, level and
sliding window are inside its predict (torch_model.torch_predictor, onnx_model.OnnxModel).
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from .images import HOST_THREADS, IMAGE_SUFFIXES, read_as
from .maps import model_input


@dataclass
class Model:
    name: str  # run and fold
    size: int | tuple  # the working size the model reads: N (N x N) or (H, W) (images.as_size)
    weight: float  # its run's blend weight
    predict: Callable  # uint8 N x C x H x W images -> uint8 N x C' x H x W probability maps (* 255)


@dataclass
class Batch:
    keys: list  # what the caller calls each image (an id, a path)
    sizes: list  # each image's original (height, width)
    inputs: dict  # {size: uint8 N x C x H x W}: the images at each working size a model reads


def predict(models: list, batches, desc: str) -> Iterator[tuple]:
    """(key, original (H, W), [each model's uint8 C' x H x W map at its size]) of every image, in order; memory holds
    one batch."""
    for batch in tqdm(batches, desc=desc, unit="batch"):
        maps = [model.predict(batch.inputs[model.size]) for model in models]
        for k, (key, size) in enumerate(zip(batch.keys, batch.sizes)):
            yield key, size, [m[k] for m in maps]


def file_batches(paths: list, channels: int, sizes, batch_size: int) -> Iterator[Batch]:
    """Batches of image files, each read by the dataset's rules (images.read_as) and resized to every working size a
    model reads, on HOST_THREADS threads; the next batch is read while the models predict this one. Keys: the file
    names without their suffix, the images' ids."""
    sizes = list(dict.fromkeys(sizes))

    def load(path):
        original = read_as(path, channels)
        return original.shape[:2], [model_input(original, size) for size in sizes]

    with ThreadPoolExecutor(HOST_THREADS) as pool:
        reading = [pool.submit(load, p) for p in paths[:batch_size]]
        for start in range(0, len(paths), batch_size):
            loaded = [r.result() for r in reading]
            reading = [pool.submit(load, p) for p in paths[start + batch_size:start + 2 * batch_size]]
            yield Batch([p.stem for p in paths[start:start + batch_size]], [size for size, _ in loaded],
                        {size: np.stack([inputs[k] for _, inputs in loaded]) for k, size in enumerate(sizes)})


def image_files(folder: Path) -> list:
    """The image files under a folder at any depth, as downloaded (SIIM-ACR's <study>/<series>/<uid>.dcm; hidden
    folders left out), ordered by id: the file name without its suffix, as the rows of submission.csv. A ValueError
    naming --images for a folder that is none, holds none, or two images of one id."""
    if not folder.is_dir():
        raise ValueError(f"--images {folder}: no such folder")
    paths = sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1])),
                   key=lambda p: (p.stem, str(p)))
    if not paths:
        raise ValueError(f"--images {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    names = {}
    for path in paths:
        names.setdefault(path.stem, []).append(str(path.relative_to(folder)))
    twins = next((found for found in names.values() if len(found) > 1), None)
    if twins:  # said before any prediction: one would silently replace the other's
        raise ValueError(f"--images {folder} holds {' and '.join(twins)}, which would share one id; rename one")
    return paths
