"""PanNuke's published fold files (float64 images, 6-channel instance masks, tissue types) into class-index masks."""
import numpy as np
import pytest

from conftest import prepare
from src.canonical import load_index, load_meta
from src.portable.images import read_image
from src.sources import pannuke_class_map


def write_fold(root, fold, n, rng):
    images_dir = root / f"Fold {fold}" / "images" / f"fold{fold}"
    masks_dir = root / f"Fold {fold}" / "masks" / f"fold{fold}"
    images_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    images = rng.uniform(0, 255, (n, 256, 256, 3))  # float64 0..255, as published
    masks = np.zeros((n, 256, 256, 6))
    masks[..., 5] = 1
    planted = []
    for i in range(n):
        cls = (i + fold) % 5  # channel 0..4 = class 1..5
        masks[i, 10:20, 30:40, cls] = 7 + i  # one nucleus, instance id 7+i
        masks[i, 10:20, 30:40, 5] = 0
        planted.append(cls + 1)
    np.save(images_dir / "images.npy", images)
    np.save(images_dir / "types.npy", np.array(["Breast", "Colon"] * (n // 2) + ["Breast"] * (n % 2)))
    np.save(masks_dir / "masks.npy", masks)
    return images, planted


def test_planted_nuclei_and_official_folds(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "pannuke"
    written = {fold: write_fold(src, fold, 3, rng) for fold in (1, 2, 3)}
    prepare(tmp_path, "pannuke", "--src", str(src), "--size", "64")
    data = tmp_path / "data" / "pannuke"
    meta, index = load_meta(data), load_index(data)
    assert meta["classes"] == ["background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"]
    assert meta["rotation_invariant"] and meta["official_folds"]
    assert meta["channels"] == 3 and len(index) == 9
    row = index.set_index("id").loc["fold2_00001"]
    assert row["tissue"] == "Colon" and row["official_fold"] == 2
    mask = read_image(data / "masks" / "fold2_00001.png")
    expected = np.zeros((256, 256), np.uint8)
    expected[10:20, 30:40] = written[2][1][1]
    np.testing.assert_array_equal(mask, expected)
    image = read_image(data / "images" / "fold2_00001.png")
    np.testing.assert_array_equal(image, written[2][0][1].astype(np.uint8))
    folds = __import__("pandas").read_csv(tmp_path / "folds" / "pannuke.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert (folds["fold"] + 1 == folds["official_fold"]).all()


def test_overlapping_instances_later_channel_wins():
    instances = np.zeros((4, 4, 6))
    instances[0:2, 0:2, 0] = 1  # neoplastic
    instances[1:3, 1:3, 3] = 2  # dead, overlapping at (1, 1)
    class_map, overlaps = pannuke_class_map(instances)
    assert class_map[1, 1] == 4 and class_map[0, 0] == 1 and class_map[2, 2] == 4
    assert overlaps == 1


def test_stratify_by_tissue_instead_of_official_folds(tmp_path):
    rng = np.random.default_rng(1)
    for fold in (1, 2):
        write_fold(tmp_path / "src", fold, 4, rng)
    prepare(tmp_path, "pannuke", "--src", str(tmp_path / "src"), "--size", "32", "--strategy", "tissue", "--k", "2")
    folds = __import__("pandas").read_csv(tmp_path / "folds" / "pannuke.csv")
    assert (folds.groupby(["fold", "stratum"]).size() == 2).all()


def test_broken_pannuke_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no PanNuke images.npy found"):
        prepare(tmp_path, "pannuke", "--src", str(tmp_path))
