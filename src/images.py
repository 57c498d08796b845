"""Reading and writing image and mask files (cv2: fast PNG codec that releases the GIL, so threads scale)."""
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def read_image(path: Path) -> np.ndarray:
    """HxW (grey) or HxWxC (RGB) uint8; 16-bit files are scaled down. Raises ValueError if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: cannot be read as an image (corrupt or not an image file)")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported pixel type {image.dtype}; expected 8- or 16-bit")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    # Level 1: several times faster than the default for a few percent more disk.
    if not cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"{path}: could not be written")


def to_channels(image: np.ndarray, channels: int, name: str) -> np.ndarray:
    """Return image as HxW (channels=1) or HxWx3; raise ValueError naming the file if impossible."""
    have = 1 if image.ndim == 2 else image.shape[2]
    if have == channels:
        return image if channels == 3 or image.ndim == 2 else image[..., 0]
    if channels == 1 and have == 3 and (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all():
        return image[..., 0]  # a grey image saved as RGB
    raise ValueError(f"{name}: has {have} channels, the dataset expects {channels}")


def resize(array: np.ndarray, size: int, is_mask: bool) -> np.ndarray:
    interpolation = cv2.INTER_NEAREST if is_mask else cv2.INTER_AREA
    return cv2.resize(array, (size, size), interpolation=interpolation)
