"""Kaggle-style masks: a folder of images and a CSV of run-length encodings (SIIM-ACR, Severstal, Airbus, HuBMAP...).

One or several rows per image (merged; rows of two classes on the same pixels refused, or kept as bits with
--task multilabel), an optional class column for multiclass or the class joined to the id (`Image_Label`:
'<image>_<class>'), '' or -1 for an empty mask. Every bad row is reported with its CSV line number.
How the labels came is recorded as the dataset's submission format (src/portable/submission.py).
"""
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from src.masks import overlap_error, paint_class
from src.portable.images import read_image
from src.portable.rle import rle_decode, rle_runs
from src.portable.submission import find_column
from src.sources.folder import test_samples
from src.portable.problems import Problem
from src.sources.sample import Sample, Source, duplicate_id, image_files, unsafe_id

def class_indices(values: pd.Series, classes: list | None) -> tuple:
    """Class column -> (index per row, class names with background first). Whole numbers are class ids as they are
    (Severstal's ClassId 1-4); names map to their position in --classes, else to 1..K in sorted order.
    Raises ValueError for names that --classes does not list."""
    if values.str.fullmatch(r"\d+").all():
        ids = values.astype(int).to_numpy()
        return ids, classes or ["background", *[f"class_{k}" for k in range(1, ids.max() + 1)]]
    classes = classes or ["background", *sorted(set(values))]
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise ValueError(f"class names {unknown[:5]} are not in --classes {','.join(classes)}")
    return values.map({name: i for i, name in enumerate(classes)}).to_numpy(), classes


def decode_rows(rows: list, shape: tuple, csv_name: str, order: str, relative: bool, classes: list,
                multilabel: bool = False) -> np.ndarray:
    """Merge the rows of one image (their union for one class); all bad rows in one error. Multilabel: each class
    its bit (src/portable/labels.py); otherwise rows of different classes that cover the same pixels are refused
    (masks.overlap_error), never one overwriting the other."""
    mask, errors, overlap = np.zeros(shape, np.uint8), [], None
    for line, image_id, rle, class_index in rows:
        try:
            decoded = rle_decode(rle, shape, order, relative) > 0
        except ValueError as error:
            errors.append(f"{csv_name} line {line}: '{image_id}' ({shape[1]}x{shape[0]}): {error}")
            continue
        clash = paint_class(mask, decoded, class_index, multilabel)
        if clash and overlap is None:
            overlap = overlap_error(image_id, clash[0], classes[clash[1]], classes[class_index])
    if errors:
        raise ValueError("\n  ".join(errors))
    if overlap is not None:
        raise overlap
    return mask


def order_hint(rows_of: dict, order: str, relative: bool, images: int = 20) -> str:
    """'' or a line naming the other --rle-order where the first images' masks decode into far fewer pieces in it: a
    CSV of the other pixel order, read in this one, shreds each object into strips (4,060 pieces instead of 893)."""
    other, pieces = "row" if order == "column" else "column", {}
    for each in (order, other):
        pieces[each] = 0
        for path, rows in list(rows_of.items())[:images]:
            shape, mask = read_image(path).shape[:2], None
            for _, _, rle, _ in rows:
                try:
                    decoded = rle_decode(rle, shape, each, relative)
                except ValueError:  # reported with its line when the masks are decoded
                    continue
                mask = decoded if mask is None else mask | decoded
            pieces[each] += cv2.connectedComponents(mask, connectivity=8)[0] - 1 if mask is not None else 0
    if pieces[order] >= 10 and pieces[other] * 2 <= pieces[order]:
        return (f"rle: the first {min(images, len(rows_of))} images' masks decode into {pieces[order]} pieces in "
                f"{order} order and {pieces[other]} in {other} order: if the CSV lists pixels {other} by {other}, "
                f"pass --rle-order {other}")
    return ""


