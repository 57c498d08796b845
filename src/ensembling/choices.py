"""Step 3 of an ensemble: every choice made on OOF data, for each fold on the images of the other folds and applied
to that fold (no image is scored with a setting chosen on it), and once on all of them for the test masks:

- a run's prediction set: its TTA mode and, for a unetpp_ds run, its level (Choice: the set each fold reads);
- the post-processing of each run alone (an ensemble of one) and of the ensemble (PostProcessing);
- the test masks' inputs: each image's files of the sets chosen for them, with their run's weight.

A fold's TTA and post-processing read the other folds' images at that fold's own level: read at each image's own
fold's level, fold f's choices would take in fold g's level, which was chosen on fold f's images among others.
"""
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.contrib.concurrent import thread_map

from src import runs as ledger, volume_scores
from src.metrics import image_dice
from src.portable import postprocess
from src.portable.images import HOST_THREADS, read_image
from src.portable.labels import label_mask
from src.portable.maps import mean_at, mean_maps


@dataclass(frozen=True)
class Choice:
    """A run's prediction set for each fold, chosen on the other folds' images, and the test masks' set, chosen on
    all of them."""
    by_fold: dict  # {fold: PredictionSet}
    for_test: ledger.PredictionSet

    def scores(self, image_ids: list, fold_of: dict) -> pd.DataFrame:
        """The OOF scores infer.py wrote, each fold's images as its fold's set scored them."""
        tables = []
        for fold, predictions in self.by_fold.items():
            table = predictions.oof_scores()
            tables.append(table[table["id"].isin([i for i in image_ids if fold_of[i] == fold])])
        return pd.concat(tables)


@dataclass(frozen=True)
class PostProcessing:
    """A model's post-processing settings for each fold, chosen on the other folds, and the test masks', on all."""
    by_fold: dict  # {fold: settings}
    for_test: dict


@dataclass(frozen=True)
class Choices:
    """Step 3's result: what every fold and the test masks read, and how each model is post-processed."""
    at_mode: dict  # {run: {TTA mode: Choice}}: every mode predicted, a unetpp_ds run's level chosen by fold
    runs: dict  # {run: Choice}: each fold's TTA (and level), and the test masks'
    postprocess: dict  # {run: PostProcessing} of each run alone, and {"ensemble": PostProcessing} of them all
    weights: dict  # {run: its weight in the ensemble's mean}
    test: dict  # {image id: [(file, its run's weight)]}: what the test masks (or --set's) average


def choose(inputs, tune_size: int) -> Choices:
    """Step 3: each run's set for each fold and for the test masks, then the post-processing of each run alone and
    of the ensemble. inputs: step 2's (src/ensembling/inputs.py); tune_size: the masks' longer side in tuning."""
    masks_dir, task, weights = inputs.dataset_dir / "masks", inputs.meta["task"], inputs.weights
    fold_of = dict(zip(inputs.folds["id"], inputs.folds["fold"]))
    image_folds = np.array([fold_of[i] for i in inputs.image_ids])

    @functools.cache  # a set is read by every fold's choice
    def dice(predictions: ledger.PredictionSet) -> pd.Series:
        return image_dice(predictions.oof_scores()).reindex(inputs.image_ids)

    def best(options: dict) -> Choice:
        return best_by_fold(options, dice, image_folds)

    folds = sorted(set(image_folds.tolist()))
    at_mode = {run: {mode: best({level: Choice(dict.fromkeys(folds, s), s) for level, s in levels.items()})
                     for mode, levels in modes.items()} for run, modes in inputs.sets.items()}
    runs = {run: best({mode: at_mode[run][mode] for mode in inputs.modes[run]}) for run in inputs.sets}
    test = test_inputs(runs, weights, inputs.selection, set(folds), inputs.test_ids)

    cases = (inputs.index["case"].reindex(inputs.image_ids).to_numpy()
             if "volumes" in inputs.meta else None)  # a volume's slices are tuned on its 3D Dice

    def tuned(chosen: dict, weight_of: dict) -> PostProcessing:
        return tune_postprocessing(chosen, weight_of, masks_dir, task, inputs.image_ids, image_folds, tune_size,
                                   cases)

    models = {**{run: ({run: choice}, {run: 1.0}) for run, choice in runs.items()}, "ensemble": (runs, weights)}
    post = {model: tuned(*model_runs) for model, model_runs in models.items()}  # each run alone, then the ensemble
    if "volumes" in inputs.meta:
        post = {model: with_3d_step(post[model], *models[model], inputs, image_folds) for model in post}
    return Choices(at_mode, runs, post, weights, test)


