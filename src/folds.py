"""K-fold split files, folds/<name>.csv, written with scikit-learn splitters.

Re-write alone: python -m src.folds <name> --k 5 --strategy auto --seed 42 --overwrite
"""
import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from src.canonical import load_index, load_meta

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
    split k ways). Multiclass: the dominant foreground class."""
    if task == "multiclass":
        return train["dominant_class"].to_numpy()
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


def write_folds(dataset_dir: Path, folds_dir: Path, k: int, strategy: str, seed: int, overwrite: bool = False) -> Path:
    """Raises ValueError for a split that cannot be made, FileExistsError for a fold file that exists."""
    path = Path(folds_dir) / f"{Path(dataset_dir).name}.csv"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass --overwrite to replace it (runs trained on it then refuse to "
                              f"resume on the new split)")
    folds = make_folds(load_index(dataset_dir), load_meta(dataset_dir), k, strategy, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(path, index=False)
    return path


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


def load_folds(folds_dir: Path, dataset: str) -> pd.DataFrame:
    path = Path(folds_dir) / f"{dataset}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m src.prepare ...` or `python -m src.folds {dataset}`")
    return pd.read_csv(path, dtype={"id": str, "group": str}, keep_default_na=False)


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
    splitter = (StratifiedGroupKFold if groups is not None else StratifiedKFold)(parts, shuffle=True, random_state=seed)
    _, inner = next(splitter.split(train, y, groups))
    return sorted(train["id"].iloc[inner])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="dataset under data/")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--folds-dir", type=Path, default=Path("folds"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folds/<name>.csv")
    args = parser.parse_args(argv)
    try:
        path = write_folds(args.data_dir / args.name, args.folds_dir, args.k, args.strategy, args.seed, args.overwrite)
    except (ValueError, OSError) as error:  # FileNotFoundError and FileExistsError are OSErrors
        sys.exit(f"folds: {error}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