def rle_csv(images: Path, csv: Path, id_column: str | None = None, rle_column: str | None = None,
            class_column: str | None = None, classes: list | None = None, order: str = "column",
            relative: bool = False, allow_unmasked: bool = False, absent_empty: bool = False,
            test: Path | None = None, channels: int = 0, multilabel: bool = False) -> Source:
    """multilabel: the class column's classes kept apart, each a bit of the mask, where they overlap too."""
    problems = [f"{p}: does not exist" for p in (images, csv, test) if p is not None and not p.exists()]
    if problems:
        return Source("binary", classes or [], channels, [], problems)
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    columns = {kind: find_column(table.columns, kind, given)
               for kind, given in (("id", id_column), ("rle", rle_column), ("class", class_column))}
    joined = find_column(table.columns, "joined") if columns["id"] is None and not class_column else None
    if joined:  # '<image>_<class>' in one column
        image, _, label = table[joined].str.rpartition("_").T.to_numpy()
        table = table.assign(**{" image": image, " class": label})
        columns.update(id=" image", **{"class": " class"})
        problems += [Problem(f"{csv.name} line {row + 2}", f"'{joined}' is not '<image>_<class>'", f"'{value}'")
                     for row, value in enumerate(table[joined]) if not image[row]]
    for kind, flag in (("id", "--id-column"), ("rle", "--rle-column")):
        if columns[kind] is None:
            problems.append(f"{csv}: no {kind} column found (columns: {', '.join(table.columns)}); name it with {flag}")
    if class_column and columns["class"] is None:
        problems.append(f"{csv}: no column '{class_column}' (columns: {', '.join(table.columns)})")
    if problems:
        return Source("binary", classes or [], channels, [], problems)
    if multilabel and not columns["class"]:
        return Source("multilabel", classes or [], channels, [], [f"{csv}: --task multilabel needs a class column "
                                                                  f"(columns: {', '.join(table.columns)})"])
    task = ("multilabel" if multilabel else "multiclass") if columns["class"] else "binary"
    if task != "binary":
        try:
            indices, classes = class_indices(table[columns["class"]].str.strip(), classes)
        except ValueError as error:
            return Source(task, classes, channels, [], [f"{csv}: {error}"])
    else:
        indices, classes = np.ones(len(table), int), classes or ["background", "foreground"]
    files = {}
    for path in image_files(images):
        files.setdefault(path.name, path)
        files.setdefault(path.stem, path)
    rows_of = defaultdict(list)
    for row, (image_id, rle, class_index) in enumerate(zip(table[columns["id"]], table[columns["rle"]], indices)):
        line = row + 2  # line 1 is the header
        path = files.get(image_id.strip())
        if unsafe_id(image_id.strip()):
            problems.append(Problem(f"{csv.name} line {line}", "image id is not a plain file name", f"'{image_id}'"))
        elif path is None:
            problems.append(Problem(f"{csv.name} line {line}", f"image has no file in {images}", f"'{image_id}'"))
        else:
            try:
                rle_runs(rle, np.iinfo(np.int64).max, relative)  # syntax now; runs past the image once it is read
                rows_of[path].append((line, image_id, rle, class_index))
            except ValueError as error:
                problems.append(Problem(f"{csv.name} line {line} ('{image_id}')", str(error)))
    samples, seen = [], {}
    for path in image_files(images):
        if path.stem in seen:
            problems.append(duplicate_id(path, seen[path.stem]))
            continue
        seen[path.stem] = path
        if path in rows_of or absent_empty:
            samples.append(Sample(path.stem, lambda p=path, r=rows_of.get(path, []): (
                (image := read_image(p)), decode_rows(r, image.shape[:2], csv.name, order, relative, classes,
                                                      multilabel)), file=path))
        elif allow_unmasked:
            samples.append(Sample(path.stem, lambda p=path: (read_image(p), None), split="test", file=path))
        else:
            problems.append(Problem(str(path), f"no row in {csv.name}",
                                    fix="--absent-empty: an empty mask; --allow-unmasked: a test image"))
    if test is not None:
        samples += test_samples(test, seen, problems)
    hint = order_hint(rows_of, order, relative) if not problems else ""
    if hint:
        print(hint)
    return Source(task, classes, channels, samples, problems,
                  submission=labels_format(table, columns, joined, order, relative, rows_of))


def labels_format(table: pd.DataFrame, columns: dict, joined: str | None, order: str, relative: bool,
                  rows_of: dict) -> dict:
    """How the train CSV gave the labels, for the submission to give them back the same way: its columns (the
    class by number where the CSV numbers them), ids with the extension where the CSV's carry it, the empty token."""
    kinds = {joined or columns["id"], columns["rle"], *([] if joined else [columns["class"]])}
    named = [(path, rows[0][1].strip()) for path, rows in rows_of.items()]
    labels = table[columns["class"]].str.strip() if columns["class"] else pd.Series(dtype=str)
    return {"columns": [c for c in table.columns if c in kinds], "id": joined or columns["id"], "rle": columns["rle"],
            "class": None if joined else columns["class"], "joined": "_" if joined else None,
            "class_as": "index" if len(labels) and labels.str.fullmatch(r"\d+").all() else "name",
            "suffix": next((path.suffix for path, name in named if name == path.name), ""),
            "order": order, "relative": relative,
            "empty": "-1" if table[columns["rle"]].str.strip().eq("-1").any() else ""}
