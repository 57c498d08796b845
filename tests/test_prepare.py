"""Sources into the canonical layout; every bad input reported at once, nothing written."""

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA, prepare
from src.canonical import load_index, load_meta
from src.images import read_image, write_png


def lungs(h=40, w=30):
    mask = np.zeros((h, w), np.uint8)
    mask[5:30, 3:12] = 255
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8), mask


def test_folder_source_matches_masks_by_stem_and_merges_left_right(tmp_path):
    images, masks = tmp_path / "CXR_png", tmp_path / "ManualMask"
    for d in (images, masks / "leftMask", masks / "rightMask"):
        d.mkdir(parents=True)
    image, left = lungs()
    right = np.fliplr(left).copy()
    write_png(images / "MCUCXR_0001_0.png", image)
    write_png(masks / "leftMask" / "MCUCXR_0001_0.png", left)
    write_png(masks / "rightMask" / "MCUCXR_0001_0.png", right)
    write_png(images / "CHNCXR_0002_1.png", image)
    write_png(masks / "CHNCXR_0002_1_mask.png", left)
    prepare(tmp_path, "chest-xray", "--src", str(tmp_path), "--size", "16", "--k", "2", "--strategy", "kfold")
    data = tmp_path / "data" / "chest-xray"
    index = load_index(data).set_index("id")
    assert index.loc["MCUCXR_0001_0", "group"] == "MCUCXR_0001"
    assert (index.loc["MCUCXR_0001_0", ["height", "width"]] == [40, 30]).all()
    merged = read_image(data / "masks" / "MCUCXR_0001_0.png")
    assert set(np.unique(merged)) == {0, 1}
    np.testing.assert_array_equal(merged, ((left > 0) | (right > 0)).astype(np.uint8))
    assert load_meta(data)["classes"] == ["background", "lung"]


def test_kaggle_layout_with_unmasked_images_and_test_folder(tmp_path):
    root = tmp_path / "Lung Segmentation"
    for d in ("CXR_png", "masks", "test"):
        (root / d).mkdir(parents=True)
    image, mask = lungs()
    write_png(root / "CXR_png" / "CHNCXR_0001_0.png", image)
    write_png(root / "masks" / "CHNCXR_0001_0_mask.png", mask)
    write_png(root / "CXR_png" / "CHNCXR_0002_0.png", image)  # no mask, as in the Kaggle set
    write_png(root / "test" / "0001.png", image)
    with pytest.raises(SystemExit, match="CHNCXR_0002_0.png: image has no mask"):
        prepare(tmp_path, "chest-xray", "--src", str(tmp_path), "--size", "16")
    assert not (tmp_path / "data" / "chest-xray").exists()
    write_png(root / "CXR_png" / "CHNCXR_0003_0.png", image)
    write_png(root / "masks" / "CHNCXR_0003_0_mask.png", mask)
    prepare(tmp_path, "chest-xray", "--src", str(tmp_path), "--size", "16", "--allow-unmasked", "--k", "2",
            "--strategy", "kfold")
    index = load_index(tmp_path / "data" / "chest-xray").set_index("id")
    assert index["split"].to_dict() == {"CHNCXR_0001_0": "train", "CHNCXR_0002_0": "test", "CHNCXR_0003_0": "train",
                                        "0001": "test"}


