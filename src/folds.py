"""K-fold split files, folds/<name>.csv, written with scikit-learn splitters (the command is src/split.py)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from src.canonical import load_index, load_meta
from src.portable.problems import Problem
from src.problems import grouped

STRATEGIES = ["auto", "kfold", "stratified", "group", "official", "tissue"]
NO_GROUP = "<no group>:"  # an image without a group label is its own group, NO_GROUP + its id; no real label may start so
INNER_PARTS = 8  # --select-on inner validates on one of 8 parts (12.5%) of the training folds


def group_labels(groups, ids) -> pd.Series:
    """Group labels with each blank one replaced by the image's own group, NO_GROUP + its id (or position): in the
    split, the inner split and the statistics alike."""
    groups = pd.Series(groups, dtype=object).fillna("").astype(str).reset_index(drop=True)
    own = NO_GROUP + pd.Series(ids, dtype=object).astype(str).reset_index(drop=True)
    return groups.where(groups != "", own)


def strata(train: pd.DataFrame, task: str, k: int, bins: int = 5) -> np.ndarray:
    """Binary: quantile bins of the mask's foreground fraction (at least k images each, so that every bin can be
    split k ways). Multiclass: the dominant foreground class. Multilabel: the set of classes present (the label
    powerset, so that each combination, the overlaps included, spreads over the folds), combinations of fewer than k
    images pooled into one stratum."""
    if task == "multiclass":
        return train["dominant_class"].to_numpy()
    if task == "multilabel":
        combination = pd.to_numeric(train["labels"]).astype(int)
        rare = combination.map(combination.value_counts()) < k
        return combination.where(~rare, -1).to_numpy()
    ranks = train["foreground"].rank(method="first")
    return pd.qcut(ranks, q=max(1, min(bins, len(train) // k)), labels=False).to_numpy()


def resolve_strategy(strategy: str, train: pd.DataFrame, meta: dict) -> str:
    if strategy != "auto":
        return strategy
    if meta.get("official_folds") and "official_fold" in train:
        return "official"
    if train["group"].astype(bool).any() and group_labels(train["group"], train["id"]).nunique() < len(train):
        return "group"
    return "stratified"


def make_folds(index: pd.DataFrame, meta: dict, k: int = 5, strategy: str = "auto", seed: int = 42) -> pd.DataFrame:
    """One row per training image: id, fold (0..k-1), and the group/stratum the split used."""
    train = index[index["split"] == "train"].reset_index(drop=True)
    reserved = train["group"].astype(str).str.startswith(NO_GROUP)
    if reserved.any():
        raise ValueError(f"group label '{train['group'][reserved].iloc[0]}' starts with '{NO_GROUP}', which names "
                         f"images without a group; rename it in the group column")
    strategy = resolve_strategy(strategy, train, meta)
    folds = pd.DataFrame({"id": train["id"]})
    if strategy == "official":
        if "official_fold" not in train:
            raise ValueError(f"dataset '{meta['name']}' has no official folds; use --strategy auto or stratified")
        official = sorted(train["official_fold"].unique())
        folds["fold"] = train["official_fold"].map({f: i for i, f in enumerate(official)})
        folds["official_fold"] = train["official_fold"]
        return folds
    if k < 2 or k > len(train):
        raise ValueError(f"k={k} folds impossible for {len(train)} training images")
    # sklearn imported where a split is drawn: train.py and infer.py read fold files and need not pay its ~1.4 s
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold
    if strategy == "kfold":
        splitter, y, groups = KFold(k, shuffle=True, random_state=seed), None, None
    elif strategy == "stratified":
        y, groups = strata(train, meta["task"], k), None
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    elif strategy == "tissue":
        if "tissue" not in train:
            raise ValueError(f"dataset '{meta['name']}' has no tissue column; use --strategy stratified")
        y, groups = train["tissue"].to_numpy(), None
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    elif strategy == "group":
        y, groups = strata(train, meta["task"], k), group_labels(train["group"], train["id"]).to_numpy()
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    else:
        raise ValueError(f"unknown fold strategy '{strategy}'; choose one of {STRATEGIES}")
    fold = np.full(len(train), -1)
    for i, (_, valid) in enumerate(splitter.split(train, y, groups)):
        fold[valid] = i
    folds["fold"] = fold
    if groups is not None:
        folds["group"] = groups
    if y is not None:
        folds["stratum"] = y
    return folds


def holdout_folds(index: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """One hold-out split as the UNet++ reference (4uiiurz1/pytorch-nested-unet) makes it: fold 0 is the second part
    of sklearn's train_test_split(ids, test_size=fraction, random_state=seed), fold 1 the first, each in the order it
    returns (the reference scores its hold-out in that order, in batches of 16). The ids are sorted first: the
    reference splits them in the order of an unsorted glob, which no other file system need repeat."""
    train = index[index["split"] == "train"]
    if not 0 < fraction < 1:
        raise ValueError(f"--holdout {fraction}: give the held-out fraction, between 0 and 1 (0.2 for 80/20)")
    if (train["group"].astype(str) != "").any():
        raise ValueError("--holdout splits images one by one, but this dataset has group labels that keep images "
                         "together; use --strategy group")
    from sklearn.model_selection import train_test_split
    rest, held = train_test_split(sorted(train["id"]), test_size=fraction, random_state=seed)
    return pd.DataFrame({"id": held + rest, "fold": [0] * len(held) + [1] * len(rest)})


def write_folds(dataset_dir: Path, folds_dir: Path, k: int, strategy: str, seed: int, overwrite: bool = False,
                runs_dir: Path = Path("runs"), holdout: float | None = None) -> Path:
    """Raises ValueError for a split that cannot be made, FileExistsError for a fold file that exists. A split that
    replaces another is said, with the run folders under runs_dir trained on the old one (now refused). holdout: one
    hold-out split of that fraction (holdout_folds) instead of k folds by strategy."""
    dataset = Path(dataset_dir).name
    path = Path(folds_dir) / f"{dataset}.csv"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass --overwrite to replace it (runs trained on it then refuse to "
                              f"resume on the new split)")
    index = load_index(dataset_dir)
    if holdout is None:
        folds = make_folds(index, load_meta(dataset_dir), k, strategy, seed)
    else:
        folds = holdout_folds(index, holdout, seed)
    old = fingerprint(folds_dir, dataset)["sha256"] if path.exists() else None
    old_k = pd.read_csv(path)["fold"].nunique() if old else None
    path.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(path, index=False)
    if old and old != fingerprint(folds_dir, dataset)["sha256"]:
        stranded = runs_on_split(runs_dir, dataset, old)
        print(f"warning: {path} now holds another split ({old_k} folds before, {folds['fold'].nunique()} now): "
              f"{len(stranded)} run folder(s) under {Path(runs_dir) / dataset} were trained on the old one, and "
              f"infer.py, ensemble.py and --resume now refuse them" + ("; retrain them, or restore the old file "
                                                                      "(git checkout)" if stranded else ""))
    return path


def runs_on_split(runs_dir: Path, dataset: str, sha256: str) -> list:
    """Run folders (runs_dir/<dataset>/<run>/fold<k>) whose config.json records a fold file of this content."""
    configs = sorted((Path(runs_dir) / dataset).glob("*/fold*/config.json"))
    return [c.parent for c in configs if (json.loads(c.read_text()).get("folds") or {}).get("sha256") == sha256]


def kept_folds_problem(path: Path, train_ids: set) -> str:
    """Why an existing fold file cannot serve these labelled images ('' when it lists exactly them)."""
    listed = set(pd.read_csv(path, dtype={"id": str}, keep_default_na=False)["id"])
    if listed == train_ids:
        return ""
    return (f"{path}: exists but lists other images ({len(listed - train_ids)} of its ids are not labelled images "
            f"here, {len(train_ids - listed)} labelled images are not in it); pass --overwrite to write a new split "
            f"(runs trained on the old one then refuse to resume), or choose another --name")


def fingerprint(folds_dir: Path, dataset: str) -> dict:
    """Which fold file a run was trained on, and a hash of its content: later stages refuse a changed split."""
    path = Path(folds_dir) / f"{dataset}.csv"
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


class SplitChanged(ValueError):
    """The fold file that a run was trained on is gone or holds another split now."""


def read_split(recorded: dict, made: str, index: pd.DataFrame) -> pd.DataFrame:
    """The folds of the file a run recorded ({"file", "sha256"} from train.py), refused if it changed since `made`
    or does not describe the dataset's index (FoldFileError, what a hand edit broke comes first)."""
    path = Path(recorded["file"])
    if not path.exists():
        raise SplitChanged(f"{path} not found, but {made} on it; restore the file or retrain the run")
    folds = load_folds(path.parent, path.stem, index)
    if hashlib.sha256(path.read_bytes()).hexdigest() != recorded["sha256"]:
        raise SplitChanged(f"{path} changed since {made} (re-prepared?); retrain the run or restore the file")
    return folds


