"""An ensemble's scores: each run on its own from infer.py's OOF scores, post-processed as an ensemble of one, and the
ensemble; every choice (TTA, post-processing) made for each fold on the other folds."""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from src import runs as ledger, tuning
from src.ensemble_inputs import oof_dice
from src.metrics import per_image, pooled_by_class


def score_runs(sets: dict, chosen: dict, folds: pd.DataFrame, args) -> dict:
    """Each run on its own, from the OOF scores infer.py wrote, on the images that every run predicted. Every choice
    made on OOF data is made for each fold on the other folds (cross-validated): here, under --tta best, the TTA."""
    oof = tuning.read_oof_scores(sets)
    dice_of = {name: {mode: tuning.image_dice(table) for mode, table in tables.items()} for name, tables in oof.items()}
    modes_of = {name: list(oof[name]) if args.tta == "best" else [args.tta] for name in chosen}
    oof_ids = tuning.scored_images(dice_of, modes_of, folds["id"])
    if not oof_ids:
        sys.exit(f"ensemble: no training image has an OOF prediction from every run ({', '.join(chosen)}); "
                 f"run infer.py for all folds of each run")
    if len(oof_ids) < len(folds):
        print(f"ensemble: {len(folds) - len(oof_ids)} training images lack an OOF prediction from some run (or TTA "
              f"mode under --tta best); scoring every model on the {len(oof_ids)} that all predicted")
    fold_of = dict(zip(folds["id"], folds["fold"]))
    image_folds = np.array([fold_of[i] for i in oof_ids])
    fold_ids = sorted(set(image_folds.tolist()))
    if len(fold_ids) < 2:
        sys.exit(f"ensemble: the OOF predictions cover only fold {fold_ids[0]}; settings are tuned on the other "
                 f"folds, so run infer.py for at least two folds of each run")
    tta_by_fold, run_scores = {}, {}
    for name in chosen:
        tta_by_fold[name], run_scores[name] = tuning.choose_by_fold(
            {mode: sets[name][mode] for mode in modes_of[name]}, oof_ids, image_folds)
    summaries = {name: {"tta": s.tta, "tta_by_fold": tta_by_fold[name], **tuning.summarize_scores(run_scores[name]),
                        "epoch_rule": epoch_rule(s, args.checkpoint), "accepted_stale": accepted_stale(s),
                        "parameters_m": (read_json(s.folder.parent / "training.json") or {}).get("parameters_m"),
                        "training": read_json(s.folder.parent / "training.json"),
                        "inference": read_json(s.folder / "inference.json")} for name, s in chosen.items()}
    return {"chosen": chosen, "dice_of": dice_of, "oof_ids": oof_ids, "image_folds": image_folds,
            "fold_ids": fold_ids, "tta_by_fold": tta_by_fold, "run_scores": run_scores, "summaries": summaries,
            "tta_gain": {name: tuning.tta_gain(dice_of[name], oof_ids) for name in chosen},  # every mode, same images
            "missing": len(folds) - len(oof_ids)}


def name_levels(runs: dict, sets: dict) -> None:
    """Each unetpp_ds run's levels in its summary: the test masks' (level), each fold's at that fold's TTA
    (level_by_fold), and every level of the test masks' TTA with its parameters, OOF images/s and OOF Dice (levels)."""
    for name, s in runs["chosen"].items():
        if not isinstance(s, tuning.ChosenLevels):
            continue
        by_fold = {f: sets[name][mode].by_fold[f] for f, mode in runs["tta_by_fold"][name].items()}
        inference = {level: read_json(p.folder / "inference.json") or {} for level, p in s.levels.items()}
        levels = {level: {"parameters_m": inference[level].get("parameters_m"), "dice": oof_dice(p),
                          "images_per_s": inference[level].get("images_per_s")} for level, p in s.levels.items()}
        runs["summaries"][name].update({"level": s.level, "level_by_fold": by_fold, "levels": levels})


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def fold_folders(predictions: ledger.PredictionSet) -> dict:
    """{fold: the run's fold folder} of the folds whose OOF predictions the set holds."""
    run_dir = Path(predictions.provenance["run_dir"])
    return {f: run_dir / f"fold{f}" for f in sorted(predictions.weights("oof"))}


def epoch_rule(predictions: ledger.PredictionSet, checkpoint: str) -> dict:
    """Which rule chose the weights of a run's predictions, and the epoch each fold's weights are from: figures of
    --select-on fold are optimistic (its epoch, plateau and early stop read the very images it is scored on)."""
    found = {f: ledger.epoch_of(folder, checkpoint) for f, folder in fold_folders(predictions).items()}
    rules = sorted({rule for rule, _ in found.values()})
    return {"select_on": "/".join(rules), "checkpoint": checkpoint, "epochs": {f: e for f, (_, e) in found.items()},
            "optimistic": "fold" in rules}


