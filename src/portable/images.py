"""Reading and writing image files, and the rules that bring any image to the dataset's form.

cv2 decodes PNG/JPEG/TIFF/BMP (fast, releases the GIL, so threads scale), tifffile the TIFFs cv2 cannot (odd tags,
planar samples); pydicom decodes DICOM (src/portable/dicom.py). Masks have their own rules (src/masks.py).
Rules, the same in prepare and infer: 8-bit files are used as they are; 16-bit files (12-bit X-rays included) and
DICOM are windowed to 8 bits between their own 0.5th and 99.5th percentiles (a 0-4095 X-ray keeps its contrast,
and a few hot or dead pixels do not set the scale); the channel count is then converted (to_channels).
"""
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .dicom import read_dicom
from .files import atomic_path
from .problems import InputError

# Threads for per-image work on the host (decoding, resizing, labelling, scoring): cv2 and numpy release the GIL, and
# threads share the maps without pickling them.
HOST_THREADS = min(32, os.cpu_count() or 1)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}
TIFF_SUFFIXES = {".tif", ".tiff"}
WINDOW_PERCENTILES = (0.5, 99.5)
EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA"}
# OpenCV's own WARN/ERROR lines (a TIFF it cannot read, a missing file) would repeat, without the fix, what the
# project's report says about the same file.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def read_image(path: Path) -> np.ndarray:
    """uint8 H x W or H x W x C (RGB or RGBA order), 16-bit and DICOM windowed to 8 bits. Raises ValueError."""
    path = Path(path)
    if path.suffix.lower() == ".npy":  # a volume's slice of several channels (modalities), as prepare wrote it
        return np.load(path)
    if path.suffix.lower() == ".dcm":
        values = read_dicom(path)
        return values if values.dtype == np.uint8 else window_to_uint8(values)
    image = decode(path)
    if image.dtype == np.uint16:
        return window_to_uint8(image)
    if image.dtype != np.uint8:
        raise InputError(path, "unsupported pixel type; expected 8- or 16-bit", str(image.dtype))
    return image


def decode(path: Path) -> np.ndarray:
    """The stored pixels, upright, channels in RGB(A) order: OpenCV, else tifffile for a TIFF OpenCV cannot read."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is not None:
        if image.ndim == 3 and image.shape[2] in (3, 4):
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
        return apply_orientation(image, exif_orientation(path))
    tried = ["OpenCV"]
    if Path(path).suffix.lower() in TIFF_SUFFIXES:
        image = _read_tiff(path, tried)
        if image is not None:
            return image
    raise InputError(path, f"cannot be read as an image by {' or '.join(tried)} (corrupt or not an image file)")


def _read_tiff(path: Path, tried: list) -> np.ndarray | None:
    """The first page; samples last (planar TIFFs store them first); None where tifffile is missing or fails."""
    try:
        import tifffile  # optional: most TIFFs OpenCV reads itself
    except ImportError:
        tried.append("tifffile (not installed: pip install tifffile)")
        return None
    tried.append("tifffile")
    try:
        image = np.asarray(tifffile.imread(path, key=0))
    except (ValueError, OSError):  # tifffile's TiffFileError is a ValueError
        return None
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[2] not in (3, 4):
        image = image.transpose(1, 2, 0)
    return np.ascontiguousarray(image) if image.ndim in (2, 3) else None


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag (1-8; 1 when absent), from the header alone. cv2's IMREAD_UNCHANGED ignores it, so
    a mask drawn on the image as a viewer shows it would not match the stored pixels of orientations 2-8."""
    if Path(path).suffix.lower() == ".dcm":
        return 1
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(0x0112, 1) or 1)
    except (OSError, ValueError, SyntaxError):
        return 1


# EXIF orientation -> the numpy steps that show the image upright (as Pillow's ImageOps.exif_transpose; tested).
_ORIENTATION = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
                7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: a.swapaxes(0, 1)[::-1]}


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    step = _ORIENTATION.get(orientation)
    return array if step is None else np.ascontiguousarray(step(array))


def bit_depth(path: Path) -> str:
    """'8-bit', '16-bit', 'DICOM' or 'other', from the file's header (Pillow reads no pixels for this); a file
    Pillow cannot open (a TIFF with odd tags) is decoded to see."""
    if Path(path).suffix.lower() == ".dcm":
        return "DICOM"
    try:
        with Image.open(path) as image:
            return "8-bit" if image.mode in EIGHT_BIT_MODES else "16-bit" if image.mode.startswith("I;16") else "other"
    except OSError:
        return {np.uint8: "8-bit", np.uint16: "16-bit"}.get(decode(path).dtype.type, "other")


