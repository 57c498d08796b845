"""Kaggle run-length encoding: column-major pixel order, 1-indexed 'start length' pairs, '' for an empty mask."""
import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], (np.asarray(mask) > 0).T.ravel().astype(np.int8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def rle_decode(rle: str, shape: tuple) -> np.ndarray:
    """Inverse of rle_encode for an (H, W) mask; returns uint8 0/1."""
    height, width = shape
    flat = np.zeros(height * width, np.uint8)
    numbers = np.array(rle.split(), dtype=np.int64)
    for start, length in zip(numbers[0::2] - 1, numbers[1::2]):
        flat[start:start + length] = 1
    return flat.reshape(width, height).T