class FoldFileError(ValueError):
    """A fold file that does not describe the dataset's labelled images: every problem, grouped, with its fix."""


def load_folds(folds_dir: Path, dataset: str, index: pd.DataFrame | None = None) -> pd.DataFrame:
    """folds/<dataset>.csv, its folds as integers; checked against the dataset's index when given (FoldFileError)."""
    path = Path(folds_dir) / f"{dataset}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m src.prepare ...` or `python -m src.split {dataset}`")
    folds = pd.read_csv(path, dtype={"id": str, "group": str, "fold": str}, keep_default_na=False)
    problems = fold_file_problems(folds, index, path, dataset)
    if problems:
        raise FoldFileError(f"{path}: {len(problems)} problem(s), nothing was done:\n  " + "\n  ".join(grouped(problems)))
    return folds.assign(fold=folds["fold"].astype(int))


def fold_file_problems(folds: pd.DataFrame, index: pd.DataFrame | None, path: Path, dataset: str) -> list:
    """A hand-edited fold file checked as prepare checks data: ids the dataset does not label, labelled images it
    lacks, ids listed twice and folds that are not whole numbers (every check but the first two without an index)."""
    missing = [c for c in ("id", "fold") if c not in folds]
    if missing:
        return [Problem(str(path), f"has no {' or '.join(missing)} column",
                        fix=f"write a new split: python -m src.split {dataset} --overwrite")]
    edit = "edit these rows"
    resplit = f"python -m src.split {dataset} --overwrite writes a new split (runs trained on the old one are then refused)"
    line = {i: f"line {i + 2}" for i in folds.index}  # the header is line 1
    problems = [Problem(line[i], "fold is not a whole number", repr(f), f"{edit}, or {resplit}")
                for i, f in folds["fold"].items() if not f.strip().lstrip("-").isdigit()]
    problems += [Problem(line[i], "id listed again", image_id, f"{edit}: one row per image")
                 for i, image_id in folds.loc[folds["id"].duplicated(), "id"].items()]
    if index is not None:
        labelled = index.loc[index["split"] == "train", "id"]
        problems += [Problem(line[i], "id not a labelled image of the dataset (index.csv)", image_id,
                             f"{edit}, or re-run prepare if the dataset changed")
                     for i, image_id in folds.loc[~folds["id"].isin(set(labelled)), "id"].items()]
        problems += [Problem(image_id, "labelled image missing from the fold file", fix=resplit)
                     for image_id in labelled[~labelled.isin(set(folds["id"]))]]
    return problems


