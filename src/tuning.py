"""Cross-validated choices on OOF predictions (a run's TTA mode and level, the post-processing of an ensemble, one
run being an ensemble of one), and their scores.

Each choice is made for each fold on the images of the other folds and applied to that fold, so no image is scored
with a setting chosen on it, not even through another fold's choice: a unetpp_ds run's level is chosen per fold, so
fold f's TTA and post-processing read the other folds' images at fold f's level (read_as), never at a level chosen
on fold f's images. The choice made on all OOF images is the one the test masks use.
"""
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.contrib.concurrent import thread_map

from src.portable import postprocess
from src.portable.images import HOST_THREADS, read_image
from src.metrics import image_scores, per_image, pooled_by_class
from src.portable.maps import mean_at
from src.predict import read_mean
from src.runs import LEVELS, TTA_MODES, PredictionSet


def read_oof_scores(sets: dict) -> dict:
    """{run: {TTA mode: the OOF scores infer.py wrote}} for every mode each run was predicted with and scored.

    sets: {run: {TTA mode: src.runs.PredictionSet}}, as the ledger finds them."""
    return {name: {mode: s.oof_scores()
                   for mode, s in sorted(modes.items(), key=lambda m: TTA_MODES.index(m[0])) if s.scored}
            for name, modes in sets.items()}


def image_dice(scores: pd.DataFrame) -> pd.Series:
    """A scores table's Dice per image, indexed by image id."""
    return per_image(scores).set_index("id")["dice"]


def scored_images(dice_of: dict, modes_of: dict, ids) -> list:
    """The ids, in order, that every run predicted at every TTA mode it may be scored with.

    dice_of: {run: {mode: image_dice()}}; modes_of: {run: the modes it chooses from}."""
    return [i for i in ids if all(i in dice_of[name][m].index for name in modes_of for m in modes_of[name])]


def choose_by_fold(sets_of: dict, image_ids: list, image_folds: np.ndarray) -> tuple:
    """One run's candidate (a TTA mode, a level) for each fold, the one of highest mean Dice on the other folds'
    images read as that fold's choices read them (read_as), and the run's OOF scores with each fold's images at its
    fold's candidate: ({fold: candidate}, scores).

    sets_of: {candidate: PredictionSet}, cheapest first (a tie keeps it); image_folds: the fold of each of image_ids."""
    @functools.cache  # a set of one level is read by several folds' choices
    def dice(predictions: PredictionSet) -> pd.Series:
        return image_dice(predictions.oof_scores()).loc[image_ids]

    by_fold = {f: pd.DataFrame({key: dice(read_as(s, f)) for key, s in sets_of.items()})[image_folds != f]
               .mean().idxmax() for f in sorted(set(image_folds.tolist()))}
    scores_of = {key: s.oof_scores() for key, s in sets_of.items()}
    chosen = pd.concat([scores_of[key][scores_of[key]["id"].isin(np.asarray(image_ids)[image_folds == f])]
                        for f, key in by_fold.items()])
    return by_fold, chosen


@dataclass(frozen=True, eq=False)
class ChosenLevels(PredictionSet):
    """A unetpp_ds run at one TTA mode, its level chosen for each fold on the other folds: each OOF image is read at
    its fold's level. Its own fields (folder, level) are the level chosen on all OOF images: the test masks'.

    levels: {level: PredictionSet}; by_fold: {fold: level}; fold_of: {image id: fold}; scores: the OOF scores so read."""
    levels: dict = None
    by_fold: dict = None
    fold_of: dict = None
    scores: pd.DataFrame = None

    def oof(self, image_id: str) -> Path:
        return self.levels[self.by_fold[self.fold_of[image_id]]].oof(image_id)

    def oof_scores(self) -> pd.DataFrame:
        return self.scores


def read_as(predictions: PredictionSet, fold: int | None) -> PredictionSet:
    """The set whose OOF images the choices for a fold (None: the test masks') read: a unetpp_ds run's at that fold's
    level (the test masks' level), every image at it. Read instead at each image's own fold's level, fold f's
    choices would read fold g's level, which was chosen on fold f's images among others."""
    if not isinstance(predictions, ChosenLevels):
        return predictions
    return predictions.levels[predictions.level if fold is None else predictions.by_fold[fold]]