def best_by_fold(options: dict, dice, image_folds: np.ndarray) -> Choice:
    """Among options ({key: Choice}, the cheapest first: a tie keeps it), each fold's set from the option whose set
    for that fold has the highest mean Dice on the other folds' images; the test masks' set from the option whose
    test set has the highest mean Dice on all of them."""
    by_fold = {}
    for fold in sorted(set(image_folds.tolist())):
        table = pd.DataFrame({key: dice(o.by_fold[fold]) for key, o in options.items()})[image_folds != fold]
        by_fold[fold] = options[table.mean().idxmax()].by_fold[fold]
    for_test = pd.DataFrame({key: dice(o.for_test) for key, o in options.items()}).mean().idxmax()
    return Choice(by_fold, options[for_test].for_test)


def test_inputs(runs: dict, weights: dict, selection, folds: set, test_ids: list) -> dict:
    """{image id: [(file, weight)]}: the test split's images (test_ids) or --set's, in the folders of the split's
    folds of each run's test set, each file weighing its run's weight shared out among the run's folds (as the OOF
    mean weighs each run: a 5-fold run weighs no more than a 2-fold one). A run whose set did not predict --set stops
    the ensemble with the command that does; an image some fold models did not predict is said, and averaged over
    those that did."""
    part, files = selection.part, {}
    predicted = {run: c.for_test for run, c in runs.items() if (c.for_test.folder / part).is_dir()}
    lacking = [run for run in runs if run not in predicted] if selection.set else []
    if lacking:  # found before tuning, not after
        images = next((s.provenance["sets"][selection.set]["images"] for s in predicted.values()), None)
        hint = runs[lacking[0]].for_test.renew_command(selection.dataset, sorted(folds), selection.dirs,
                                                       images or "DIR", selection.set)
        sys.exit(f"ensemble: {', '.join(lacking)} did not predict set '{selection.set}' "
                 f"({runs[lacking[0]].for_test.folder / part} missing); run `{hint}`"
                 + ("" if images else " (DIR: the folder of the set's images)")
                 + (" and the same for each run named" if len(lacking) > 1 else ""))
    wanted = {i for s in predicted.values() for i in s.provenance["sets"][selection.set]["ids"]} \
        if selection.set else set(test_ids)
    folders = {run: list(s.fold_folders(part, folds).values()) for run, s in predicted.items()}
    models = [(d, weights[run] / len(found)) for run, found in folders.items() for d in found]
    for folder, weight in models:
        for image_id, path in ledger.prediction_files(folder).items():
            if image_id in wanted:
                files.setdefault(image_id, []).append((path, weight))
    incomplete = [i for i, f in files.items() if len(f) < len(models)]
    if incomplete:
        print(f"ensemble: {len(incomplete)} test images (e.g. {incomplete[0]}) lack a prediction from some of the "
              f"{len(models)} fold models; they are averaged over the models that predicted them")
    return dict(sorted(files.items()))


