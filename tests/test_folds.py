"""Fold files: disjoint, complete, balanced, groups kept together, deterministic."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ensemble
import infer
import train
from conftest import TINY, infer_args, paths
from src.config import Config
from src.folds import FoldFileError, load_folds, make_folds
from src.split import main
from src.runs import file_sha256
from src.study import fold_numbers
from test_ensemble import scored_predictions


def index_frame(n=60, groups=True, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"img{i:03d}" for i in range(n)], "split": "train",
                         "group": [f"p{i // 3}" for i in range(n)] if groups else "",
                         "foreground": rng.uniform(0.05, 0.5, n), "dominant_class": rng.integers(1, 4, n),
                         "tissue": rng.choice(["a", "b", "c"], n)})


META = {"name": "t", "task": "binary", "official_folds": False}


@pytest.mark.parametrize("strategy", ["kfold", "stratified", "group", "tissue"])
def test_folds_are_disjoint_complete_and_deterministic(strategy):
    index = index_frame()
    folds = make_folds(index, META, k=5, strategy=strategy, seed=7)
    assert sorted(folds["id"]) == sorted(index["id"])
    assert folds["id"].is_unique
    assert set(folds["fold"]) == set(range(5))
    assert folds.equals(make_folds(index, META, k=5, strategy=strategy, seed=7))
    assert not folds.equals(make_folds(index, META, k=5, strategy=strategy, seed=8))


def test_group_never_split_and_auto_picks_it():
    folds = make_folds(index_frame(), META, k=5, strategy="auto", seed=1)
    assert "group" in folds
    assert (folds.groupby("group")["fold"].nunique() == 1).all()


def test_stratified_balances_area_bins():
    folds = make_folds(index_frame(100, groups=False), META, k=5, strategy="stratified", seed=1)
    per_fold = pd.crosstab(folds["fold"], folds["stratum"])
    assert (per_fold.max() - per_fold.min()).max() <= 1


def test_multiclass_strata_are_dominant_classes():
    index = index_frame(groups=False)
    folds = make_folds(index, {**META, "task": "multiclass"}, k=3, strategy="stratified")
    assert (folds["stratum"].to_numpy() == index["dominant_class"].to_numpy()).all()


def test_official_folds_are_kept():
    index = index_frame(groups=False).assign(official_fold=lambda d: 1 + np.arange(len(d)) % 3)
    folds = make_folds(index, {**META, "official_folds": True}, strategy="auto")
    assert (folds["fold"] + 1 == index["official_fold"]).all()


def test_test_images_are_not_in_folds():
    index = index_frame(groups=False)
    index.loc[:9, "split"] = "test"
    assert len(make_folds(index, META, k=5, strategy="kfold")) == 50


@pytest.mark.parametrize("args, message", [
    (["demo", "--strategy", "tissue"], "folds: dataset 'demo' has no tissue column; use --strategy stratified"),
    (["demo", "--strategy", "official"], "folds: dataset 'demo' has no official folds; use --strategy auto"),
    (["nowhere"], r"folds: .*nowhere.index.csv not found: prepare the dataset first"),
])
def test_command_errors_are_one_line(demo_dir, tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        main([*args, "--data-dir", str(demo_dir / "data"), "--folds-dir", str(tmp_path)])


def test_an_existing_fold_file_is_replaced_only_with_overwrite(demo_dir, tmp_path):
    where = ["--data-dir", str(demo_dir / "data"), "--folds-dir", str(tmp_path), "--k", "3"]
    main(["demo", *where])
    before = (tmp_path / "demo.csv").read_bytes()
    with pytest.raises(SystemExit, match="demo.csv exists: pass --overwrite to replace it"):
        main(["demo", *where, "--seed", "1"])
    main(["demo", *where, "--seed", "1", "--overwrite"])
    assert (tmp_path / "demo.csv").read_bytes() != before


def test_images_without_a_group_are_each_their_own_group_whose_name_no_label_can_take():
    index = index_frame(30)
    index.loc[10:19, "group"] = ""  # ten images without a patient label
    index.loc[0:2, "group"] = "img012"  # a real label that is also the id of an unlabelled image
    folds = make_folds(index, META, k=5, strategy="group", seed=1).set_index("id")
    blank = folds.loc[[f"img{i:03d}" for i in range(10, 20)], "group"]
    assert list(blank) == [f"<no group>:img{i:03d}" for i in range(10, 20)]
    assert folds.loc["img012", "group"] != folds.loc["img000", "group"]
    assert folds.loc[blank.index, "fold"].nunique() > 1  # not one big patient in one fold
    with pytest.raises(ValueError, match="group label '<no group>:x' starts with '<no group>:', which names images"):
        make_folds(index.assign(group=index["group"].replace("p8", "<no group>:x")), META, k=5, strategy="group")


@pytest.mark.parametrize("strategy", ["group", "stratified", "kfold"])
def test_inner_split_keeps_groups_together_and_holds_no_scored_image(strategy):
    from src.folds import inner_split
    index = index_frame(120)
    index.loc[::7, "group"] = ""
    folds = make_folds(index, META, k=5, strategy=strategy, seed=3)
    for fold in range(5):
        inner = inner_split(folds, fold, seed=42)
        training = folds[folds["fold"] != fold]
        assert set(inner) <= set(training["id"])  # never an image of the scored fold
        assert 0.08 <= len(inner) / len(training) <= 0.18  # about one part in eight
        assert inner == inner_split(folds, fold, seed=42) != inner_split(folds, fold, seed=43)
        if "group" in folds:
            inside = training["id"].isin(inner)
            assert not set(training.loc[inside, "group"]) & set(training.loc[~inside, "group"])


def hand_edited(demo_dir: Path, folder: Path) -> Path:
    """demo's fold file with a fold 'x', a duplicated row, a deleted row and an id the dataset does not have."""
    folds = pd.read_csv(demo_dir / "folds" / "demo.csv", dtype=str, keep_default_na=False)
    folds.loc[2, "fold"] = "x"
    removed = folds.loc[5, "id"]
    folds = pd.concat([folds.drop(index=5), folds.iloc[[0]], folds.iloc[[1]].assign(id="ghost")], ignore_index=True)
    folder.mkdir(exist_ok=True)
    folds.to_csv(folder / "demo.csv", index=False)
    return removed