def level_of(predictions: PredictionSet) -> str:
    """The level prediction.json records."""
    return predictions.provenance["level"]


def choose_levels(sets: list, fold_of: dict) -> ChosenLevels:
    """One TTA mode of a unetpp_ds run, its scored level sets (sets) made one: the level of each fold chosen on the
    other folds' images (choose_by_fold, the cheaper level on a tie), the test masks' on all of them."""
    by_level = {level_of(s): s for s in sorted(sets, key=lambda s: LEVELS.index(level_of(s)))}
    dice = {level: image_dice(s.oof_scores()) for level, s in by_level.items()}
    ids = [i for i in fold_of if all(i in d.index for d in dice.values())]
    by_fold, scores = choose_by_fold(by_level, ids, np.array([fold_of[i] for i in ids]))
    for_test = by_level[pd.DataFrame({level: d.loc[ids] for level, d in dice.items()}).mean().idxmax()]
    return ChosenLevels(for_test.run, for_test.checkpoint, for_test.tta, level_of(for_test), for_test.folder,
                        by_level, by_fold, fold_of, scores)


def tta_gain(dice_of: dict, image_ids: list) -> dict:
    """Mean Dice of every TTA mode a run was predicted with, on those of image_ids that all of them predicted, and the
    gain of each over none (None where none was not predicted). dice_of: {mode: image_dice()}."""
    dice = pd.DataFrame(dice_of).reindex(image_ids).dropna()
    plain = dice["none"].mean() if "none" in dice else None
    return {"images": len(dice), "modes": {m: {"dice": d, "gain": None if plain is None else d - plain}
                                           for m, d in dice.mean().items()}}


def oof_files(reads: tuple, image_id: str) -> list:
    """One image's OOF prediction files, one per set read (read_as)."""
    return [predictions.oof(image_id) for predictions in reads]


def tune_postprocessing(sets: dict, weights: dict, masks_dir: Path, task: str, image_ids: list,
                        image_folds: np.ndarray, tta_of_fold: dict, tta_all: tuple, tune_size: int) -> tuple:
    """Post-processing chosen on the runs' weighted mean OOF probabilities (test predictions are never read): for each
    fold on the other folds' images at that fold's TTA and levels (read_as; the estimate), and on all images at
    tta_all and the test masks' levels.

    sets: {run: {TTA mode: src.runs.PredictionSet}}; weights: {run: its weight}.
    tta_of_fold: {fold: one TTA mode per run}; tta_all: the modes of the test masks. Areas are tuned on masks shrunk
    to tune_size (postprocess.shrink). Each OOF file is read once per way of reading it: returns ({fold: settings},
    the test masks' settings, means), means: {(image id, fold): read_mean()} as the image's fold reads it, and
    {(image id, None): read_mean()} as the test masks' choice reads it, at the models' size.
    """
    candidates = postprocess.binary_candidates()

    def reads(modes: tuple, fold: int | None) -> tuple:
        return tuple(read_as(sets[name][mode], fold) for name, mode in zip(sets, modes))

    def read_and_tune(image_id, read):
        maps, size = read_mean(oof_files(read, image_id), [weights[n] for n in sets])
        target = postprocess.shrink(read_image(masks_dir / f"{image_id}.png"), tune_size)
        probs = mean_at(maps, target.shape)  # straight from the models' size to the tuning size
        if task == "binary":
            return (maps, size), postprocess.binary_candidate_dice(probs[0], target, candidates)
        return (maps, size), postprocess.multiclass_candidate_counts(probs, target)

    reads_of_fold = {f: reads(modes, f) for f, modes in tta_of_fold.items()}
    reads_all = reads(tta_all, None)
    means, settings_by_read = {}, {}
    # One pass per way of reading (TTA modes, unetpp_ds levels), usually one: folds at other levels add passes.
    for read in dict.fromkeys([*reads_of_fold.values(), reads_all]):
        names = ", ".join(s.tta + (f" {s.level}" if s.level else "") for s in read)
        tuned = thread_map(lambda i: read_and_tune(i, read), image_ids, max_workers=HOST_THREADS,
                           desc=f"tune post-processing (OOF, TTA {names})", unit="img")
        for image_id, fold, (mean, _) in zip(image_ids, image_folds, tuned):
            if read == reads_of_fold[fold]:
                means[image_id, fold] = mean
            if read == reads_all:
                means[image_id, None] = mean
        candidate_scores = np.stack([scores for _, scores in tuned])
        settings_by_read[read] = postprocess.choose_by_fold(task, candidate_scores, image_folds)
        if read == reads_all:
            settings = postprocess.choose(task, candidate_scores)
    return {f: settings_by_read[read][f] for f, read in reads_of_fold.items()}, settings, means


