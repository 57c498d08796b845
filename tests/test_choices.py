"""Cross-validated choices: a run's TTA, level and post-processing for each fold come from the other folds' images,
never from its own, not even through another fold's level; the TTA gain table."""
import json

import numpy as np
import pandas as pd
import pytest

from src.ensembling import choices, scores
from src.metrics import image_dice
from src.portable.images import write_png
from src.runs import PROVENANCE, PredictionSet, save_pred

FOLDS = np.array([0, 0, 1, 1, 2, 2])
IDS = [f"i{k}" for k in range(6)]
FOLD_OF = dict(zip(IDS, FOLDS))


def oof_scores(dice_by_fold: dict) -> pd.DataFrame:
    """infer.py's OOF scores of one TTA mode: two images per fold, each at its fold's Dice."""
    dice = [dice_by_fold[f] for f in FOLDS]
    return pd.DataFrame({"id": IDS, "fold": FOLDS, "class": "lung", "tp": 1, "fp": 0, "fn": 0, "dice": dice,
                         "iou": dice, "hd95": 0.0})


def scored_set(folder, dice_by_fold: dict, tta="none", level=None, probs: dict | None = None) -> PredictionSet:
    """A prediction set as infer.py leaves it: prediction.json, oof_scores.csv and, given probs ({fold: the
    probability of the images' 4 x 4 top-left square, the rest of the 8 x 8 map 0.5}), its OOF maps."""
    (folder / "oof").mkdir(parents=True)
    (folder / PROVENANCE).write_text(json.dumps({"level": level}))
    oof_scores(dice_by_fold).to_csv(folder / "oof_scores.csv", index=False)
    for image_id, fold in zip(IDS, FOLDS):
        if probs:
            prob = np.full((1, 8, 8), 0.5)
            prob[0, :4, :4] = probs[fold]
            save_pred(folder / "oof" / f"{image_id}.npz", (prob * 255).round().astype(np.uint8), (8, 8))
    return PredictionSet("unetpp_ds-x", "last", tta, level, folder)


def dice(predictions: PredictionSet) -> pd.Series:
    return image_dice(predictions.oof_scores()).reindex(IDS)


def best(options: dict) -> choices.Choice:
    """The choice among options ({key: PredictionSet or Choice}, the cheapest first), as choices.choose makes it."""
    options = {k: o if isinstance(o, choices.Choice) else choices.Choice(dict.fromkeys(range(3), o), o)
               for k, o in options.items()}
    return choices.best_by_fold(options, dice, FOLDS)


def test_each_fold_takes_the_tta_the_other_folds_favour_and_is_scored_at_it(tmp_path):
    none, d4 = (scored_set(tmp_path / name, dice, name) for name, dice in
                (("none", {0: 0.5, 1: 0.5, 2: 0.5}), ("d4", {0: 1.0, 1: 0.1, 2: 0.3})))
    chosen = best({"none": none, "d4": d4})
    # Fold 0 sees only folds 1 and 2, where d4 is poor; folds 1 and 2 see fold 0's 1.0 and take d4.
    assert {f: s.tta for f, s in chosen.by_fold.items()} == {0: "none", 1: "d4", 2: "d4"}
    assert image_dice(chosen.scores(IDS, FOLD_OF)).loc[IDS].tolist() == [0.5, 0.5, 0.1, 0.1, 0.3, 0.3]
    assert chosen.for_test.tta == "none"  # on all images none's 0.5 beats d4's 0.467
    flip = scored_set(tmp_path / "flip", {0: 0.5, 1: 0.5, 2: 0.5}, "flip")  # a tie keeps the cheaper mode
    assert {s.tta for s in best({"none": none, "flip": flip}).by_fold.values()} == {"none"}


def levels_of_one_mode(folder, dice_of_level: dict, probs_of_level: dict | None = None) -> choices.Choice:
    """A unetpp_ds run at one TTA mode, its level chosen for each fold on the other folds."""
    return best({level: scored_set(folder / level, dice, folder.name, level, (probs_of_level or {}).get(level))
                 for level, dice in dice_of_level.items()})