def expected_report(folds_file: Path, first_id: str, removed: str, n: int) -> str:
    resplit = "python -m src.split demo --overwrite writes a new split (runs trained on the old one are then refused)"
    return (f"{folds_file}: 4 problem(s), nothing was done:\n"
            f"  line 4: fold is not a whole number ('x'); edit these rows, or {resplit}\n"
            f"  line {n}: id listed again ({first_id}); edit these rows: one row per image\n"
            f"  line {n + 1}: id not a labelled image of the dataset (index.csv) (ghost); edit these rows, or re-run "
            f"prepare if the dataset changed\n"
            f"  {removed}: labelled image missing from the fold file; {resplit}")


def test_a_hand_edited_fold_file_is_refused_by_every_stage_in_one_grouped_report(trained_dir, tmp_path, capsys):
    removed = hand_edited(trained_dir, tmp_path / "folds")
    folds_file = tmp_path / "folds" / "demo.csv"
    n = len(pd.read_csv(folds_file))  # the duplicate is the last but one row: line n (the header is line 1)
    first_id = pd.read_csv(folds_file, dtype=str)["id"].iloc[0]
    report = expected_report(folds_file, first_id, removed, n)
    split = {"file": str(folds_file), "sha256": file_sha256(folds_file)}

    with pytest.raises(SystemExit) as stop:  # train.py
        train.main([*TINY, "--data-dir", str(trained_dir / "data"), "--folds-dir", str(tmp_path / "folds"),
                    "--runs-dir", str(tmp_path / "runs"), "--fold", "0"])
    assert str(stop.value) == f"train: {report}"

    run = tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold0"  # a run trained on that file (as it was)
    shutil.copytree(trained_dir / "runs" / "demo" / "unet-tu-test_resnet" / "fold0", run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "folds": split}))
    with pytest.raises(SystemExit) as stop:
        infer.main([*infer_args(trained_dir), "--runs-dir", str(tmp_path / "runs"), "--preds-dir", str(tmp_path / "p")])
    assert str(stop.value) == f"infer: {report}"

    scored_predictions(tmp_path / "preds" / "demo" / "unet-r34" / "tta-none", 0.8, split)
    with pytest.raises(SystemExit) as stop:
        ensemble.main(["--dataset", "demo", *paths(trained_dir), "--preds-dir", str(tmp_path / "preds"),
                       "--out-dir", str(tmp_path / "out")])
    assert str(stop.value) == f"ensemble: {report}"
    assert "Traceback" not in capsys.readouterr().err


