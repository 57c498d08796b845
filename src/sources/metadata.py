"""A metadata CSV for any source: patient groups for the grouped splitters, other columns carried into index.csv.

Every labelled image must have a row (a missing one is a problem: its patient, and so its fold, would be a guess);
the slices of a volume take the row of their case (two hemispheres or two visits of one patient: one group);
test images may lack one, their columns then stay empty. Rows that match no image are counted, not refused.
"""
from pathlib import Path

import pandas as pd

from src.portable.problems import Problem
from src.sources.sample import Source

# Columns index.csv computes itself; a metadata column of the same name is not carried over.
OWN_COLUMNS = {"id", "split", "height", "width", "group", "foreground", "dominant_class", "file", "official_fold", "case",
               "slice"}


def attach_metadata(source: Source, csv: Path, id_column: str = "id", group_column: str | None = None) -> list:
    """Set each sample's group and extra columns from csv; problems go to source.problems. Returns notes to print."""
    if not csv.exists():
        source.problems.append(f"{csv}: metadata file does not exist")
        return []
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = [f"{csv}: no column '{column}' (columns: {', '.join(table.columns)}); choose one with {flag}"
               for column, flag in ((id_column, "--id-column"), (group_column, "--group-column"))
               if column and column not in table]
    if missing:
        source.problems += missing
        return []
    repeated = table[id_column][table[id_column].duplicated(keep=False)]
    source.problems += [Problem(f"{csv.name} line {i + 2}", "id appears more than once", f"'{v}'")
                        for i, v in repeated.items()]
    keys = {}
    for i, value in enumerate(table[id_column]):  # an id, a file name or a path: matched by id, name, then stem
        for key in (value, Path(value).name, Path(value).stem):
            keys.setdefault(key, i)
    carried = [c for c in table.columns if c not in OWN_COLUMNS and c not in (id_column, group_column)]
    matched = set()
    for sample in source.samples:
        i = keys.get(sample.extra.get("case", sample.id))  # a volume's slices take their case's row
        if i is None:
            if sample.split == "train":
                source.problems.append(Problem(sample.id, f"labelled image has no row in {csv.name} (column "
                                                          f"'{id_column}')", fix="add its row"))
            continue
        matched.add(i)
        row = table.iloc[i]
        if group_column:
            sample.group = row[group_column]
        sample.extra.update({c: row[c] for c in carried})
    notes = [f"metadata: {len(matched)} of {len(source.samples)} images matched in {csv.name}"
             + (f", grouped by '{group_column}' ({table.iloc[sorted(matched)][group_column].nunique()} groups)"
                if group_column else "")
             + (f"; carried into index.csv: {', '.join(carried)}" if carried else "")]
    skipped = [c for c in table.columns if c in OWN_COLUMNS and c != id_column]
    if skipped:
        notes.append(f"metadata: columns {', '.join(skipped)} are computed by prepare; the CSV's are not used")
    if len(table) > len(matched):
        notes.append(f"metadata: {len(table) - len(matched)} rows of {csv.name} match no image")
    return notes
