"""submission.csv and the masks beside it, written the same way by ensemble.py and by an exported package.

The rows follow the competition's format as prepare recorded it from the train CSV (meta.json's "submission": its
column names, one row per image or per image and class, the class by name or by number or joined to the id as in
`Image_Label`, ids with or without their extension, the pixel order, relative runs, the empty token); other
sources get default_format's id,rle (binary) or id,class,rle. With a sample_submission.csv, its rows and columns
exactly. Each mask is also written as <id>.png (0/255 for binary, the class index for multiclass).
"""
import csv
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .images import IMAGE_SUFFIXES, write_png
from .labels import label_mask
from .rle import rle_encode

SPELLINGS = {
    "id": ["ImageId", "image_id", "id", "Image", "image", "filename", "file_name", "file"],
    "rle": ["EncodedPixels", "encoded_pixels", "rle", "annotation", "segmentation", "mask_rle", "rle_mask"],
    "class": ["ClassId", "class_id", "class", "label", "category"],
    "joined": ["Image_Label", "ImageId_ClassId"],  # '<image>_<class>': Understanding Clouds, Severstal's first CSV
}


def find_column(columns, kind: str, given: str | None = None) -> str | None:
    """The column of a kind (SPELLINGS) in a CSV's header, as the header spells it (SIIM's ' EncodedPixels');
    given: that name or nothing."""
    if given:
        return given if given in columns else None
    plain = {str(c).strip().lower(): c for c in columns}
    return next((plain[s.lower()] for s in SPELLINGS[kind] if s.lower() in plain), None)


def default_format(task: str) -> dict:
    """The format of a dataset that came without a train CSV."""
    return {"columns": ["id", "rle"] if task == "binary" else ["id", "class", "rle"], "id": "id", "rle": "rle",
            "class": None if task == "binary" else "class", "joined": None, "class_as": "name", "suffix": "",
            "order": "column", "relative": False, "empty": ""}


def mask_codes(image_id: str, final: np.ndarray, classes: list, fmt: dict, masks: Path | None, task: str = "") -> dict:
    """{class index: run-length encoding} of one image's class map ({1: ...} for binary; multilabel: each class's
    bit, so an overlapping pixel is in every row of its classes) in the format's pixel order, its mask written to
    masks/<id>.png first where masks is a folder."""
    if masks is not None:
        write_png(masks / f"{image_id}.png", final * 255 if binary(fmt) else final)
    return {k: rle_encode(label_mask(final, k, task), fmt["order"], fmt["relative"]) for k in range(1, len(classes))}


def binary(fmt: dict) -> bool:
    """A binary dataset's format: no class column, no class joined to the id (a multiclass one has either, even with
    one foreground class)."""
    return not (fmt["class"] or fmt["joined"])


def submission_text(codes: dict, classes: list, fmt: dict, sample: Path | None = None) -> tuple:
    """(submission.csv's text, '' or a line to print). codes: {image id: mask_codes} in the order to write; sample:
    a sample_submission.csv whose rows and columns are followed exactly, the line naming the ids it lists that have
    no image here (their rows written empty) and the images it leaves out."""
    if sample is None:
        rows = [format_row(image_id, k, rle, classes, fmt)
                for image_id, each in codes.items() for k, rle in each.items()]
        return table(fmt["columns"], rows), ""
    header, rows, keys = read_sample(Path(sample), classes, fmt)
    for row, (image_id, k, rle_column) in zip(rows, keys):
        row[rle_column] = codes.get(image_id, {}).get(k) or fmt["empty"]
    listed = {image_id for image_id, _, _ in keys}
    missing, unlisted = [i for i in dict.fromkeys(listed) if i not in codes], [i for i in codes if i not in listed]
    said = []
    if missing:
        said.append(f"{len(missing)} of the {len(listed)} images {Path(sample).name} lists have no image here, their "
                    f"rows written empty: {', '.join(missing[:5])}")
    if unlisted:
        said.append(f"{len(unlisted)} images predicted here are not in {Path(sample).name}, so not in the submission: "
                    f"{', '.join(unlisted[:5])}")
    return table(header, rows), "; ".join(said)


def format_row(image_id: str, k: int, rle: str, classes: list, fmt: dict) -> dict:
    name, label = image_id + fmt["suffix"], str(k) if fmt["class_as"] == "index" else classes[k]
    row = {fmt["rle"]: rle or fmt["empty"], fmt["id"]: f"{name}{fmt['joined']}{label}" if fmt["joined"] else name}
    if fmt["class"]:
        row[fmt["class"]] = label
    return row


def read_sample(sample: Path, classes: list, fmt: dict) -> tuple:
    """(header, rows as dicts, (image id, class index, rle column) per row) of a sample_submission.csv; ValueError
    naming the file where a column or a class cannot be told."""
    if not sample.exists():
        raise ValueError(f"{sample}: no such sample submission")
    with open(sample, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)
    rle_column = fmt["rle"] if fmt["rle"] in header else find_column(header, "rle")
    id_column = fmt["id"] if fmt["id"] in header else find_column(header, "id") or find_column(header, "joined")
    class_column = None if binary(fmt) else fmt["class"] if fmt["class"] in header else find_column(header, "class")
    if rle_column is None or id_column is None:
        raise ValueError(f"{sample}: no {'run-length' if rle_column is None else 'image id'} column among "
                         f"{', '.join(header)}")
    keys = []
    for line, row in enumerate(rows, start=2):
        name, label = row[id_column], row[class_column] if class_column else None
        if not binary(fmt) and class_column is None:
            name, _, label = name.rpartition(fmt["joined"] or "_")
        keys.append((image_stem(name, fmt["suffix"]), 1 if binary(fmt) else class_index(label, classes, sample, line),
                     rle_column))
    return header, rows, keys


def image_stem(name: str, suffix: str) -> str:
    """An id as the images' file names give it: the recorded extension, or an image file's, taken off."""
    stem, ext = os.path.splitext(name)
    return name[:-len(suffix)] if suffix and name.endswith(suffix) else stem if ext.lower() in IMAGE_SUFFIXES else name


def class_index(label: str, classes: list, sample: Path, line: int) -> int:
    if label in classes[1:]:
        return classes.index(label)
    if label.isdigit() and 0 < int(label) < len(classes):
        return int(label)
    raise ValueError(f"{sample} line {line}: class '{label}' is neither a class of this dataset "
                     f"({', '.join(classes[1:])}) nor its number")


def table(columns: list, rows: list) -> str:
    """A CSV of rows (dicts) under columns, as pandas writes it; by hand, as a package runs without pandas."""
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


@contextmanager
def staged(folder: Path | None):
    """A temporary folder beside `folder` to write masks into, its files moved into `folder` once the block ends
    well, removed if it fails: a failure leaves no half set of new masks. None: no folder (no masks asked)."""
    if folder is None:
        yield None
        return
    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(folder).name}.tmp-", dir=Path(folder).parent) as tmp:
        yield Path(tmp)
        Path(folder).mkdir(exist_ok=True)
        for path in Path(tmp).iterdir():
            os.replace(path, Path(folder) / path.name)
