"""Kaggle run-length encoding: 'start length' pairs, 1-indexed, '' (or -1) for an empty mask.

Pixel order: column-major (top to bottom, then left to right; most Kaggle segmentation competitions) or row-major
(left to right, then top to bottom; e.g. HuBMAP, Sartorius). SIIM-ACR's relative form counts each 0-indexed start
from the end of the previous run.
"""
import numpy as np


def rle_encode(mask: np.ndarray, order: str = "column", relative: bool = False) -> str:
    """'start length' pairs of a mask's nonzero pixels; '' for an empty mask. relative: each start 0-indexed and
    counted from the end of the previous run (the inverse of rle_runs's)."""
    mask = np.asarray(mask) > 0
    pixels = np.concatenate([[0], (mask.T if order == "column" else mask).ravel().astype(np.int8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    if relative and len(runs):
        ends = runs[::2] + runs[1::2] - 1  # 0-indexed end (exclusive) of each run
        runs[::2] -= 1 + np.concatenate([[0], ends[:-1]])
    return " ".join(map(str, runs))


def rle_runs(rle: str, pixels: int, relative: bool = False) -> np.ndarray:
    """(start, length) rows, 0-indexed absolute starts; ValueError saying what is wrong with the string."""
    text = str(rle).strip()
    if text in ("", "-1", "nan"):
        return np.zeros((0, 2), np.int64)
    try:
        numbers = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise ValueError(f"'{text[:40]}' is not a list of whole numbers") from None
    if len(numbers) % 2:
        raise ValueError(f"odd number of values ({len(numbers)}): expected start/length pairs")
    starts, lengths = numbers[0::2], numbers[1::2]
    if relative:
        starts = np.cumsum(starts) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    else:
        starts = starts - 1
    if (lengths < 0).any() or (starts < 0).any():
        raise ValueError("negative start or length")
    ends = starts + lengths
    if ends.max() > pixels:
        i = int(ends.argmax())
        raise ValueError(f"run {i + 1} ends at pixel {int(ends[i])}, past the image's {pixels} pixels")
    return np.stack([starts, lengths], axis=1)


def rle_decode(rle: str, shape: tuple, order: str = "column", relative: bool = False) -> np.ndarray:
    """Inverse of rle_encode for an (H, W) mask; returns uint8 0/1. Raises ValueError for a malformed string."""
    height, width = shape
    flat = np.zeros(height * width, np.uint8)
    for start, length in rle_runs(rle, height * width, relative):
        flat[start:start + length] = 1
    return flat.reshape(width, height).T if order == "column" else flat.reshape(height, width)
