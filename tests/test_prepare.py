"""Sources into the canonical layout; every bad input reported at once, nothing written."""
import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED_DATA, prepare
from src.cache import open_cache
from src.canonical import load_index, load_meta
from src.portable.images import read_image, write_png


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
                     "20x20, image 30x40); give each image the mask drawn on it, at its size", "bad_values.png: mask is mostly mid-grey away from edges, like a probability map",
                     "colourful.png: mask is colour-coded (its channels differ); pass --class-colors",
                     "dup.png: duplicate id"]:
        assert expected in message
    assert "7 problem(s)" in message and "listed in" not in message  # each shown in full: no list file needed
    # the unreadable image is left out of the colour census instead of counting as grey
    assert "channels: 1 (5 of 6 readable images are grey or grey saved as colour; 1 unreadable" in capsys.readouterr().out
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    assert not (tmp_path / "folds").exists()


def test_a_colour_minority_is_made_grey_and_the_message_says_how_to_keep_its_colour(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    image, mask = lungs()
    for k in range(4):
        stained = np.dstack([image, image // 2, image // 3]) if k == 3 else image  # one H&E-like colour image
        cv2.imwrite(str(images / f"{k}.png"), stained)
        write_png(masks / f"{k}.png", mask)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--size", "16", "--k", "2",
            "--strategy", "kfold")
    assert ("channels: 1 (3 of 4 readable images are grey or grey saved as colour; --channels 3 keeps the colour of "
            "the other 1)") in capsys.readouterr().out


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
    data = tmp_path / "data" / tmp_path.name
    index = load_index(data).set_index("id")
    assert index.loc["rgb", "file"] == "images/rgb.jpg" and index.loc["wide", "file"] == "images/wide.png"
    assert (data / "images" / "rgb.jpg").read_bytes() == (images / "rgb.jpg").read_bytes()
    assert load_meta(data)["channels"] == 1
    assert np.load(data / "cache" / "16" / "images.npy").shape == (4, 16, 16)


def test_exif_rotated_image_matches_its_upright_mask_and_is_counted(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    image, mask = lungs()
    image = cv2.resize(image, (image.shape[1] + 8, image.shape[0]))  # not square, so a turn changes the shape
    mask = cv2.resize(mask, (mask.shape[1] + 8, mask.shape[0]), interpolation=cv2.INTER_NEAREST)
    exif = Image.new("L", (1, 1)).getexif()
    exif[0x0112] = 6  # the camera held sideways: stored turned 90 degrees counter-clockwise
    Image.fromarray(np.rot90(image)).save(images / "turned.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(image).save(images / "plain.jpg", quality=95)
    for name in ("turned", "plain"):
        write_png(masks / f"{name}.png", mask)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--size", "16", "--k", "2",
            "--strategy", "kfold")
    assert "1 rotated upright by EXIF orientation" in capsys.readouterr().out
    index = load_index(tmp_path / "data" / tmp_path.name).set_index("id")
    assert tuple(index.loc["turned", ["height", "width"]]) == mask.shape


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
    """Every image of a quarter of the patients (every 4th): JPEG and PNG, grey, RGB and RGBA, 157-4280 px, patients
    with several films; a quarter of the decoding the whole set costs (a minute on 2 cores)."""
    meta = pd.read_csv(REAL_CXR / "metadata.csv", dtype=str)
    chosen = meta[meta["patient"].isin(sorted(meta["patient"].unique())[::4])]
    for folder in ("images", "masks"):
        (tmp_path / "real" / folder).mkdir(parents=True)
    for row in chosen.itertuples():
        for name in (row.image, row.mask):
            (tmp_path / "real" / name).symlink_to(REAL_CXR / name)
    chosen.to_csv(tmp_path / "real" / "metadata.csv", index=False)
    assert {p.rsplit(".", 1)[1] for p in chosen["image"]} == {"jpeg", "jpg", "png"}
    assert chosen.groupby("patient").size().max() > 1
    prepare(tmp_path, "folder", "--images", str(tmp_path / "real" / "images"), "--masks", str(tmp_path / "real" / "masks"),
            "--meta", str(tmp_path / "real" / "metadata.csv"), "--group-column", "patient", "--name", "cxr", "--size", "64")
    index = load_index(tmp_path / "data" / "cxr")
    assert len(index) == len(chosen) and (index["split"] == "train").all()
    assert index["group"].nunique() == chosen["patient"].nunique()
    assert load_meta(tmp_path / "data" / "cxr")["channels"] == 1 and set(index["view"]) >= {"PA", "AP"}
    folds = pd.read_csv(tmp_path / "folds" / "cxr.csv", dtype={"group": str})
    assert len(folds) == len(chosen) and folds.groupby("group")["fold"].nunique().max() == 1  # no patient in two folds
    images_mib = sum(f.stat().st_size for f in (tmp_path / "data" / "cxr" / "images").iterdir()) / 2**20
    source_mib = sum((REAL_CXR / name).stat().st_size for name in chosen["image"]) / 2**20
    assert images_mib <= 1.05 * source_mib


def folder_pair(tmp_path, masks_of: dict):
    """images/<id>.png plus each mask file given as {relative path under masks/: array}."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(exist_ok=True)
    for relative, mask in masks_of.items():
        (masks / relative).parent.mkdir(parents=True, exist_ok=True)
        if relative.endswith(".jpg"):
            Image.fromarray(mask).save(masks / relative, "JPEG", quality=75)
        else:
            write_png(masks / relative, mask)
    return images, masks


def test_jpeg_and_resized_binary_masks_prepare_with_the_count_printed(tmp_path, capsys):
    image, mask = lungs(80, 60)
    images, masks = folder_pair(tmp_path, {"a.jpg": mask, "b.jpg": mask[::-1].copy(),
                                           "c.png": cv2.resize(cv2.resize(mask, (30, 40)), (60, 80))})
    for name in "abc":
        write_png(images / f"{name}.png", image)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--size", "16", "--k", "2",
            "--strategy", "kfold")
    printed = capsys.readouterr().out
    assert "binarised 2 masks at 128: " in printed and "as JPEG compression leaves" in printed
    assert "binarised 1 masks at 128: " in printed and "as resizing leaves" in printed
    written = read_image(tmp_path / "data" / tmp_path.name / "masks" / "a.png")
    assert set(np.unique(written)) == {0, 1} and (written != (mask > 0)).mean() < 0.01


def test_class_map_and_probability_map_are_refused_naming_the_flag(tmp_path, capsys):
    image, _ = lungs()
    yy, xx = np.mgrid[:40, :30]
    probability = (255 * np.exp(-((yy - 20) ** 2 + (xx - 15) ** 2) / 200)).astype(np.uint8)
    images, masks = folder_pair(tmp_path, {"classes.png": (np.arange(40 * 30).reshape(40, 30) % 5).astype(np.uint8),
                                           "probability.png": probability})
    for name in ("classes", "probability"):
        write_png(images / f"{name}.png", image)
    args = ["folder", "--images", str(images), "--masks", str(masks), "--size", "16", "--k", "2", "--strategy", "kfold"]
    with pytest.raises(SystemExit) as error:
        prepare(tmp_path, *args)
    assert "classes.png: mask values all lie below 128, like a class map" in str(error.value)
    assert "a class map needs --task multiclass --classes background,..." in str(error.value)
    assert "probability.png: mask is mostly mid-grey away from edges, like a probability map" in str(error.value)
    assert "--mask-threshold T binarises at T" in str(error.value)
    prepare(tmp_path, *args, "--mask-threshold", "2")
    assert "binarised 2 masks at 2: " in capsys.readouterr().out
    np.testing.assert_array_equal(read_image(tmp_path / "data" / tmp_path.name / "masks" / "probability.png"),
                                  probability >= 2)


def test_instance_masks_merge_by_union_in_every_public_layout(tmp_path):
    image, mask = lungs()
    left, right = mask.copy(), np.zeros_like(mask)
    right[30:38, 15:25] = 255
    union = ((left > 0) | (right > 0)).astype(np.uint8)
    layouts = {  # BUSI, ISIC, one folder per image, and the Data Science Bowl's own layout
        "busi": {"benign/x.png": image, "benign/x_mask.png": left, "benign/x_mask_1.png": right,
                 "benign/y.png": image, "benign/y_mask.png": left},
        "isic": {"images/x.png": image, "masks/x_segmentation.png": left, "images/y.png": image,
                 "masks/y_segmentation.png": right},
        "per_image": {"images/x.png": image, "masks/x/1.png": left, "masks/x/2.png": right, "images/y.png": image,
                      "masks/y/1.png": left},
        "dsb": {"stage1/x/images/x.png": image, "stage1/x/masks/1.png": left, "stage1/x/masks/2.png": right,
                "stage1/y/images/y.png": image, "stage1/y/masks/1.png": left},
    }
    for layout, files in layouts.items():
        for relative, array in files.items():
            (tmp_path / layout / relative).parent.mkdir(parents=True, exist_ok=True)
            write_png(tmp_path / layout / relative, array)
        root = tmp_path / layout
        shared = {"dsb": "stage1", "busi": "benign"}.get(layout)  # images and masks in one folder
        where = ["--images", str(root / shared), "--masks", str(root / shared)] if shared else \
            ["--images", str(root / "images"), "--masks", str(root / "masks")]
        prepare(root, "folder", *where, "--size", "16", "--k", "2", "--strategy", "kfold", "--name", layout)
    for layout in layouts:
        expected = (left > 0).astype(np.uint8) if layout == "isic" else union
        np.testing.assert_array_equal(read_image(tmp_path / layout / "data" / layout / "masks" / "x.png"), expected)
    assert load_index(tmp_path / "dsb" / "data" / "dsb")["file"].tolist() == ["images/x.png", "images/y.png"]


def test_colour_coded_masks_map_with_class_colors(tmp_path):
    image, _ = lungs()
    indices = (np.arange(40 * 30).reshape(40, 30) % 3).astype(np.uint8)
    coded = np.array([(0, 0, 0), (255, 0, 0), (0, 0, 255)], np.uint8)[indices]
    images, masks = folder_pair(tmp_path, {"a.png": coded})
    write_png(images / "a.png", image)
    write_png(images / "b.png", image)
    write_png(masks / "b.png", np.full((40, 30, 3), (0, 255, 0), np.uint8))  # green: not a class colour
    args = ["folder", "--images", str(images), "--masks", str(masks), "--task", "multiclass", "--classes",
            "background,red,blue", "--size", "16", "--k", "2", "--strategy", "kfold"]
    with pytest.raises(SystemExit, match=r"b.png: mask has colours that are not in --class-colors \(1200 pixels: "
                                         r"00ff00 x 1200\)"):
        prepare(tmp_path, *args, "--class-colors", "000000,ff0000,0000ff")
    with pytest.raises(SystemExit, match="--class-colors lists 2 colours for 3 classes"):
        prepare(tmp_path, *args, "--class-colors", "000000,ff0000")
    write_png(masks / "b.png", coded)
    prepare(tmp_path, *args, "--class-colors", "000000,ff0000,0000ff")
    np.testing.assert_array_equal(read_image(tmp_path / "data" / tmp_path.name / "masks" / "b.png"), indices)


def test_identical_problems_make_one_line_and_a_file(tmp_path):
    image = np.full((4, 4), 90, np.uint8)
    class_map = np.array([[0, 1, 2, 3]] * 4, np.uint8)
    images, masks = folder_pair(tmp_path, {f"{i:04d}.png": class_map for i in range(5)})
    for i in range(5):
        write_png(images / f"{i:04d}.png", image)
    write_png(images / "lonely.png", image)
    with pytest.raises(SystemExit) as error:
        prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--name", "many")
    lines = str(error.value).splitlines()
    assert len(lines) == 3 and "6 problem(s) in the input, nothing was written" in lines[0]
    assert lines[1].startswith("  5 x mask values all lie below 128, like a class map, not a binary mask: ")
    assert "0000.png (0, 1, 2, 3)" in lines[1] and "and 2 more; a class map needs --task multiclass" in lines[1]
    assert "lonely.png: image has no mask" in lines[2]
    listed = Path(lines[0].split("listed in ")[1].rstrip("):"))
    assert listed.name == "prepare-many-problems.txt" and len(listed.read_text().splitlines()) == 6
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_an_existing_fold_file_is_kept_unless_overwrite(tmp_path, capsys):
    args = ["demo", "--count", "8", "--test-count", "0", "--size", "16", "--k", "2"]
    prepare(tmp_path, *args)
    before = (tmp_path / "folds" / "demo.csv").read_bytes()
    shutil.rmtree(tmp_path / "data")
    prepare(tmp_path, *args[:-1], "4")  # another k: the committed split wins
    assert "kept " in capsys.readouterr().out and (tmp_path / "folds" / "demo.csv").read_bytes() == before
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(SystemExit, match=r"demo.csv: exists but lists other images \(0 of its ids are not labelled "
                                         r"images here, 2 labelled images are not in it\); pass --overwrite"):
        prepare(tmp_path, "demo", "--count", "10", "--test-count", "0", "--size", "16")
    assert not (tmp_path / "data" / "demo").exists()
    prepare(tmp_path, "demo", "--count", "10", "--test-count", "0", "--size", "16", "--k", "2", "--overwrite")
    assert len(pd.read_csv(tmp_path / "folds" / "demo.csv")) == 10


def test_generated_images_are_said_to_be_written_as_png(tmp_path, capsys):
    prepare(tmp_path, "demo", "--count", "4", "--test-count", "0", "--size", "16", "--k", "2")
    printed = capsys.readouterr().out
    assert "converted: nothing; 4 images written as PNG" in printed and "image files kept" not in printed


REAL_DSB = SHARED_DATA / "dsb2018-nuclei-96"


@pytest.mark.skipif(not REAL_DSB.exists(), reason="no real nuclei in ../shared/data")
def test_real_resized_nuclei_masks_are_binarised_and_counted(tmp_path, capsys):
    prepare(tmp_path, "folder", "--images", str(REAL_DSB / "images"), "--masks", str(REAL_DSB / "masks"), "--name",
            "dsb96", "--size", "96")
    assert "binarised 670 masks at 128: 2.7% of their pixels lay between 0 and 255, as resizing leaves" in \
        capsys.readouterr().out
    index = load_index(tmp_path / "data" / "dsb96")
    assert len(index) == 670 and (index["split"] == "train").all()
    assert set(np.unique(np.load(tmp_path / "data" / "dsb96" / "cache" / "96" / "masks.npy"))) == {0, 1}


def test_a_folder_dataset_is_named_after_the_images_folders_parent(tmp_path, capsys):
    image, mask = lungs()
    (tmp_path / "kvasir").mkdir()
    images, masks = folder_pair(tmp_path / "kvasir", {"a.png": mask, "b.png": mask})
    for name in "ab":
        write_png(images / f"{name}.png", image)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--size", "16", "--k", "2",
            "--strategy", "kfold")
    assert "dataset name: kvasir (the images folder's parent; --name NAME to choose another)" in capsys.readouterr().out
    assert (tmp_path / "data" / "kvasir" / "index.csv").exists() and (tmp_path / "folds" / "kvasir.csv").exists()


def test_an_orphan_instance_folder_is_reported_by_its_folders_name(tmp_path):
    image, mask = lungs()
    images, masks = folder_pair(tmp_path, {"s1/a.png": mask, "s99/a.png": mask})
    write_png(images / "s1.png", image)
    with pytest.raises(SystemExit) as error:
        prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks))
    assert (f"{masks / 's99' / 'a.png'}: mask has no image in {images} (looked for 'a.*' (its name) and 's99.*' "
            f"(its folder))") in str(error.value)


def test_a_new_split_over_a_committed_one_is_said_with_the_runs_it_strands(tmp_path, capsys):
    args = ["demo", "--count", "12", "--test-count", "0", "--size", "16", "--runs-dir", str(tmp_path / "runs")]
    prepare(tmp_path, *args, "--k", "3")
    committed = hashlib.sha256((tmp_path / "folds" / "demo.csv").read_bytes()).hexdigest()
    trained = {"folds": {"file": "folds/demo.csv", "sha256": committed}}
    for fold in range(2):
        (tmp_path / "runs" / "demo" / "unet-r34" / f"fold{fold}").mkdir(parents=True)
        (tmp_path / "runs" / "demo" / "unet-r34" / f"fold{fold}" / "config.json").write_text(json.dumps(trained))
    prepare(tmp_path, *args, "--k", "3", "--overwrite")  # the same split again: nothing to say
    assert "warning" not in capsys.readouterr().out
    prepare(tmp_path, *args, "--k", "2", "--overwrite")
    assert (f"warning: {tmp_path / 'folds' / 'demo.csv'} now holds another split (3 folds before, 2 now): 2 run "
            f"folder(s) under {tmp_path / 'runs' / 'demo'} were trained on the old one, and infer.py, ensemble.py and "
            f"--resume now refuse them; retrain them, or restore the old file (git checkout)") in capsys.readouterr().out


def test_an_empty_images_folder_is_said_first(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(SystemExit) as error:
        prepare(tmp_path, "folder", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"))
    assert f"{tmp_path / 'images'}: no image files" in str(error.value)
    assert "channels" not in capsys.readouterr().out  # no colour census of nothing


def test_a_wrong_path_beside_a_committed_split_is_said_alone(tmp_path):
    image, mask = lungs()
    images, masks = folder_pair(tmp_path, {"a.png": mask, "b.png": mask})
    for name in "ab":
        write_png(images / f"{name}.png", image)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--name", "kvasir", "--size", "16",
            "--k", "2", "--strategy", "kfold")
    shutil.rmtree(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    for wrong, said in [(tmp_path / "imagez", "folder does not exist"), (tmp_path / "empty", "no image files")]:
        with pytest.raises(SystemExit) as error:
            prepare(tmp_path, "folder", "--images", str(wrong), "--masks", str(masks), "--name", "kvasir")
        # one problem, the path: not the committed split's "lists other images ... pass --overwrite"
        assert str(error.value).startswith("prepare: 1 problem(s)") and f"{wrong}: {said}" in str(error.value)
        assert "--overwrite" not in str(error.value)


def test_opencvs_own_log_lines_stay_out_of_the_report(tmp_path, capfd):
    image, mask = lungs()
    images, masks = folder_pair(tmp_path, {"a.png": mask, "b.png": mask})
    write_png(images / "a.png", image)
    cv2.imwrite(str(images / "b.tif"), image)
    (images / "b.tif").write_bytes((images / "b.tif").read_bytes()[:200])
    with pytest.raises(SystemExit, match="b.tif: cannot be read as an image"):
        prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks))
    assert "TIFF" not in capfd.readouterr().err


def test_class_colors_beyond_two_under_the_binary_task_name_the_multiclass_flag(tmp_path):
    image, mask = lungs()
    images, masks = folder_pair(tmp_path, {"a.png": mask})
    write_png(images / "a.png", image)
    with pytest.raises(SystemExit, match=r"--class-colors lists 3 colours for 2 classes \(background, foreground\): "
                                         r"one per class, background first; more classes than two need --task "
                                         r"multiclass --classes background,a,b"):
        prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--class-colors",
                "000000,ff0000,00ff00")


def test_mask_names_by_every_suffix_rule_and_rgba_masks(tmp_path):
    """Each image finds its own mask by the README's suffixes (a different rectangle per image proves the pairing);
    an RGBA mask (equal colour channels, opaque) is read as the grey mask it is."""
    image, _ = lungs()
    suffixes = ["_seg", "_label", "_labels", "_gt", "_groundtruth", "_annotation", "-mask", "-seg", "_mask"]
    expected, files = {}, {}
    for i, suffix in enumerate(suffixes):
        mask = np.zeros((40, 30), np.uint8)
        mask[i:i + 10, 2 * i:2 * i + 5] = 255
        expected[f"img{i}"] = (mask > 0).astype(np.uint8)
        files[f"img{i}{suffix}.png"] = mask if suffix != "_mask" else np.dstack([mask, mask, mask, np.full_like(mask, 255)])
    images, masks = folder_pair(tmp_path, files)
    for stem in expected:
        write_png(images / f"{stem}.png", image)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--size", "16", "--k", "2",
            "--strategy", "kfold", "--name", "folder")
    data = tmp_path / "data" / "folder"
    assert sorted(load_index(data)["id"]) == sorted(expected)
    for stem, mask in expected.items():
        np.testing.assert_array_equal(read_image(data / "masks" / f"{stem}.png"), mask, err_msg=stem)


def test_palette_class_maps_and_channels_3_keep_a_grey_dataset_in_colour(tmp_path):
    image, _ = lungs()
    indices = (np.arange(40 * 30).reshape(40, 30) % 3).astype(np.uint8)
    images, masks = folder_pair(tmp_path, {})
    masks.mkdir()
    for name in ("a", "b"):
        palette = Image.fromarray(indices, mode="P")
        palette.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * 759)  # colours that are not the class ids
        palette.save(masks / f"{name}.png")
        write_png(images / f"{name}.png", image)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--task", "multiclass", "--classes",
            "background,a,b", "--channels", "3", "--size", "16", "--k", "2", "--strategy", "kfold",
            "--name", "folder")
    data = tmp_path / "data" / "folder"
    np.testing.assert_array_equal(read_image(data / "masks" / "a.png"), indices)
    assert load_meta(data)["channels"] == 3
    images, _ = open_cache(data, 16)  # what training reads: the grey file replicated into three channels
    assert images.shape == (2, 16, 16, 3) and (images[..., 0] == images[..., 1]).all() and images[..., 0].std() > 0


def test_numeric_group_labels_are_read_as_text_and_the_plan_is_written(tmp_path, capsys):
    """Patient ids 1, 2, ... (most hospital exports): the split, the summary line and the plan all count them."""
    prepare(tmp_path, "demo", "--count", "12", "--test-count", "0", "--size", "32", "--k", "3")
    ids = load_index(tmp_path / "data" / "demo")["id"]
    pd.DataFrame({"id": ids, "source_image": [i // 2 + 1 for i in range(len(ids))]}).to_csv(tmp_path / "meta.csv",
                                                                                              index=False)
    prepare(tmp_path, "demo", "--count", "12", "--test-count", "0", "--size", "32", "--k", "3", "--overwrite",
            "--meta", str(tmp_path / "meta.csv"), "--group-column", "source_image", plan=True)
    printed = capsys.readouterr().out
    assert "grouped by 6 groups (0 of them an image without a group label)" in printed
    folds = pd.read_csv(tmp_path / "folds" / "demo.csv", dtype={"group": str})
    assert sorted(folds["group"].unique(), key=int) == [str(g) for g in range(1, 7)]
    assert folds.groupby("group")["fold"].nunique().max() == 1  # both images of a patient in one fold
    planned = json.loads((tmp_path / "data" / "demo" / "plan.json").read_text())
    assert planned["fingerprint"]["groups"] == 6 and "fingerprint: 12 labelled + 0 test images, 6 groups" in printed
