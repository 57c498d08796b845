"""Masks as public datasets ship them: resized, JPEG, palette, colour-coded; class and probability maps refused."""
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from src.masks import binary, class_indices, parse_colors, read_mask


def blobs(h=64, w=80):
    mask = np.zeros((h, w), np.uint8)
    mask[10:40, 20:60] = 255
    yy, xx = np.mgrid[:h, :w]
    mask[(yy - 48) ** 2 + (xx - 18) ** 2 < 100] = 255
    return mask


def test_masks_stay_strict(tmp_path):
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:9] = 255
    cv2.imwrite(str(tmp_path / "rgb_equal.png"), np.dstack([mask] * 3))
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb_equal.png"), mask)
    cv2.imwrite(str(tmp_path / "sixteen.png"), mask.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_mask(tmp_path / "sixteen.png"), mask)
    cv2.imwrite(str(tmp_path / "big.png"), np.full((4, 4), 1000, np.uint16))
    with pytest.raises(ValueError, match=r"big.png: 16-bit mask value is not a class id \(0-255\) nor a binary"):
        read_mask(tmp_path / "big.png")


def test_jpeg_and_resized_masks_binarise_at_128_and_say_why():
    mask = blobs()
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "JPEG", quality=75)
    jpeg = np.asarray(Image.open(buffer))
    assert len(np.unique(jpeg)) > 20  # noise near 0 and 255
    binarised, how = binary(jpeg, "x.jpg", jpeg=True)
    assert how.reason == "JPEG compression" and how.threshold == 128
    assert (binarised != (mask > 0)).mean() < 0.005
    small = cv2.resize(mask, (40, 32), interpolation=cv2.INTER_AREA)  # anti-aliased edges
    binarised, how = binary(small, "x.png")
    assert how.reason == "resizing" and 0 < how.off_pixels < 0.2 * small.size
    np.testing.assert_array_equal(binary(mask, "exact.png")[0], mask > 0)
    assert binary(mask, "exact.png")[1] is None


def test_class_map_and_probability_map_are_refused_naming_the_flag():
    class_map = np.arange(64 * 80).reshape(64, 80) % 5
    with pytest.raises(ValueError, match=r"a.png: mask values all lie below 128, like a class map.*0, 1, 2, 3, 4"
                                         r".*--task multiclass --classes"):
        binary(class_map.astype(np.uint8), "a.png")
    yy, xx = np.mgrid[:64, :80]
    probability = (255 * np.exp(-((yy - 32) ** 2 + (xx - 40) ** 2) / 400)).astype(np.uint8)
    with pytest.raises(ValueError, match="b.png: mask is mostly mid-grey away from edges, like a probability map.*--mask-threshold T"):
        binary(probability, "b.png")
    forced, how = binary(probability, "b.png", threshold=100)
    np.testing.assert_array_equal(forced, probability >= 100)
    assert how.reason == "--mask-threshold"


def test_palette_png_gives_its_indices_and_colours_map_by_class_colors(tmp_path):
    indices = (np.arange(12 * 10).reshape(12, 10) % 3).astype(np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png"), indices)
    colours = parse_colors("000000,#ff0000,00ff00")
    rgb = np.array(colours, np.uint8)[indices]
    cv2.imwrite(str(tmp_path / "coded.png"), rgb[..., ::-1])
    coded = read_mask(tmp_path / "coded.png")
    assert coded.shape == (12, 10, 3)
    mapped, _ = class_indices(coded, "multiclass", ["bg", "a", "b"], "coded.png", colours)
    np.testing.assert_array_equal(mapped, indices)
    with pytest.raises(ValueError, match="coded.png: mask is colour-coded .*--class-colors"):
        class_indices(coded, "multiclass", ["bg", "a", "b"], "coded.png")
    coded[0, :4] = (12, 34, 56)
    with pytest.raises(ValueError, match=r"coded.png: mask has colours that are not in --class-colors \(4 pixels: "
                                         r"0c2238 x 4\)"):
        class_indices(coded, "multiclass", ["bg", "a", "b"], "coded.png", colours)
