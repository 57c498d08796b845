"""Any image file into the dataset's form: colour modes, 12/16-bit, masks kept strict."""
import cv2
import numpy as np
import pytest
from PIL import Image

from src.images import bit_depth, looks_grey, read_image, read_mask, to_channels


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


def test_masks_stay_strict(tmp_path):
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:9] = 255
    cv2.imwrite(str(tmp_path / "rgb_equal.png"), np.dstack([mask] * 3))
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb_equal.png"), mask)
    cv2.imwrite(str(tmp_path / "sixteen.png"), mask.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_mask(tmp_path / "sixteen.png"), mask)
    coloured = np.dstack([mask, mask // 2, mask])
    cv2.imwrite(str(tmp_path / "coloured.png"), coloured)
    with pytest.raises(ValueError, match="coloured.png: mask has 3 differing channels"):
        read_mask(tmp_path / "coloured.png")
    cv2.imwrite(str(tmp_path / "big.png"), np.full((4, 4), 1000, np.uint16))
    with pytest.raises(ValueError, match="big.png: 16-bit mask value 1000 is not a class id"):
        read_mask(tmp_path / "big.png")


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    """A phone or viewer shows a JPEG/PNG turned by its EXIF tag; masks are drawn on what it shows."""
    from PIL import ImageOps
    stored = gradient(30, 40)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.png"
        exif = Image.new("L", (1, 1)).getexif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(path, exif=exif.tobytes())
        upright = np.asarray(ImageOps.exif_transpose(Image.open(path)))  # Pillow's reading of the tag
        assert np.array_equal(read_image(path), upright), orientation
        assert np.array_equal(read_mask(path), upright), orientation
