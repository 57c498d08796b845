"""DICOM files (pydicom) -> display-ready pixel values: modality LUT, VOI LUT or window, MONOCHROME1 inverted; and
the pixel spacing in mm, which prepare keeps in index.csv (src/canonical.py) for HD95 in mm."""
from pathlib import Path

import numpy as np

# What pydicom needs to decode each compressed transfer syntax (pydicom's own list of decoder plugins).
DECODER_PACKAGES = "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"


def read_dicom(path: Path) -> np.ndarray:
    """H x W float (grey, bone bright) or H x W x 3 uint8 (colour). Raises ValueError naming the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a DICOM file ({error})") from None
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError) as error:  # a compressed transfer syntax without its decoder
        syntax = ds.file_meta.TransferSyntaxUID.name if "TransferSyntaxUID" in ds.get("file_meta", {}) else "compressed"
        raise ValueError(f"{path}: '{syntax}' pixel data needs a decoder: pip install {DECODER_PACKAGES}") from error
    except (ValueError, AttributeError, KeyError, EOFError) as error:
        raise ValueError(f"{path}: unreadable DICOM pixel data ({str(error).splitlines()[0]})") from None
    if pixels.ndim == 3 and pixels.shape[-1] != 3:
        pixels = pixels[0]  # a multi-frame file: its first frame
    if ds.get("PhotometricInterpretation", "MONOCHROME2") not in ("MONOCHROME1", "MONOCHROME2"):
        if ds.PhotometricInterpretation == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut
            pixels = apply_color_lut(pixels, ds)
        return _to_uint8(pixels) if pixels.dtype != np.uint8 else pixels  # pydicom already gives RGB for YBR
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":  # low values are white: invert so that bone is bright
        values = values.max() + values.min() - values
    return values


def pixel_spacing(path: Path) -> tuple | None:
    """(row_mm, col_mm): PixelSpacing (in the patient), else ImagerPixelSpacing (at the detector, the only one
    some X-rays carry); None where the file has neither, or no positive pair."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError):
        return None  # read_dicom reports the file
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            row_mm, col_mm = (float(v) for v in ds.get(keyword) or ())
        except (TypeError, ValueError):  # absent, empty or not a pair
            continue
        if row_mm > 0 and col_mm > 0:
            return row_mm, col_mm
    return None


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float32) * (255 / max(1, pixels.max()))).round().astype(np.uint8)