def test_every_bad_input_is_reported_in_one_error_and_nothing_is_written(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    image, mask = lungs()
    write_png(images / "good.png", image)
    write_png(masks / "good.png", mask)
    (images / "corrupt.png").write_bytes(b"not a png")
    write_png(masks / "corrupt.png", mask)
    write_png(images / "lonely_image.png", image)
    write_png(masks / "lonely_mask.png", mask)
    write_png(images / "wrong_size.png", image)
    write_png(masks / "wrong_size.png", cv2.resize(mask, (20, 20)))
    write_png(images / "bad_values.png", image)
    write_png(masks / "bad_values.png", (mask // 2 + 7))
    write_png(images / "rgb.png", np.dstack([image, image // 2, image // 3]))  # converted to grey: no problem
    write_png(masks / "rgb.png", mask)
    write_png(images / "colourful.png", image)
    write_png(masks / "colourful.png", np.dstack([mask, mask // 2, mask]))
    write_png(images / "dup.png", image)
    cv2.imwrite(str(images / "dup.jpg"), image)
    write_png(masks / "dup.png", mask)
    with pytest.raises(SystemExit) as error:
        prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--size", "16")
    message = str(error.value)
    for expected in ["corrupt.png: cannot be read as an image by OpenCV", "lonely_image.png: image has no mask",
                     "lonely_mask.png: mask has no image", "wrong_size.png: mask size does not match its image (mask "
                     "20x20, image 30x40)", "bad_values.png: mask is mostly mid-grey, like a probability map",
                     "colourful.png: mask is colour-coded (its channels differ); pass --class-colors",
                     "dup.png: duplicate id"]:
        assert expected in message
    assert "7 problem(s)" in message and "listed in" not in message  # each shown in full: no list file needed
    # the unreadable image is left out of the colour census instead of counting as grey
    assert "channels: 1 (5 of 6 readable images are grey or grey saved as colour; 1 unreadable" in capsys.readouterr().out
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    assert not (tmp_path / "folds").exists()


def test_mixed_colour_modes_are_converted_and_8_bit_files_kept_as_they_are(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    image, mask = lungs()
    files = {"grey.png": image, "rgb.jpg": np.dstack([image] * 3), "rgba.png": np.dstack([image] * 3 + [image * 0 + 255]),
             "wide.png": (image.astype(np.uint16) * 16)}  # a 12-bit image
    for name, array in files.items():
        cv2.imwrite(str(images / name), array)
        write_png(masks / f"{name.split('.')[0]}.png", mask)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--size", "16", "--k", "2",
            "--strategy", "kfold")
    printed = capsys.readouterr().out
    assert "channels: 1 (4 of 4 readable images are grey" in printed
    assert "converted: " in printed and "1 RGB -> grey" in printed and "1 RGBA -> grey" in printed
    assert "1 16-bit -> 8-bit" in printed and "3 of 4 image files kept as they are" in printed
    data = tmp_path / "data" / "folder"
    index = load_index(data).set_index("id")
    assert index.loc["rgb", "file"] == "images/rgb.jpg" and index.loc["wide", "file"] == "images/wide.png"
    assert (data / "images" / "rgb.jpg").read_bytes() == (images / "rgb.jpg").read_bytes()
    assert load_meta(data)["channels"] == 1
    assert np.load(data / "cache" / "16" / "images.npy").shape == (4, 16, 16)


def test_empty_folder_and_missing_folder_are_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(SystemExit, match="no image files"):
        prepare(tmp_path, "folder", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"))
    with pytest.raises(SystemExit, match="nowhere: folder does not exist"):
        prepare(tmp_path, "folder", "--images", str(tmp_path / "nowhere"), "--masks", str(tmp_path / "masks"))


def test_multiclass_folder_rejects_values_beyond_the_classes(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image, _ = lungs()
    write_png(tmp_path / "images" / "a.png", image)
    write_png(tmp_path / "masks" / "a.png", np.full(image.shape, 3, np.uint8))
    with pytest.raises(SystemExit, match=r"a.png: mask value is not a class id \(0..2\) \(3\); list every class"):
        prepare(tmp_path, "folder", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                "--task", "multiclass", "--classes", "background,a,b")


def test_existing_dataset_is_kept_unless_overwrite(demo_dir, tmp_path):
    with pytest.raises(SystemExit, match="already exists"):
        prepare(demo_dir, "demo", "--count", "36", "--test-count", "4", "--size", "64", "--k", "3")


def test_demo_is_deterministic_and_varied(tmp_path):
    for run in ("a", "b"):
        prepare(tmp_path / run, "demo", "--count", "6", "--test-count", "2", "--size", "32", "--k", "2")
    for name in ("index.csv", "cache/32/images.npy", "cache/32/masks.npy", "images/cxr_0003.png", "masks/cxr_0003.png"):
        assert (tmp_path / "a/data/demo" / name).read_bytes() == (tmp_path / "b/data/demo" / name).read_bytes()
    assert (tmp_path / "a/folds/demo.csv").read_bytes() == (tmp_path / "b/folds/demo.csv").read_bytes()
    index = load_index(tmp_path / "a/data/demo")
    assert index[["height", "width"]].nunique().min() > 1  # sizes vary, non-square
    assert (index["split"] == "test").sum() == 2
    assert not (tmp_path / "a/data/demo/masks/cxr_0007.png").exists()  # test images have no masks


def test_cache_matches_resized_originals(demo_dir):
    from src.cache import open_cache
    data = demo_dir / "data" / "demo"
    images, masks = open_cache(data, 64)
    index = load_index(data)
    for position in (0, 5, len(index) - 1):
        row = index.iloc[position]
        original = read_image(data / "images" / f"{row.id}.png")
        np.testing.assert_array_equal(images[position], cv2.resize(original, (64, 64), interpolation=cv2.INTER_AREA))
        if row.split == "train":
            mask = read_image(data / "masks" / f"{row.id}.png")
            np.testing.assert_array_equal(masks[position], cv2.resize(mask, (64, 64), interpolation=cv2.INTER_NEAREST_EXACT))
    rebuilt_images, rebuilt_masks = open_cache(data, 48)  # a new size is built from the canonical files
    assert rebuilt_images.shape == (len(index), 48, 48) and isinstance(rebuilt_images, np.memmap)


def test_multiclass_demo_has_rgb_images_tissue_and_rare_class(multiclass_dir):
    data = multiclass_dir / "data" / "demo-multiclass"
    meta, index = load_meta(data), load_index(data)
    assert meta["task"] == "multiclass" and meta["channels"] == 3 and len(meta["classes"]) == 6
    assert set(index["tissue"]) <= {"breast", "colon", "lung"}
    masks = np.load(data / "cache" / "64" / "masks.npy")
    counts = np.bincount(masks.ravel(), minlength=6)
    assert counts[4] < counts[1]  # dead nuclei are rare


REAL_CXR = SHARED_DATA / "cxr-covid-lungs"


@pytest.mark.skipif(not REAL_CXR.exists(), reason="no real chest X-rays in ../shared/data")
def test_real_mixed_chest_x_rays_with_patients_from_the_metadata(tmp_path):
    prepare(tmp_path, "folder", "--images", str(REAL_CXR / "images"), "--masks", str(REAL_CXR / "masks"), "--meta",
            str(REAL_CXR / "metadata.csv"), "--group-column", "patient", "--name", "cxr", "--size", "64")
    index = load_index(tmp_path / "data" / "cxr")
    assert len(index) == 341 and (index["split"] == "train").all() and index["group"].nunique() == 207
    assert load_meta(tmp_path / "data" / "cxr")["channels"] == 1 and set(index["view"]) >= {"PA", "AP"}
    folds = pd.read_csv(tmp_path / "folds" / "cxr.csv", dtype={"group": str})
    assert len(folds) == 341 and folds.groupby("group")["fold"].nunique().max() == 1  # no patient in two folds
    images_mib = sum(f.stat().st_size for f in (tmp_path / "data" / "cxr" / "images").iterdir()) / 2**20
    source_mib = sum(f.stat().st_size for f in (REAL_CXR / "images").iterdir()) / 2**20
    assert images_mib <= 1.05 * source_mib


@pytest.mark.skipif(not (SHARED_DATA.exists() and any(SHARED_DATA.glob("**/CXR_png"))), reason="no real lung data")
def test_real_chest_xray(tmp_path):
    src = next(SHARED_DATA.glob("**/CXR_png")).parent
    prepare(tmp_path, "chest-xray", "--src", str(src), "--allow-unmasked", "--size", "256")
    index = load_index(tmp_path / "data" / "chest-xray")
    assert (index["split"] == "train").sum() > 100
    assert index["height"].median() > 1000
