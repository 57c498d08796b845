"""Run-length encodings: Kaggle's column-major form, row-major, SIIM's relative starts, malformed strings."""
import numpy as np
import pytest

from src.portable.rle import rle_decode, rle_encode


def test_hand_made_example_with_known_pixels():
    # 3 x 4 image; column-major pixel numbers (1-indexed):  1 4 7 10 / 2 5 8 11 / 3 6 9 12
    mask = np.array([[0, 1, 0, 0],
                     [0, 1, 0, 1],
                     [1, 0, 0, 1]], np.uint8)
    assert rle_encode(mask) == "3 3 11 2"
    np.testing.assert_array_equal(rle_decode("3 3 11 2", (3, 4)), mask)
    assert rle_encode(mask, "row") == "2 1 6 1 8 2 12 1"  # row-major: 1 2 3 4 / 5 6 7 8 / 9 10 11 12
    np.testing.assert_array_equal(rle_decode("2 1 6 1 8 2 12 1", (3, 4), "row"), mask)
    # SIIM: 0-indexed starts counted from the end of the previous run: 0-indexed pixels 2-4, then 5 further on, 10-11
    np.testing.assert_array_equal(rle_decode("2 3 5 2", (3, 4), relative=True), mask)


@pytest.mark.parametrize("order", ["column", "row"])
def test_round_trip(order):
    mask = (np.random.default_rng(1).random((37, 53)) > 0.6).astype(np.uint8)
    np.testing.assert_array_equal(rle_decode(rle_encode(mask, order), mask.shape, order), mask)


@pytest.mark.parametrize("empty", ["", "-1", " -1", "nan"])
def test_empty_masks(empty):
    assert not rle_decode(empty, (5, 5)).any()
    assert rle_encode(np.zeros((5, 5))) == ""


@pytest.mark.parametrize("rle, message", [("1 2 3", "odd number of values"), ("1 x", "not a list of whole numbers"),
                                          ("10 7", "run 1 ends at pixel 16, past the image's 12 pixels"),
                                          ("0 2", "negative start")])
def test_malformed_strings_say_what_is_wrong(rle, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(rle, (3, 4))
