"""Cross-validated choices: a run's TTA for each fold comes from the other folds' images; the TTA gain table."""
import numpy as np
import pandas as pd
import pytest

from src import tuning

FOLDS = np.array([0, 0, 1, 1, 2, 2])
IDS = [f"i{k}" for k in range(6)]


def oof_scores(dice_by_fold: dict) -> pd.DataFrame:
    """infer.py's OOF scores of one TTA mode: two images per fold, each at its fold's Dice."""
    dice = [dice_by_fold[f] for f in FOLDS]
    return pd.DataFrame({"id": IDS, "fold": FOLDS, "class": "lung", "tp": 1, "fp": 0, "fn": 0, "dice": dice,
                         "iou": dice, "hd95": 0.0})


def test_each_fold_takes_the_tta_the_other_folds_favour_and_is_scored_at_it():
    none, d4 = oof_scores({0: 0.5, 1: 0.5, 2: 0.5}), oof_scores({0: 1.0, 1: 0.1, 2: 0.3})
    by_fold, chosen = tuning.choose_by_fold({"none": none, "d4": d4}, IDS, FOLDS)
    # Fold 0 sees only folds 1 and 2, where d4 is poor; folds 1 and 2 see fold 0's 1.0 and take d4.
    assert by_fold == {0: "none", 1: "d4", 2: "d4"}
    assert tuning.image_dice(chosen).loc[IDS].tolist() == [0.5, 0.5, 0.1, 0.1, 0.3, 0.3]
    flip = oof_scores({0: 0.5, 1: 0.5, 2: 0.5})  # a tie keeps the cheaper mode
    assert set(tuning.choose_by_fold({"none": none, "flip": flip}, IDS, FOLDS)[0].values()) == {"none"}


def test_tta_gain_compares_every_mode_with_none_on_the_same_images():
    dice_of = {"none": tuning.image_dice(oof_scores({0: 0.5, 1: 0.5, 2: 0.5})),
               "d4": tuning.image_dice(oof_scores({0: 1.0, 1: 0.1, 2: 0.3})).drop("i0")}
    gain = tuning.tta_gain(dice_of, IDS)
    assert gain["images"] == 5 and gain["modes"]["d4"]["gain"] == pytest.approx((1.0 + 0.2 + 0.6) / 5 - 0.5)
    assert tuning.tta_gain({"d4": dice_of["d4"]}, IDS)["modes"]["d4"]["gain"] is None
