"""Any image file into the dataset's form: colour modes, 12/16-bit, TIFFs that Pillow refuses."""
import struct
import sys
import types

import cv2
import numpy as np
import pytest
from PIL import Image

from src.portable.images import bit_depth, looks_grey, read_image, to_channels


def gradient(h=30, w=40):
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P"])
def test_every_colour_mode_becomes_grey_and_rgb(tmp_path, mode):
    grey = gradient()
    path = tmp_path / f"x_{mode}.png"
    Image.fromarray(grey).convert(mode).save(path)
    for channels, shape in ((1, grey.shape), (3, (*grey.shape, 3))):
        converted = to_channels(read_image(path), channels, path.name)
        assert converted.shape == shape and converted.dtype == np.uint8
        values = converted if channels == 1 else converted[..., 0]
        assert np.abs(values.astype(int) - grey).max() <= (40 if mode == "P" else 1)  # a palette has <= 256 colours
    assert bit_depth(path) == "8-bit"


def test_rgb_to_grey_is_luminance_and_alpha_is_dropped():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # pure red, fully transparent
    assert to_channels(rgba, 1, "x")[0, 0] == round(0.299 * 200)
    assert to_channels(rgba, 3, "x").shape == (2, 2, 3)


def test_grey_x_ray_saved_as_colour_with_noise_and_an_arrow_still_looks_grey():
    rng = np.random.default_rng(0)
    grey = gradient(200, 200)
    rgb = np.clip(np.dstack([grey] * 3).astype(int) + rng.integers(-4, 5, (200, 200, 3)), 0, 255).astype(np.uint8)
    rgb[10:20, 10:20] = (255, 0, 0)  # a red arrow: 0.25% of the pixels
    assert looks_grey(rgb)
    photo = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    assert not looks_grey(photo)


def test_12_bit_x_ray_in_a_16_bit_png_keeps_its_contrast(tmp_path):
    x_ray = (np.linspace(0, 4095, 300 * 300).reshape(300, 300)).astype(np.uint16)
    x_ray[0, :5] = 65535  # a few hot pixels do not set the scale
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), x_ray)
    image = read_image(path)
    assert image.dtype == np.uint8 and len(np.unique(image)) >= 200
    assert len(np.unique(x_ray // 257)) < 20  # what dividing by 257 used to give: a nearly black image
    assert bit_depth(path) == "16-bit"


def write_tiff(path, array, photometric):
    """A baseline TIFF, one uncompressed strip, tags as given: Pillow refuses 3 samples tagged greyscale (1)."""
    h, w = array.shape[:2]
    samples, data = 1 if array.ndim == 2 else array.shape[2], np.ascontiguousarray(array).tobytes()
    tags = [(256, 3, w), (257, 3, h), (258, 3, 8 * array.dtype.itemsize), (259, 3, 1), (262, 3, photometric),
            (273, 4, 8 + 2 + 12 * 9 + 4), (277, 3, samples), (278, 3, h), (279, 4, len(data))]
    entries = b"".join(struct.pack("<HHI", tag, kind, 1) + struct.pack("<HH" if kind == 3 else "<I", value,
                                                                       *([0] if kind == 3 else []))
                       for tag, kind, value in tags)
    path.write_bytes(b"II" + struct.pack("<HIH", 42, 8, len(tags)) + entries + struct.pack("<I", 0) + data)


def test_tiff_that_pillow_refuses_is_read_by_opencv_or_tifffile_and_else_names_the_readers(tmp_path, monkeypatch):
    odd = tmp_path / "odd.tif"  # CVC-ClinicDB's case: three samples per pixel tagged as greyscale
    write_tiff(odd, np.dstack([gradient()] * 3), photometric=1)
    with pytest.raises(OSError):
        Image.open(odd)
    assert read_image(odd).shape[:2] == (30, 40) and bit_depth(odd) == "8-bit"
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 20)
    monkeypatch.setitem(sys.modules, "tifffile", None)  # as on a machine without it
    with pytest.raises(ValueError, match=r"broken.tif: cannot be read as an image by OpenCV or tifffile \(not "
                                         r"installed: pip install tifffile\)"):
        read_image(broken)
    planar = np.stack([gradient()] * 3)  # samples first, as a planar TIFF stores them
    monkeypatch.setitem(sys.modules, "tifffile", types.SimpleNamespace(imread=lambda path, key: planar))
    assert read_image(broken).shape == (30, 40, 3)


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    """A phone or viewer shows a JPEG/PNG turned by its EXIF tag; masks are drawn on what it shows."""
    from PIL import ImageOps
    from src.masks import read_mask
    stored = gradient(30, 40)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.png"
        exif = Image.new("L", (1, 1)).getexif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(path, exif=exif.tobytes())
        upright = np.asarray(ImageOps.exif_transpose(Image.open(path)))  # Pillow's reading of the tag
        assert np.array_equal(read_image(path), upright), orientation
        assert np.array_equal(read_mask(path), upright), orientation
