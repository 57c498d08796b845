"""submission.csv and the masks beside it, written the same way by ensemble.py and by an exported package: one row per
image (binary: id, rle) or per image and foreground class (multiclass: id, class, rle), each mask as <id>.png (0/255
for binary, the class index for multiclass)."""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .images import write_png
from .rle import rle_encode


def submission_rows(image_id: str, final: np.ndarray, task: str, classes: list) -> list:
    """The rows of submission.csv for one image's class map."""
    if task == "binary":
        return [{"id": image_id, "rle": rle_encode(final)}]
    return [{"id": image_id, "class": c, "rle": rle_encode(final == k)} for k, c in enumerate(classes) if k]


def mask_rows(image_id: str, final: np.ndarray, task: str, classes: list, masks: Path | None) -> list:
    """One image's rows of submission.csv, its mask written to masks/<id>.png first where masks is a folder."""
    if masks is not None:
        write_png(masks / f"{image_id}.png", final * 255 if task == "binary" else final)
    return submission_rows(image_id, final, task, classes)


def csv_text(rows: list, task: str) -> str:
    """submission.csv: a header, then one line per row, as pandas writes it (no field needs quotes); by hand, as a
    package runs without pandas."""
    columns = ["id", "rle"] if task == "binary" else ["id", "class", "rle"]
    return "\n".join([",".join(columns), *(",".join(str(row[c]) for c in columns) for row in rows)]) + "\n"


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