def tune_postprocessing(runs: dict, weights: dict, masks_dir: Path, task: str, image_ids: list,
                        image_folds: np.ndarray, tune_size: int, cases=None) -> PostProcessing:
    """Post-processing chosen on the runs' weighted mean OOF probabilities (test predictions are never read): for each
    fold on the other folds' images, every image read as that fold reads it (its TTA and level), and on all images
    as the test masks read them. runs: {run: Choice}. Areas are tuned on masks shrunk to tune_size
    (postprocess.shrink); each OOF file is read once per way of reading it, usually once. cases: each image's case
    (volumes): the settings are chosen on the cases' 3D Dice, each case's slice counts summed."""
    candidates = postprocess.candidates_of(task)
    weight_list = [weights[run] for run in runs]

    def candidate_scores(image_id: str, read: tuple) -> np.ndarray:
        weighted, _ = ledger.read_maps([s.oof(image_id) for s in read], weight_list)
        target = postprocess.shrink(read_image(masks_dir / f"{image_id}.png"), tune_size)
        probs = mean_at(mean_maps(weighted), target.shape)  # straight from the models' size to the tuning size
        if task == "binary":
            return postprocess.binary_candidate_counts(probs[0], target, candidates)
        if task == "multilabel":  # each class's bit as a binary mask of its own
            return np.stack([postprocess.binary_candidate_counts(prob, label_mask(target, c, task), candidates)
                             for c, prob in enumerate(probs, start=1)])
        return postprocess.multiclass_candidate_counts(probs, target)

    reads_of_fold = {f: tuple(c.by_fold[f] for c in runs.values()) for f in sorted(set(image_folds.tolist()))}
    read_for_test = tuple(c.for_test for c in runs.values())
    chosen = {}
    for read in dict.fromkeys([*reads_of_fold.values(), read_for_test]):
        names = ", ".join(s.tta + (f" {s.level}" if s.level else "") for s in read)
        scores = np.stack(thread_map(lambda i: candidate_scores(i, read), image_ids, max_workers=HOST_THREADS,
                                     desc=f"tune post-processing (OOF, TTA {names})", unit="img"))
        chosen[read] = (postprocess.choose_by_fold(task, scores, image_folds, cases),
                        postprocess.choose(task, scores, cases) if read == read_for_test else None)
    return PostProcessing({f: chosen[read][0][f] for f, read in reads_of_fold.items()}, chosen[read_for_test][1])


def with_3d_step(tuned: PostProcessing, runs: dict, weights: dict, inputs, image_folds: np.ndarray) -> PostProcessing:
    """A volume dataset's post-processing with nnU-Net's 3D step, chosen as nnU-Net chooses it: a label's largest
    component alone is kept (settings' "largest_3d") where that raises the label's mean 3D Dice over cases; for each
    fold on the other folds' cases, read and post-processed as that fold's choices say, and for the test masks on
    all of them. Each case lies in one fold (folds group slices by case)."""
    fold_of = dict(zip(inputs.image_ids, image_folds.tolist()))
    cases = volume_scores.case_slices(inputs.index, fold_of)
    case_fold = pd.Series({c: fold_of[ids[0]] for c, ids in cases.items()})
    records, axis = volume_scores.read_records(inputs.dataset_dir), inputs.meta["volumes"]["axis"]
    probabilities = ledger.mean_probabilities([weights[run] for run in runs])

    def target(image_id: str) -> np.ndarray:
        return read_image(inputs.dataset_dir / "masks" / f"{image_id}.png")

    @functools.cache  # a (read, settings) pair several folds share is scored once
    def candidates(read: tuple, settings: str) -> pd.DataFrame:
        def mask(image_id: str) -> np.ndarray:
            return postprocess.apply(probabilities(image_id, read), json.loads(settings))
        return volume_scores.largest_candidates(mask, target, cases, records, axis, inputs.meta["classes"],
                                                inputs.meta["task"])

    def step(read: tuple, settings: dict, on_cases) -> dict:
        table = candidates(read, json.dumps(settings, sort_keys=True))
        means = table[table["case"].isin(on_cases)].groupby("label")[["plain", "largest"]].mean()
        return {**settings, "largest_3d": [int(label) for label, row in means.iterrows() if row["largest"] > row["plain"]]}

    by_fold = {f: step(tuple(c.by_fold[f] for c in runs.values()), settings, case_fold.index[case_fold != f])
               for f, settings in tuned.by_fold.items()}
    return PostProcessing(by_fold, step(tuple(c.for_test for c in runs.values()), tuned.for_test, case_fold.index))
