"""Volumes scored as nnU-Net scores them: each case's slice masks stacked back into its own grid, then Dice per label
in 3D and HD95 in mm with the voxel spacing (MONAI's compute_hausdorff_distance). Conventions as src/metrics.py's
for images: a label absent from both scores Dice 1 and HD95 0; absent from one, HD95 is the volume's diagonal in mm.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from src.metrics import dice_iou
from src.portable import volumes
from src.portable.labels import label_mask
from src.stats import mean_interval


def case_slices(index: pd.DataFrame, among=None) -> dict:
    """{case: its slice ids in slice order} of a volume dataset's index.csv; among (ids): only the cases whose every
    slice is among them."""
    ordered = index.sort_values(["case", "slice"])
    cases = {case: list(rows["id"]) for case, rows in ordered.groupby("case", sort=True)}
    if among is None:
        return cases
    among = set(among)
    return {case: ids for case, ids in cases.items() if among.issuperset(ids)}


def read_records(dataset_dir: Path) -> dict:
    """volumes.json: {case: shape, spacing, header, split}, as prepare recorded them."""
    return json.loads((Path(dataset_dir) / "volumes.json").read_text())


def hd95_mm(pred: np.ndarray, target: np.ndarray, spacing: tuple) -> float:
    """MONAI's 95th-percentile Hausdorff distance of two boolean volumes, in mm."""
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing))))
    import torch
    from monai.metrics import compute_hausdorff_distance  # here: 2D datasets never load MONAI's metrics
    as_onehot = [torch.from_numpy(np.stack([~m, m])[None]) for m in (pred, target)]
    with warnings.catch_warnings():  # MONAI 1.5-1.6 pass their own deprecated argument on every call (MONAI #9059)
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        return float(compute_hausdorff_distance(*as_onehot, include_background=False, percentile=95,
                                                spacing=list(spacing))[0, 0])


def case_scores(pred: np.ndarray, target: np.ndarray, classes: list, spacing: tuple, task: str = "") -> list:
    """One row per foreground label of one case's volumes: voxel counts, Dice, HD95 in mm (multilabel: each label
    its bit, labels.py)."""
    rows = []
    for c, name in enumerate(classes[1:], start=1):
        p, t = label_mask(pred, c, task), label_mask(target, c, task)
        tp = int(np.count_nonzero(p & t))
        fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp
        rows.append({"class": name, "tp": tp, "fp": fp, "fn": fn, "dice": dice_iou([tp], [fp], [fn])[0].item(),
                     "hd95_mm": hd95_mm(p, t, spacing)})
    return rows


def volume_table(mask_of, target_of, cases: dict, records: dict, axis: int, classes: list,
                 largest_of=lambda case: [], task: str = "") -> pd.DataFrame:
    """Scores of every case whose slices mask_of and target_of give (id -> class map at the slice's size): one row per
    case and foreground label. largest_of: the labels of a case whose largest 3D component alone is kept."""
    rows = []
    for case, ids in cases.items():
        shape, spacing = records[case]["shape"], records[case]["spacing"]
        pred = volumes.keep_largest(volumes.stack([mask_of(i) for i in ids], axis, shape), largest_of(case), task)
        target = volumes.stack([target_of(i) for i in ids], axis, shape)
        rows += [{"case": case, **row} for row in case_scores(pred, target, classes, spacing, task)]
    return pd.DataFrame(rows)


def largest_candidates(mask_of, target_of, cases: dict, records: dict, axis: int, classes: list,
                       task: str = "") -> pd.DataFrame:
    """What nnU-Net's 3D post-processing is chosen on: per case and foreground label, its 3D Dice as predicted
    ("plain") and with only the label's largest component kept ("largest")."""
    rows = []
    for case, ids in cases.items():
        shape = records[case]["shape"]
        pred = volumes.stack([mask_of(i) for i in ids], axis, shape)
        target = volumes.stack([target_of(i) for i in ids], axis, shape)
        for label in range(1, len(classes)):
            true = label_mask(target, label, task)
            rows.append({"case": case, "label": label, "plain": volume_dice(label_mask(pred, label, task), true),
                         "largest": volume_dice(label_mask(volumes.keep_largest(pred, [label], task), label, task),
                                                true)})
    return pd.DataFrame(rows)


def volume_dice(pred: np.ndarray, true: np.ndarray) -> float:
    tp = int(np.count_nonzero(pred & true))
    return dice_iou([tp], [int(np.count_nonzero(pred)) - tp], [int(np.count_nonzero(true)) - tp])[0].item()


def summary(table: pd.DataFrame) -> dict:
    """Mean 3D Dice and HD95 (mm) over cases, per label and over labels, each Dice with its 95% interval over cases."""
    per_case = table.groupby("case", sort=False)[["dice", "hd95_mm"]].mean()
    by_class = {name: {"dice": rows["dice"].mean(), "dice_interval": over_cases(rows["dice"]),
                       "hd95_mm": rows["hd95_mm"].mean()}
                for name, rows in table.groupby("class", sort=False)}
    return {"cases": len(per_case), "dice": per_case["dice"].mean(),
            "dice_interval": over_cases(per_case["dice"]), "hd95_mm": per_case["hd95_mm"].mean(),
            "per_class": by_class}


def over_cases(dice: pd.Series) -> dict:
    return {**mean_interval(dice.to_numpy()), "unit": "case"}