def fold_rows(index: pd.DataFrame, folds: pd.DataFrame, fold: int) -> tuple:
    """Positions in the index (and cache) of the training and validation images of one fold."""
    if fold not in set(folds["fold"]):
        raise ValueError(f"fold {fold} is not in the fold file (it has folds {sorted(set(folds['fold']))})")
    position = {image_id: i for i, image_id in enumerate(index["id"])}
    valid = folds["fold"] == fold
    return (np.array([position[i] for i in folds.loc[~valid, "id"]]),
            np.array([position[i] for i in folds.loc[valid, "id"]]))


def inner_split(folds: pd.DataFrame, fold: int, seed: int) -> list:
    """Ids of the inner validation images of `fold` (--select-on inner): about 1/INNER_PARTS of the other folds'
    images, drawn by the outer split's splitter, grouped by its group column and stratified by its stratum column
    where the fold file has them; never an image of `fold` itself."""
    train = folds[folds["fold"] != fold].reset_index(drop=True)
    y = train["stratum"].to_numpy() if "stratum" in train else np.zeros(len(train), int)
    groups = group_labels(train["group"], train["id"]).to_numpy() if "group" in train else None
    units = len(set(groups)) if groups is not None else len(train)
    parts = min(INNER_PARTS, units, pd.Series(y).value_counts().max())  # sklearn: a stratum must reach every part
    if parts < 2:
        raise ValueError(f"fold {fold}: {units} training group(s) cannot spare an inner validation split")
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    splitter = (StratifiedGroupKFold if groups is not None else StratifiedKFold)(parts, shuffle=True, random_state=seed)
    _, inner = next(splitter.split(train, y, groups))
    return sorted(train["id"].iloc[inner])
