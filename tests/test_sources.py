"""Kaggle RLE CSVs and metadata CSVs through `python -m src.prepare`: merged rows, classes, bad rows, groups."""
import re

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import prepare
from src.canonical import load_index, load_meta, spacing_of
from src.portable.images import read_image, write_png
from src.portable.rle import rle_encode


def images_folder(tmp_path, names, shape=(12, 10)):
    folder = tmp_path / "train"
    folder.mkdir()
    for name in names:
        write_png(folder / f"{name}.png", np.full(shape, 100, np.uint8))
    return folder


def write_csv(path, rows, columns=("ImageId", "EncodedPixels")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_rle_rows_are_merged_and_empty_rows_are_empty_masks(tmp_path):
    images = images_folder(tmp_path, ["a", "b", "c"])
    first, second = np.zeros((12, 10), np.uint8), np.zeros((12, 10), np.uint8)
    first[1:4, 2:5], second[8:11, 6:9] = 1, 1
    csv = write_csv(tmp_path / "train.csv", [("a", rle_encode(first)), ("a", rle_encode(second)), ("b", "-1"),
                                             ("c.png", "")])  # ids with or without the file's extension
    prepare(tmp_path, "rle", "--images", str(images), "--csv", str(csv), "--size", "8", "--k", "2")
    data = tmp_path / "data" / "rle"
    np.testing.assert_array_equal(read_image(data / "masks" / "a.png"), first | second)
    assert not read_image(data / "masks" / "b.png").any() and not read_image(data / "masks" / "c.png").any()
    assert load_meta(data)["task"] == "binary"


def test_rle_class_column_makes_a_multiclass_dataset_and_overlapping_classes_are_refused(tmp_path):
    images = images_folder(tmp_path, ["a", "b", "c", "d"])
    one, three = np.zeros((12, 10), np.uint8), np.zeros((12, 10), np.uint8)
    one[0:5, 0:5], three[5:12, 4:10] = 1, 1
    rows = [("a", rle_encode(one, "row"), "1"), ("a", rle_encode(three, "row"), "3"), ("b", rle_encode(one, "row"), "3")]
    csv = write_csv(tmp_path / "train.csv", rows, ("id", "rle", "ClassId"))
    args = ["rle", "--images", str(images), "--csv", str(csv), "--rle-order", "row", "--size", "8", "--k", "2",
            "--allow-unmasked"]
    prepare(tmp_path, *args)
    data = tmp_path / "data" / "rle"
    assert load_meta(data)["classes"] == ["background", "class_1", "class_2", "class_3"]
    np.testing.assert_array_equal(read_image(data / "masks" / "a.png"), np.where(three, 3, one))
    np.testing.assert_array_equal(read_image(data / "masks" / "b.png"), one * 3)
    assert load_index(data).set_index("id").loc["c", "split"] == "test"  # no row, --allow-unmasked
    wider = one.copy()
    wider[4:7, 3:6] = 1  # 4 pixels on class 3's
    write_csv(csv, [*rows, ("c", rle_encode(wider, "row"), "1"), ("c", rle_encode(three, "row"), "3"),
                    ("d", rle_encode(three, "row"), "2"), ("d", rle_encode(three, "row"), "2"),  # one class twice: merged
                    ("d", rle_encode(wider, "row"), "1")], ("id", "rle", "ClassId"))
    with pytest.raises(SystemExit) as refused:  # neither row overwrites the other without a word
        prepare(tmp_path / "again", *args)
    assert "2 x labels of different classes overlap: c (4 pixels of class_1 and class_3), d (4 pixels of class_2 and " \
           "class_1); a multiclass mask holds one class per pixel" in str(refused.value)
    assert "--task multilabel keeps every class of a pixel" in str(refused.value)
    assert not (tmp_path / "again" / "data" / "rle").exists()


def test_per_class_mask_folders_give_their_class_and_overlaps_are_refused(tmp_path):
    images = images_folder(tmp_path, ["a", "b"])
    lungs, heart = np.zeros((12, 10), np.uint8), np.zeros((12, 10), np.uint8)
    lungs[1:8, 1:4], heart[6:11, 3:8] = 255, 255  # one pixel row shared at [6:8, 3]
    for name, mask in (("lung", lungs), ("heart", heart)):
        (tmp_path / "masks" / name).mkdir(parents=True)
        write_png(tmp_path / "masks" / name / "a.png", mask)
        write_png(tmp_path / "masks" / name / "b.png", mask if name == "lung" else np.zeros_like(mask))
    args = ["folder", "--images", str(images), "--masks", str(tmp_path / "masks"), "--task", "multiclass",
            "--classes", "background,lung,heart", "--size", "8", "--k", "2", "--strategy", "kfold", "--name", "cls"]
    with pytest.raises(SystemExit, match=r"a: labels of different classes overlap \(2 pixels of heart and lung\)"):
        prepare(tmp_path, *args)
    lungs[6:8] = 0
    write_png(tmp_path / "masks" / "lung" / "a.png", lungs)
    prepare(tmp_path, *args)
    mask = read_image(tmp_path / "data" / "cls" / "masks" / "a.png")
    np.testing.assert_array_equal(mask, np.where(heart > 0, 2, np.where(lungs > 0, 1, 0)))


def test_class_names_from_the_csv_or_from_classes(tmp_path):
    images = images_folder(tmp_path, ["a", "b"])
    csv = write_csv(tmp_path / "train.csv", [("a", "1 3", "stomach"), ("b", "5 2", "large_bowel")],
                    ("id", "segmentation", "class"))
    args = ["rle", "--images", str(images), "--csv", str(csv), "--size", "8", "--k", "2", "--strategy", "kfold"]
    prepare(tmp_path / "sorted", *args)
    assert load_meta(tmp_path / "sorted" / "data" / "rle")["classes"] == ["background", "large_bowel", "stomach"]
    prepare(tmp_path / "given", *args, "--classes", "background,stomach,large_bowel,small_bowel")
    mask = read_image(tmp_path / "given" / "data" / "rle" / "masks" / "b.png")
    assert set(np.unique(mask)) == {0, 2}
    with pytest.raises(SystemExit, match=r"class names \['large_bowel'\] are not in --classes background,stomach"):
        prepare(tmp_path / "bad", *args, "--classes", "background,stomach")


def test_siim_relative_rle_with_dicom_images(tmp_path):
    folder = tmp_path / "dicom-images-train"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for study, name in (("1.2.3.1", "1.2.3.4"), ("1.2.3.2", "1.2.3.5")):  # SIIM's ids are DICOM UIDs: stems with dots
        (folder / study / f"{study}.9").mkdir(parents=True)  # as downloaded: <study>/<series>/<uid>.dcm
        ds.save_as(folder / study / f"{study}.9" / f"{name}.dcm")
    csv = write_csv(tmp_path / "train-rle.csv", [("1.2.3.4", " -1"), ("1.2.3.5", "5 3 120 2")],
                    ("ImageId", " EncodedPixels"))  # SIIM's header has that leading space
    prepare(tmp_path, "rle", "--images", str(folder), "--csv", str(csv), "--rle-column", " EncodedPixels",
            "--rle-relative", "--size", "16", "--k", "2", "--strategy", "kfold")
    data = tmp_path / "data" / "rle"
    mask = read_image(data / "masks" / "1.2.3.5.png")
    assert mask.T.ravel().nonzero()[0].tolist() == [5, 6, 7, 128, 129]  # 0-indexed, column-major
    index = load_index(data).set_index("id")
    assert index.loc["1.2.3.4", "file"] == "images/1.2.3.4.png"  # DICOM is stored converted, as PNG
    assert spacing_of(index.loc["1.2.3.4"]) == pytest.approx((0.661468, 0.661468))  # for HD95 in mm


def test_bad_rle_rows_are_reported_with_their_line_numbers_and_nothing_is_written(tmp_path):
    images = images_folder(tmp_path, ["a", "b", "c"])
    csv = write_csv(tmp_path / "train.csv", [("a", "1 2 3"), ("b", "100 50"), ("ghost", "1 1"),
                                             ("../evil", "1 1"), ("c", "1 1")])
    with pytest.raises(SystemExit) as error:
        prepare(tmp_path, "rle", "--images", str(images), "--csv", str(csv), "--size", "8")
    message = str(error.value)
    for expected in ["train.csv line 2 ('a'): odd number of values (3)",
                     "train.csv line 3: 'b' (10x12): run 1 ends at pixel 149, past the image's 120 pixels",
                     "train.csv line 4: image has no file in", "('ghost')",
                     "train.csv line 5: image id is not a plain file name ('../evil')"]:
        assert expected in message
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_rle_csv_without_known_columns_names_the_flag(tmp_path):
    images = images_folder(tmp_path, ["a"])
    csv = write_csv(tmp_path / "train.csv", [("a", "")], ("name", "pixels"))
    with pytest.raises(SystemExit, match="no id column found .* name it with --id-column"):
        prepare(tmp_path, "rle", "--images", str(images), "--csv", str(csv))


def test_image_without_a_row_is_an_error_unless_told_what_it_is(tmp_path):
    images = images_folder(tmp_path, ["a", "b", "c", "d"])
    csv = write_csv(tmp_path / "train.csv", [("a", "1 3"), ("b", ""), ("c", "")])
    with pytest.raises(SystemExit, match="d.png: no row in train.csv; --absent-empty"):
        prepare(tmp_path, "rle", "--images", str(images), "--csv", str(csv), "--size", "8")
    prepare(tmp_path, "rle", "--images", str(images), "--csv", str(csv), "--size", "8", "--absent-empty", "--k", "2")
    assert (load_index(tmp_path / "data" / "rle")["split"] == "train").all()


def test_groups_and_columns_from_a_metadata_csv_keep_each_patient_in_one_fold(tmp_path):
    names = [f"img{i:02d}" for i in range(20)]
    images = images_folder(tmp_path, names)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, name in enumerate(names):
        mask = np.zeros((12, 10), np.uint8)
        mask[: 1 + i % 10] = 255
        write_png(masks / f"{name}.png", mask)
    meta = pd.DataFrame({"id": names, "patient": [f"p{i // 4}" for i in range(20)], "view": ["PA", "AP"] * 10,
                         "width": 999})
    meta.to_csv(tmp_path / "meta.csv", index=False)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(masks), "--meta", str(tmp_path / "meta.csv"),
            "--group-column", "patient", "--size", "8", "--k", "5", "--name", "folder")
    index = load_index(tmp_path / "data" / "folder").set_index("id")
    assert index.loc["img05", "group"] == "p1" and index.loc["img05", "view"] == "AP"
    assert (index["width"] == 10).all()  # computed by prepare, not taken from the CSV
    folds = pd.read_csv(tmp_path / "folds" / "folder.csv", dtype=str).merge(meta.astype(str), on="id")
    assert folds.groupby("patient")["fold"].nunique().max() == 1 and folds["fold"].nunique() == 5