def window_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale to 0-255 between the image's 0.5th and 99.5th percentiles (min and max if those are equal)."""
    values = values.astype(np.float32)
    low, high = np.percentile(values[::4, ::4], WINDOW_PERCENTILES)  # every 16th pixel: same percentiles, 16x less sorting
    if high <= low:
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255 / max(high - low, 1e-6))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    # Level 1: several times faster than the default for a few percent more disk. Encoded, then written atomically:
    # a reader never sees half a mask.
    ok, png = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"{path}: could not be written")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())


def write_npy(path: Path, array: np.ndarray) -> None:
    """An image whose channels PNG cannot hold as they are (a volume's slice of several modalities), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as file:
            np.save(file, array)


def mode(image: np.ndarray) -> str:
    return {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}.get(1 if image.ndim == 2 else image.shape[2], "?")


def to_channels(image: np.ndarray, channels: int, name: str) -> np.ndarray:
    """H x W (channels=1) or H x W x 3: RGB to grey by luminance, alpha dropped, grey replicated to RGB. An image
    with the dataset's channels already is kept (a volume's slice of 2, 4 or more modalities)."""
    have = 1 if image.ndim == 2 else image.shape[2]
    if channels > 1 and have == channels:
        return image
    if have not in (1, 2, 3, 4):
        raise InputError(name, f"has {have} channels; expected grey, grey+alpha, RGB or RGBA")
    if have == 2:  # grey + alpha
        image, have = image[..., 0], 1
    if image.ndim == 3 and have == 1:
        image = image[..., 0]
    if channels == 1:
        return image if have == 1 else cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY if have == 4 else cv2.COLOR_RGB2GRAY)
    if have == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return image[..., :3] if have == 4 else image


def read_as(path: Path, channels: int) -> np.ndarray:
    """An image file in the dataset's form: read_image's rules, then to_channels."""
    return to_channels(read_image(path), channels, str(path))


def looks_grey(image: np.ndarray) -> bool:
    """Grey, or colour whose channels agree on 99% of pixels (a grey X-ray saved as RGB: JPEG chroma noise, an
    arrow or a coloured label do not make it a colour image)."""
    if image.ndim == 2 or image.shape[2] <= 2:
        return True
    rgb = image[::4, ::4, :3].astype(np.int16)
    return float(((rgb.max(axis=2) - rgb.min(axis=2)) > 24).mean()) < 0.01


def as_size(value) -> int | tuple:
    """A working size as every stage keeps it: N for a square of N x N, (H, W) for a rectangle (a Severstal strip:
    (256, 1600)); from N, 'N', 'HxW', [H, W] (as JSON gives it back). ValueError for anything else."""
    given = value
    if isinstance(value, str):
        parts = value.lower().split("x")
        if not all(part.strip().isdigit() for part in parts) or len(parts) > 2:
            raise ValueError(f"size {value!r}: give N (a square) or HxW (height x width), e.g. 256 or 256x1600")
        value = [int(part) for part in parts]
    height, width = (value, value) if isinstance(value, int) else (value * 2 if len(value) == 1 else value)
    if min(height, width) < 1:
        raise ValueError(f"size {given!r}: sides must be at least 1 px")
    return int(height) if height == width else (int(height), int(width))


def sides(size) -> tuple:
    """(height, width) of a working size (as_size's)."""
    return (size, size) if isinstance(size, int) else tuple(size)


def size_text(size) -> str:
    """'256' for a square, '256x1600' (height x width) for a rectangle: as --size takes it and folders are named."""
    height, width = sides(size)
    return str(height) if height == width else f"{height}x{width}"


def resize(array: np.ndarray, size, is_mask: bool) -> np.ndarray:
    """To a working size (as_size's: N or (H, W)). Both sample at pixel centres, so a mask stays aligned with its
    image: INTER_AREA averages each cell, INTER_NEAREST_EXACT takes the pixel under its centre (plain INTER_NEAREST
    takes floor(i * scale), the cell's top-left corner: half a cell up and left, 15 px of a 2000 px X-ray cached at
    64 px)."""
    interpolation = cv2.INTER_NEAREST_EXACT if is_mask else cv2.INTER_AREA
    height, width = sides(size)
    return cv2.resize(array, (width, height), interpolation=interpolation)