def accepted_stale(predictions: ledger.PredictionSet) -> dict:
    """{fold: {study, differs}} of the run's folds a study kept with --accept-stale, though it asked other settings."""
    return {f: record for f, folder in fold_folders(predictions).items() if (record := ledger.accepted_stale(folder))}


def postprocess_runs(runs: dict, sets: dict, dataset_dir: Path, meta: dict, args) -> None:
    """Each run post-processed as the ensemble is, being an ensemble of one: its settings chosen for each fold on the
    other folds, so that the ensemble's gain compares post-processed with post-processed and raw with raw."""
    runs["postprocessed_scores"] = {}
    for name, predictions in runs["chosen"].items():
        alone = {**runs, "chosen": {name: predictions}}
        tuned = tune(alone, {name: sets[name]}, {name: 1.0}, dataset_dir, meta, args)
        summary, runs["postprocessed_scores"][name] = score_ensemble(alone, tuned, dataset_dir, meta)
        runs["summaries"][name]["postprocessed"] = {**summary, "postprocess": tuned["settings"]}


def tune(runs: dict, sets: dict, weight_of: dict, dataset_dir: Path, meta: dict, args) -> dict:
    """Post-processing tuned on the averaged OOF probabilities (test predictions are never read here): for each fold
    on the other folds' images, with that fold's TTA (the estimate), and on all images (for the test masks)."""
    tta_of_fold = {f: tuple(runs["tta_by_fold"][name][f] for name in runs["chosen"]) for f in runs["fold_ids"]}
    tta_all = tuple(s.tta for s in runs["chosen"].values())
    settings_of_fold, settings, oof_means = tuning.tune_postprocessing(
        sets, weight_of, dataset_dir / "masks", meta["task"], runs["oof_ids"], runs["image_folds"], tta_of_fold,
        tta_all, args.tune_size)
    return {"tta_of_fold": tta_of_fold, "tta_all": tta_all, "settings_of_fold": settings_of_fold,
            "settings": settings, "oof_means": oof_means}


def score_ensemble(runs: dict, tuned: dict, dataset_dir: Path, meta: dict) -> tuple:
    """The ensemble at original size: each fold with its own TTA and settings (the headline); with the settings chosen
    on all images (optimistic: tuned and scored on the same images) and without any (the raw average)."""
    ensemble_scores, raw, optimistic = tuning.score_ensemble(
        tuned["oof_means"], dataset_dir / "masks", meta["classes"], runs["oof_ids"], runs["image_folds"],
        tuned["settings_of_fold"], tuned["settings"])
    ensemble = {**tuning.summarize_scores(ensemble_scores), "dice_raw": per_image(raw)["dice"].mean(),
                "per_class_raw": pooled_by_class(raw), "dice_optimistic": per_image(optimistic)["dice"].mean()}
    return ensemble, ensemble_scores


def ensemble_gain(summaries: dict, ensemble: dict) -> dict:
    """The ensemble against the best single run, like with like: post-processed (each cross-validated) with
    post-processed, and raw (threshold 0.5 or argmax) with raw. An ensemble of one run gains exactly 0."""
    best = max(summaries, key=lambda n: summaries[n]["postprocessed"]["dice"])
    best_raw = max(summaries, key=lambda n: summaries[n]["postprocessed"]["dice_raw"])
    return {"best_single": best, "ensemble_gain": ensemble["dice"] - summaries[best]["postprocessed"]["dice"],
            "best_single_raw": best_raw,
            "ensemble_gain_raw": ensemble["dice_raw"] - summaries[best_raw]["postprocessed"]["dice_raw"]}


def per_class(summaries: dict, ensemble: dict) -> dict:
    """Multiclass: each model's Dice per class with pixels pooled over the scored images, post-processed
    (cross-validated) and raw, their macro means, and every class that post-processing lowered."""
    models = {**{n: s["postprocessed"] for n, s in summaries.items()}, "ensemble": ensemble}
    classes = list(ensemble["per_class"])
    pooled = {c: {n: m["per_class"][c] for n, m in models.items()} for c in classes}
    raw = {c: {n: m["per_class_raw"][c] for n, m in models.items()} for c in classes}
    return {"per_class": pooled, "per_class_raw": raw,
            "macro": {n: {"postprocessed": float(np.mean([pooled[c][n] for c in classes])),
                          "raw": float(np.mean([raw[c][n] for c in classes]))} for n in models},
            "lowered_classes": [{"model": n, "class": c, "raw": raw[c][n], "postprocessed": pooled[c][n]}
                                for n in models for c in classes if pooled[c][n] < raw[c][n]]}