def test_metadata_csv_problems_name_the_file_and_the_flag(tmp_path):
    images = images_folder(tmp_path, ["a", "b"])
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("a", "b"):
        write_png(masks / f"{name}.png", np.zeros((12, 10), np.uint8))
    pd.DataFrame({"id": ["a"], "patient": ["p"]}).to_csv(tmp_path / "meta.csv", index=False)
    args = ["folder", "--images", str(images), "--masks", str(masks), "--meta", str(tmp_path / "meta.csv")]
    for groups in ([], ["--group-column", "patient"]):  # a labelled image without a row: refused, groups or not
        with pytest.raises(SystemExit, match="b: labelled image has no row in meta.csv .column 'id'.; add its row"):
            prepare(tmp_path, *args, *groups)
    with pytest.raises(SystemExit, match="no column 'subject' .columns: id, patient.; choose one with --group-column"):
        prepare(tmp_path, *args, "--group-column", "subject")


def test_a_csv_of_the_other_pixel_order_is_named_with_the_flag_that_reads_it(tmp_path, capsys):
    """Discs run-length encoded row by row, read in the default column order, shred into strips: prepare says so."""
    import cv2
    names = [f"i{k}" for k in range(4)]
    images = images_folder(tmp_path, names, shape=(40, 48))
    rows = []
    for k, name in enumerate(names):
        mask = np.zeros((40, 48), np.uint8)
        cv2.circle(mask, (12 + 4 * k, 14), 7, 1, -1)
        cv2.circle(mask, (38, 30 - 2 * k), 5, 1, -1)
        rows.append((name, rle_encode(mask, "row")))
    csv = write_csv(tmp_path / "train.csv", rows)
    prepare(tmp_path / "column", "rle", "--images", str(images), "--csv", str(csv), "--size", "16", "--k", "2")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rle: ")]
    assert len(said) == 1 and re.fullmatch(r"rle: the first 4 images' masks decode into \d+ pieces in column order "
                                           r"and 8 in row order: if the CSV lists pixels row by row, pass --rle-order "
                                           r"row", said[0])
    prepare(tmp_path / "row", "rle", "--images", str(images), "--csv", str(csv), "--size", "16", "--k", "2",
            "--rle-order", "row")
    assert not any(line.startswith("rle: ") for line in capsys.readouterr().out.splitlines())