@pytest.mark.parametrize("fold0", [{"L1": 1.0, "L4": 0.0}, {"L1": 0.0, "L4": 1.0}])
def test_a_folds_tta_never_reads_its_own_images_through_another_folds_level(tmp_path, fold0):
    """At flip, folds 1 and 2 are best at L1 (0.6, above none's 0.5) and poor at L4 (0.4). Read at the levels chosen
    for folds 1 and 2, which see fold 0, fold 0's TTA would follow fold 0's own scores: flip where fold 0 favours L1,
    none where it favours L4. Read at fold 0's own level (chosen on folds 1 and 2) it is flip either way."""
    none = levels_of_one_mode(tmp_path / "none", {level: {0: 0.5, 1: 0.5, 2: 0.5} for level in ("L1", "L4")})
    flip = levels_of_one_mode(tmp_path / "flip", {"L1": {0: fold0["L1"], 1: 0.6, 2: 0.6},
                                                  "L4": {0: fold0["L4"], 1: 0.4, 2: 0.4}})
    assert flip.by_fold[0].level == "L1"
    chosen = best({"none": none, "flip": flip})
    assert chosen.by_fold[0].tta == "flip"
    assert image_dice(chosen.scores(IDS, FOLD_OF)).loc[["i0", "i1"]].tolist() == [fold0["L1"]] * 2  # flip, L1


@pytest.mark.parametrize("fold0", [{"L1": 1.0, "L4": 0.0}, {"L1": 0.0, "L4": 1.0}])
def test_a_folds_post_processing_never_reads_its_own_images_through_another_folds_level(tmp_path, fold0):
    """Truth: each image's 4 x 4 top-left square. At L1 the square is 0.8 and the rest 0.5, so every threshold
    above 0.5 is perfect; at L4 the square is 0.45, below the rest, and tuning falls to threshold 0.3. Folds 1 and 2
    are best at L1 (fold 0's level); read at the levels chosen for folds 1 and 2, which fold 0's scores decide, fold
    0's threshold would follow fold 0's own scores."""
    masks = tmp_path / "masks"
    masks.mkdir()
    for image_id in IDS:
        mask = np.zeros((8, 8), np.uint8)
        mask[:4, :4] = 255
        write_png(masks / f"{image_id}.png", mask)
    run = levels_of_one_mode(tmp_path / "none", {"L1": {0: fold0["L1"], 1: 0.6, 2: 0.6},
                                                 "L4": {0: fold0["L4"], 1: 0.4, 2: 0.4}},
                             {"L1": {0: 0.8, 1: 0.8, 2: 0.8}, "L4": {0: 0.45, 1: 0.45, 2: 0.45}})
    tuned = choices.tune_postprocessing({"unetpp_ds-x": run}, {"unetpp_ds-x": 1.0}, masks, "binary", IDS, FOLDS, 512)
    assert run.by_fold[0].level == "L1" and tuned.by_fold[0]["threshold"] > 0.5


def test_tta_gain_compares_every_mode_with_none_on_the_same_images():
    dice_of = {"none": image_dice(oof_scores({0: 0.5, 1: 0.5, 2: 0.5})),
               "d4": image_dice(oof_scores({0: 1.0, 1: 0.1, 2: 0.3})).drop("i0")}
    gain = scores.tta_gain(dice_of, IDS)
    assert gain["images"] == 5 and gain["modes"]["d4"]["gain"] == pytest.approx((1.0 + 0.2 + 0.6) / 5 - 0.5)
    assert scores.tta_gain({"d4": dice_of["d4"]}, IDS)["modes"]["d4"]["gain"] is None


def test_the_test_masks_weigh_each_run_as_the_oof_mean_does_whatever_its_number_of_folds(tmp_path):
    """A 3-fold run and a 1-fold run of weights 1 and 2: the first's three fold files weigh 1/3 each, the second's one
    file 2, as the OOF mean weighs the runs 1:2 (before, each fold file weighed its run's weight: 3:2)."""
    from src.ensembling import inputs
    runs = {}
    for run, folds in (("unet-x", (0, 1, 2)), ("unetpp-x", (0,))):
        folder = tmp_path / run / "tta-none"
        for fold in folds:
            save_pred(folder / "test" / f"fold{fold}" / "t1.npz", np.zeros((1, 4, 4), np.uint8), (4, 4))
        predictions = PredictionSet(run, "selected", "none", None, folder)
        runs[run] = choices.Choice({0: predictions}, predictions)
    selection = inputs.Selection("demo", None, "selected", "best", str(tmp_path), None, {})
    files = choices.test_inputs(runs, {"unet-x": 1.0, "unetpp-x": 2.0}, selection, {0, 1, 2}, ["t1"])
    assert sorted(w for _, w in files["t1"]) == pytest.approx([1 / 3] * 3 + [2.0])