def score_ensemble(means: dict, masks_dir: Path, classes: list, image_ids: list, image_folds: np.ndarray,
                   by_fold: dict, for_test: dict) -> tuple:
    """The ensemble's OOF scores at original size, each fold with its own settings of by_fold read as its fold reads
    it (the estimate), and two tables without HD95 (most of the work): of the raw average (no post-processing) and of
    the test masks' settings for_test read as they read it (optimistic: chosen on these very images). An ensemble of
    one run scores that run.

    means: tune_postprocessing()'s. Returns (scores table, raw table, optimistic table)."""
    fold_of = dict(zip(image_ids, image_folds))

    def score(image_id):
        target = read_image(masks_dir / f"{image_id}.png")
        settings, mean = by_fold[fold_of[image_id]], means[image_id, fold_of[image_id]]
        probs = mean_at(*mean)
        rows = image_scores(postprocess.apply(probs, settings), target, classes)
        plain = postprocess.apply(probs, postprocess.PLAIN[settings["task"]])
        raw = image_scores(plain, target, classes, with_hd95=False)
        if means[image_id, None] is mean and for_test == settings:
            return rows, raw, rows
        probs = probs if means[image_id, None] is mean else mean_at(*means[image_id, None])
        return rows, raw, image_scores(postprocess.apply(probs, for_test), target, classes, with_hd95=False)

    scored = dict(zip(image_ids, thread_map(score, image_ids, max_workers=HOST_THREADS, desc="score ensemble (OOF)",
                                            unit="img")))
    table = scores_table({i: rows for i, (rows, _, _) in scored.items()}, fold_of)
    raw, optimistic = (scores_table({i: r[k] for i, r in scored.items()}, fold_of, table) for k in (1, 2))
    return table, raw, optimistic


def scores_table(rows_of: dict, fold_of: dict, like: pd.DataFrame | None = None) -> pd.DataFrame:
    """{image id: image_scores() rows} -> a scores table. like: a full table, whose columns rows scored without HD95
    take (left empty), so that per_image() averages their classes exactly as it does the full table's."""
    table = pd.DataFrame([{"id": i, "fold": fold_of[i], **r} for i, rows in rows_of.items() for r in rows])
    return table if like is None else table.reindex(columns=like.columns)


def summarize_scores(scores: pd.DataFrame) -> dict:
    """Means over images, and the sample std (ddof=1, as infer.py's tables) over images and over fold means."""
    images = per_image(scores)
    fold_means = images.groupby("fold")[["dice", "iou"]].mean()
    return {"dice": images["dice"].mean(), "dice_image_std": images["dice"].std(ddof=1),
            "dice_fold_mean": fold_means["dice"].mean(), "dice_fold_std": fold_means["dice"].std(ddof=1),
            "iou": images["iou"].mean(), "iou_fold_mean": fold_means["iou"].mean(),
            "iou_fold_std": fold_means["iou"].std(ddof=1), "hd95": images["hd95"].mean(),
            **({"hd95_pct": images["hd95_pct"].mean()} if "hd95_pct" in images else {}),
            "folds": {int(f): d for f, d in fold_means["dice"].items()}, "per_class": pooled_by_class(scores)}