def class_maps(names, classes: int, shape=(12, 10)) -> dict:
    """A class map per image: 0 background, a few random blobs of classes 1..classes, and one image left empty."""
    rng, maps = np.random.default_rng(5), {}
    for n, name in enumerate(names):
        labels = np.zeros(shape, np.uint8)
        for _ in range(0 if n == 1 else 3):
            top, left = rng.integers(0, 8), rng.integers(0, 6)
            labels[top:top + 4, left:left + 4] = rng.integers(1, classes + 1)
        maps[name] = labels
    return maps


FORMS = {  # name: (columns, rows of an image: (id, class index, mask) -> row, flags, classes)
    "row order": (["ImageId", "EncodedPixels"], lambda i, k, m: [i, rle_encode(m, "row")], ["--rle-order", "row"], 1),
    "relative runs, -1": (["ImageId", " EncodedPixels"],
                          lambda i, k, m: [f"{i}.png", rle_encode(m, relative=True) or "-1"], ["--rle-relative"], 1),
    "Image_Label": (["Image_Label", "EncodedPixels"], lambda i, k, m: [f"{i}.png_{['Fish', 'Flower'][k - 1]}",
                                                                       rle_encode(m)], [], 2),
    "ClassId, -1": (["ImageId", "ClassId", "EncodedPixels"], lambda i, k, m: [i, str(k), rle_encode(m) or "-1"], [], 3),
}