def test_the_study_reads_its_fold_list_from_a_checked_file(demo_dir, tmp_path):
    hand_edited(demo_dir, tmp_path / "folds")
    cfg = Config(dataset="demo", data_dir=str(demo_dir / "data"), folds_dir=str(tmp_path / "folds"))
    with pytest.raises(FoldFileError, match="4 problem"):
        fold_numbers(cfg, "all")
    assert fold_numbers(replace(cfg, folds_dir=str(demo_dir / "folds")), "all") == [0, 1, 2]


def test_fold_numbers_are_integers_however_the_file_spells_them(tmp_path):
    pd.DataFrame({"id": ["a", "b"], "fold": ["0", "01"]}).to_csv(tmp_path / "t.csv", index=False)
    assert load_folds(tmp_path, "t")["fold"].tolist() == [0, 1]


def test_holdout_is_the_references_train_test_split_of_the_sorted_ids_and_prepare_keeps_it(multiclass_dir, demo_dir,
                                                                                             tmp_path, capsys):
    """split --holdout 0.2 --seed 41: fold 0 = what train_test_split(sorted ids, test_size=0.2, random_state=41)
    returns second, in its order (the reference's hold-out, scored in that order); prepare then keeps the file."""
    from sklearn.model_selection import train_test_split
    from src import prepare
    where = ["--data-dir", str(multiclass_dir / "data"), "--folds-dir", str(tmp_path)]
    main(["demo-multiclass", "--holdout", "0.2", "--seed", "41", *where])
    written = load_folds(tmp_path, "demo-multiclass")
    ids = pd.read_csv(multiclass_dir / "folds" / "demo-multiclass.csv", dtype={"id": str})["id"]
    rest, held = train_test_split(sorted(ids), test_size=0.2, random_state=41)
    assert list(written["id"]) == held + rest and list(written["fold"]) == [0] * len(held) + [1] * len(rest)
    before = (tmp_path / "demo-multiclass.csv").read_bytes()
    prepare.main(["demo", "--multiclass", "--count", "36", "--test-count", "4", "--size", "64", "--data-dir",
                  str(tmp_path / "again"), "--folds-dir", str(tmp_path)])
    assert "kept " + str(tmp_path / "demo-multiclass.csv") in capsys.readouterr().out
    assert (tmp_path / "demo-multiclass.csv").read_bytes() == before
    for fraction in ("0", "1.5"):
        with pytest.raises(SystemExit, match=f"folds: --holdout {float(fraction)}: give the held-out fraction"):
            main(["demo-multiclass", "--holdout", fraction, *where, "--overwrite"])
    with pytest.raises(SystemExit, match="folds: --holdout splits images one by one, but this dataset has group"):
        main(["demo", "--holdout", "0.2", "--data-dir", str(demo_dir / "data"), *where[2:]])  # patients: one fold each