@pytest.mark.parametrize("form", FORMS)
def test_the_submission_gives_the_train_csvs_rows_back_in_its_own_form(tmp_path, form):
    """A train CSV through prepare, its masks re-encoded by the submission writer: the same file, in each form."""
    from src.portable.submission import mask_codes, submission_text
    columns, row_of, flags, classes = FORMS[form]
    names = ["a", "b", "c", "d"]
    maps = class_maps(names, classes)
    rows = [row_of(name, k, labels == k) for name, labels in maps.items() for k in range(1, classes + 1)]
    csv = write_csv(tmp_path / "train.csv", rows, columns)
    prepare(tmp_path, "rle", "--images", str(images_folder(tmp_path, names)), "--csv", str(csv), *flags, "--size", "8",
            "--k", "2", "--strategy", "kfold")
    data = tmp_path / "data" / "rle"
    meta = load_meta(data)
    codes = {name: mask_codes(name, read_image(data / "masks" / f"{name}.png"), meta["classes"], meta["submission"],
                              None) for name in names}
    assert submission_text(codes, meta["classes"], meta["submission"])[0] == csv.read_text()


def test_a_sample_submission_is_followed_row_for_row(tmp_path):
    """Its rows in its order and its columns, a class by name or number, the extension of its ids taken off; a class
    it names that the dataset lacks, or a missing column, is one line naming the file."""
    from src.portable.submission import default_format, mask_codes, submission_text
    classes, fmt = ["background", "Fish", "Flower"], default_format("multiclass")
    codes = {"a": {1: "1 2", 2: ""}, "b": {1: "", 2: "3 4"}, "c": {1: "5 1", 2: ""}}
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("Image_Label,EncodedPixels,extra\nb.jpg_Flower,1 1,x\na.jpg_Fish,1 1,y\nz.jpg_2,1 1,z\n")
    text, said = submission_text(codes, classes, fmt, sample)
    assert text == "Image_Label,EncodedPixels,extra\nb.jpg_Flower,3 4,x\na.jpg_Fish,1 2,y\nz.jpg_2,,z\n"
    assert said == ("1 of the 3 images sample_submission.csv lists have no image here, their rows written empty: z; "
                    "1 images predicted here are not in sample_submission.csv, so not in the submission: c")
    sample.write_text("Image_Label,EncodedPixels\na.jpg_Shark,1 1\n")
    with pytest.raises(ValueError, match=r"sample_submission.csv line 2: class 'Shark' is neither a class of this "
                                         r"dataset \(Fish, Flower\) nor its number"):
        submission_text(codes, classes, fmt, sample)
    sample.write_text("ImageId,Prediction\na,1 1\n")
    with pytest.raises(ValueError, match=r"sample_submission.csv: no run-length column among ImageId, Prediction"):
        submission_text(codes, classes, fmt, sample)
    final = np.array([[0, 1], [1, 0]], np.uint8)  # one foreground class, yet multiclass: its mask holds class indices
    assert mask_codes("one", final, ["background", "Fish"], fmt, tmp_path) == {1: "2 2"}
    assert read_image(tmp_path / "one.png").tolist() == final.tolist()


def test_a_dataset_prepared_before_the_submission_format_is_refused_in_one_line(tmp_path):
    import json
    csv = write_csv(tmp_path / "train.csv", [("a", "1 3"), ("b", "")])
    prepare(tmp_path, "rle", "--images", str(images_folder(tmp_path, ["a", "b"])), "--csv", str(csv), "--size", "8",
            "--k", "2", "--strategy", "kfold")
    data = tmp_path / "data" / "rle"
    meta = load_meta(data)
    assert meta["submission"] == {"columns": ["ImageId", "EncodedPixels"], "id": "ImageId", "rle": "EncodedPixels",
                                  "class": None, "joined": None, "class_as": "name", "suffix": "", "order": "column",
                                  "relative": False, "empty": ""}
    del meta["submission"]
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"^\S+meta.json was written by an older prepare, without the submission "
                                         r"format the masks are written in: prepare the dataset again"):
        load_meta(data)
