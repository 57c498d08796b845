"""Average fold x architecture predictions into final masks, tune TTA and post-processing on OOF data, write scores.

  python ensemble.py                         # every run with predictions for the dataset
  python ensemble.py --runs 'unet*' --weights unet-resnet34=1,unetpp-resnet34=2 --name unets
  python ensemble.py --checkpoint last --name last --set new_xrays   # last.pt's masks of infer.py --images new_xrays/

Reads preds/<dataset>/ (infer.py, through src/runs.py) and data/<dataset>/masks; writes ensemble/<dataset>/ (or
ensemble/<dataset>/<NAME>/ with --name): masks/<id>.png (final masks at original size: 0/255 for binary, class index
for multiclass), submission.csv (Kaggle RLE), scores.json, leaderboard.md, comparison.png, scores.png and, where Unet
and Unet++ share encoders, study.png; with --set NAME the masks and submission.csv of that prediction set go to
sets/NAME/ inside it instead. The folder records its selection (runs, checkpoint, TTA) in selection.json and is not
replaced by another selection without --overwrite. Only predictions made by each run's current weights on the split
it was trained on are used; any other stops the ensemble with the infer.py command that renews it. The scores are
cross-validated: each fold is scored with the TTA and post-processing chosen on the other folds; the test masks use
the choices made on all OOF images. Each single run is post-processed the same way (an ensemble of one), so the
ensemble's gain compares post-processed with post-processed and raw with raw; the leaderboard states each run's
epoch rule (--select-on) and labels `fold` optimistic.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from src import postprocess, report, runs as ledger, tracking, tuning
from src.canonical import load_index, load_meta, read_dataset_image
from src.files import write_atomic
from src.folds import FoldFileError, group_labels
from src.images import read_image, write_png
from src.metrics import dice_by_group, image_scores, per_image, pooled_by_class
from src.models import DEEP_SUPERVISED
from src.parallel import thread_map
from src.predict import OldPredictionFormat, SplitChanged, check_set_name, mean_at, read_mean, read_split
from src.rle import rle_encode
from src.stats import holm, mean_interval, paired_comparison
from src.tuning import TTA_MODES, scores_table

ALPHA = 0.05  # significance level of the Unet++ vs Unet comparisons (after Holm's adjustment) and of ensemble vs best


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--tta", choices=["best", "none", "flip", "d4"], default="best",
                        help="which TTA predictions to use per run (best: the highest OOF Dice of those predicted)")
    parser.add_argument("--compare-tta", choices=TTA_MODES,
                        help="TTA of both runs in the Unet++ vs Unet comparison (default: the most augmented mode "
                             "both were predicted with: d4, else flip, else none)")
    parser.add_argument("--runs", help="only these runs: names or globs, comma-separated, e.g. 'unet*-resnet34'")
    parser.add_argument("--checkpoint", choices=["selected", "best", "last"], default="selected",
                        help="the predictions of the selected weights, best.pt or last.pt (infer.py --checkpoint)")
    parser.add_argument("--name", help="write to ensemble/<dataset>/NAME/ (default: ensemble/<dataset>/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder made from another selection of runs, checkpoint or TTA")
    parser.add_argument("--set", help="write the masks of this prediction set (infer.py --images DIR --name NAME) "
                                      "instead of the dataset's test split")
    parser.add_argument("--weights", help="test-time run weights, positive numbers, e.g. "
                                          "unet-resnet34=1,unetpp-resnet34=2 (default 1)")
    parser.add_argument("--figures", type=int, default=4,
                        help="OOF images in comparison.png: where the first two runs disagree most, and the worst one")
    parser.add_argument("--by", help="also score subgroups: any index.csv column, e.g. view, sex (default: tissue "
                                     "where the dataset has one)")
    parser.add_argument("--tune-size", type=int, default=512,
                        help="tune post-processing on OOF maps shrunk to this longer side (scores stay at full size)")
    parser.add_argument("--tracker", choices=["wandb", "none"], help="log the leaderboard (default: as the runs were trained)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--folds-dir", default="folds")
    parser.add_argument("--preds-dir", default="preds")
    parser.add_argument("--out-dir", default="ensemble")
    return parser.parse_args(argv)


def main(argv=None):
    try:
        run(parse_args(argv))
    except OldPredictionFormat as error:
        sys.exit(f"ensemble: {error}")


def run(args):
    """The story: which predictions, checked; each run scored; the ensemble tuned and scored; masks; reports."""
    dataset_dir, meta, index, by = read_dataset(args)
    found = select_runs(args)
    folds = recorded_split(found, args, index)
    fold_of = dict(zip(folds["id"], folds["fold"]))
    check_oof(found, fold_of, args)
    sets, chosen = choose_levels(found, fold_of, args)
    test_dirs, test_ids = test_predictions(chosen, folds, index, args)
    weight_of = run_weights(args.weights, chosen)
    out = output_folder(args, chosen)

    runs = score_runs(sets, chosen, folds, args)
    name_levels(runs, sets)
    postprocess_runs(runs, sets, dataset_dir, meta, args)
    tuned = tune(runs, sets, weight_of, dataset_dir, meta, args)
    ensemble, ensemble_scores = score_ensemble(runs, tuned, dataset_dir, meta)
    write_atomic(out / "oof_scores.csv", ensemble_scores.to_csv(index=False))
    group_of = dict(zip(folds["id"], folds["group"])) if "group" in folds else {}
    comparisons = compare_architectures(runs["oof_ids"], runs["dice_of"], group_of, args.compare_tta)
    written = out / "sets" / args.set if args.set else out
    write_test_masks(written, test_dirs, test_ids, weight_of, tuned["settings"], meta)
    scores = write_reports(out, args, runs, tuned, ensemble, ensemble_scores, comparisons, weight_of, len(test_ids),
                           {"dataset_dir": dataset_dir, "meta": meta, "index": index, "by": by, "fold_of": fold_of,
                            "group_of": group_of})
    print(f"wrote {out}/: scores.json, leaderboard.md, figures; {written}/: {len(test_ids)} masks, submission.csv")
    print("\n".join(report.headline(scores)))


def read_dataset(args) -> tuple:
    """(dataset folder, meta, index by id, the column to score subgroups by or None)."""
    dataset_dir = Path(args.data_dir) / args.dataset
    try:
        meta, index = load_meta(dataset_dir), load_index(dataset_dir).set_index("id", drop=False)
    except FileNotFoundError as error:
        sys.exit(f"ensemble: {error}")
    by = args.by or ("tissue" if "tissue" in index else None)
    if by and by not in index:
        sys.exit(f"ensemble: --by {by}: no such column in {dataset_dir / 'index.csv'} (have: {', '.join(index.columns)})")
    return dataset_dir, meta, index, by


def oof_dice(predictions: ledger.PredictionSet) -> float:
    """Mean per-image Dice of the OOF scores infer.py wrote for one prediction set."""
    return per_image(pd.read_csv(predictions.folder / "oof_scores.csv", dtype={"id": str}))["dice"].mean()


def select_runs(args) -> dict:
    """{run: {(TTA mode, level): its scored PredictionSet}} of the runs asked (--runs) with scored predictions of the
    checkpoint asked at the TTA asked (any under --tta best), every mode and level each has (level None but for
    unetpp_ds's other levels)."""
    found = ledger.level_sets(args.preds_dir, args.dataset, args.checkpoint)
    root = Path(args.preds_dir) / args.dataset
    if found and ledger.unmatched(found, args.runs):
        sys.exit(f"ensemble: --runs {','.join(ledger.unmatched(found, args.runs))} matches no run with predictions of "
                 f"{args.checkpoint}.pt in {root} (there are: {', '.join(found)})")
    sets = {name: {(mode, level): s for mode, levels in found[name].items() for level, s in levels.items()
                   if s.scored} for name in ledger.select(found, args.runs)}
    sets = {name: candidates for name, candidates in sets.items()
            if any(args.tta in ("best", mode) for mode, _ in candidates)}
    if not sets:
        weights = "the selected weights" if args.checkpoint == "selected" else f"{args.checkpoint}.pt"
        predict = ledger.command("infer.py", args.dataset, dir_flags(args),
                                 *(["--runs", args.runs] if args.runs else []),
                                 "--tta", "flip" if args.tta == "best" else args.tta, "--checkpoint", args.checkpoint)
        sys.exit(f"ensemble: no scored predictions of {weights} in {root} (run `{predict}` first)")
    return sets


def choose_levels(found: dict, fold_of: dict, args) -> tuple:
    """({run: {mode: PredictionSet}}, {run: the set chosen for it}), the sets of select_runs(): a unetpp_ds run's
    levels of a TTA mode made one set, each fold at the level of highest OOF Dice on the other folds
    (tuning.choose_levels); under --tta best, the set of highest OOF Dice on all images (ties keep the cheaper TTA)."""
    sets, chosen = {}, {}
    for name, candidates in found.items():
        for mode in TTA_MODES:
            levels = [s for (m, _), s in candidates.items() if m == mode]
            if levels and name.split("-", 1)[0] == DEEP_SUPERVISED:
                sets.setdefault(name, {})[mode] = tuning.choose_levels(levels, fold_of)
            elif levels:
                sets.setdefault(name, {})[mode] = levels[0]
        modes = sets[name]
        chosen[name] = max(modes.values(), key=oof_dice) if args.tta == "best" else modes[args.tta]
    return sets, chosen


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


def recorded_split(sets: dict, args, index: pd.DataFrame) -> pd.DataFrame:
    """The folds that every set read was predicted on (infer.py records the fold file in prediction.json): one split
    for all, unchanged since."""
    recorded = {s: s.provenance.get("split") for modes in sets.values() for s in modes.values()}
    lacking = next((s for s, split in recorded.items() if split is None), None)
    if lacking:  # predicted before infer.py recorded provenance
        sys.exit(f"ensemble: {lacking.folder} does not record which weights and split made it (predicted by an older "
                 f"infer.py); renew it: `{renew_command(lacking, lacking_folds(lacking), args)}`")
    first, split = next(iter(recorded.items()))
    other = next((s for s, o in recorded.items() if o["sha256"] != split["sha256"]), None)
    if other:
        sys.exit(f"ensemble: {first.run} was trained on {split['file']} but {other.run} on another split "
                 f"({recorded[other]['file']}); ensemble runs of one split (--runs)")
    try:
        return read_split(split, f"{first.folder} was predicted", index)
    except (FileNotFoundError, SplitChanged, FoldFileError) as error:
        sys.exit(f"ensemble: {error}")


def lacking_folds(predictions: ledger.PredictionSet) -> list:
    """The folds with a test folder, for the command that renews a set without provenance (at least fold 0)."""
    return sorted(int(d.name[4:]) for d in predictions.part(None).glob("fold*")) or [0]


def dir_flags(args) -> dict:
    return {"--data-dir": args.data_dir, "--folds-dir": args.folds_dir, "--preds-dir": args.preds_dir}


def renew_command(predictions: ledger.PredictionSet, folds: list, args, images: str | None = None) -> str:
    return predictions.renew_command(args.dataset, folds, dir_flags(args), images, args.set)


def refuse_stale(predictions: ledger.PredictionSet, part: str, files: dict, args, images: str | None = None) -> None:
    """Stop at the first fold of a part whose files its run's current weights did not make. files: {fold: a file}."""
    stale = predictions.stale_folds(part, sorted(files))
    if stale:
        weights = ledger.weights_file(Path(predictions.provenance["run_dir"]), stale[0], predictions.checkpoint)
        sys.exit(f"ensemble: {files[stale[0]]} ({predictions.run}, fold {stale[0]}) was not made by the current "
                 f"weights of {weights} (retrained or deleted since); renew it: "
                 f"`{renew_command(predictions, stale, args, images)}`")


def check_oof(sets: dict, fold_of: dict, args) -> None:
    """Every OOF file that will be read (every TTA mode of every run asked) comes from its run's current weights."""
    for modes in sets.values():
        for predictions in modes.values():
            files = {}
            for image_id, path in ledger.prediction_files(predictions.folder / "oof").items():
                if image_id in fold_of:
                    files.setdefault(int(fold_of[image_id]), path)
            refuse_stale(predictions, "oof", files, args)


def test_predictions(chosen: dict, folds: pd.DataFrame, index: pd.DataFrame, args) -> tuple:
    """([(run, fold folder)], image ids) of the test split (or --set NAME) to write masks for: the folders of the
    split's folds only (never one left from another k), each made by its run's current weights."""
    if args.set:
        try:
            check_set_name(args.set)
        except ValueError as error:
            sys.exit(f"ensemble: --set: {error}")
    part = f"sets/{args.set}" if args.set else "test"
    lacking = [run for run, s in chosen.items() if args.set and not s.part(args.set).is_dir()]
    if lacking:  # found before tuning, not after
        images = next((s.provenance.get("sets", {}).get(args.set, {}).get("images") for s in chosen.values()
                       if s.part(args.set).is_dir()), None)  # the folder the other runs predicted under this name
        first = chosen[lacking[0]]
        sys.exit(f"ensemble: {', '.join(lacking)} did not predict set '{args.set}' ({first.part(args.set)} "
                 f"missing); run `{renew_command(first, lacking_folds(first), args, images or 'DIR')}`"
                 + ("" if images else " (DIR: the folder of the set's images)")
                 + (" and the same for each run named" if len(lacking) > 1 else ""))
    split_folds, fold_dirs, wanted = set(folds["fold"].tolist()), [], set()
    for name, predictions in chosen.items():
        record = predictions.provenance.get("sets", {}).get(args.set, {}) if args.set else {}
        wanted |= set(record.get("ids", []) if args.set else index.index[index["split"] == "test"])
        dirs = {int(d.name[4:]): d for d in sorted(predictions.part(args.set).glob("fold*"))
                if d.name[4:].isdigit() and int(d.name[4:]) in split_folds}
        files = {f: next(iter(ledger.prediction_files(d).values()), d) for f, d in dirs.items()}
        refuse_stale(predictions, part, files, args, record.get("images"))
        fold_dirs += [(name, d) for d in dirs.values()]
    test_ids = sorted(i for i in wanted if any((d / f"{i}.npz").exists() for _, d in fold_dirs))
    incomplete = [i for i in test_ids if not all((d / f"{i}.npz").exists() for _, d in fold_dirs)]
    if incomplete:
        print(f"ensemble: {len(incomplete)} test images (e.g. {incomplete[0]}) lack a prediction from some of the "
              f"{len(fold_dirs)} fold models; they are averaged over the models that predicted them")
    return fold_dirs, test_ids


def run_weights(spec: str | None, runs: dict) -> dict:
    """{run: test-time weight} from --weights RUN=W,...: positive numbers naming runs asked; 1 for the others."""
    weight_of = {name: 1.0 for name in runs}
    for item in filter(None, (spec or "").split(",")):
        name, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            sys.exit(f"ensemble: --weights {item}: write RUN=WEIGHT, e.g. {next(iter(runs), 'unet-resnet34')}=1")
        if name not in runs:
            sys.exit(f"ensemble: --weights names '{name}', which has no predictions (have: {', '.join(runs)})")
        if not (math.isfinite(weight) and weight > 0):
            sys.exit(f"ensemble: --weights {item}: a weight must be a positive number; leave a run out with --runs")
        weight_of[name] = weight
    return weight_of


def selection_of(args, chosen: dict) -> dict:
    """What an output folder was made from: the runs asked (and found), the checkpoint, the TTA rule."""
    return {"runs": args.runs or "*", "checkpoint": args.checkpoint, "tta": args.tta, "found": list(chosen)}


def describe(selection: dict) -> str:
    weights = "the selected weights" if selection["checkpoint"] == "selected" else f"{selection['checkpoint']}.pt"
    return f"runs {selection['runs']}, {weights}, TTA {selection['tta']}"


def output_folder(args, chosen: dict) -> Path:
    """ensemble/<dataset>/[NAME/], claimed for this selection: one made from another is replaced only with
    --overwrite, so a subset or another checkpoint never silently takes the place of the default leaderboard."""
    out = Path(args.out_dir) / args.dataset / (args.name or "")
    if args.name:
        try:
            check_set_name(args.name)
        except ValueError as error:
            sys.exit(f"ensemble: --name: {error}")
        if args.name in ("masks", "sets"):  # the default folder's own
            sys.exit(f"ensemble: --name {args.name}: the default output folder uses that name; choose another")
    selection, saved = selection_of(args, chosen), out / "selection.json"
    if saved.exists():
        before = json.loads(saved.read_text())
    else:  # written by an ensemble.py before folders recorded their selection: its defaults
        before = {"runs": "*", "checkpoint": "best", "tta": "best"} if (out / "scores.json").exists() else None
    keys = ("runs", "checkpoint", "tta")
    if before and any(before[k] != selection[k] for k in keys) and not args.overwrite:
        sys.exit(f"ensemble: {out} holds the ensemble of {describe(before)}; write this one ({describe(selection)}) "
                 f"to its own folder with --name NAME, or pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, json.dumps(selection, indent=2) + "\n")
    return out


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


def compare_architectures(image_ids: list, dice_of: dict, group_of: dict, tta: str | None) -> list:
    """For each encoder, each pair of report.COMPARED both ran with (Unet++ vs Unet; the deep-supervised Unet++ at its
    levels chosen by fold vs Unet and vs Unet++), on the same images, both at one TTA mode fixed in advance (tta,
    else the most augmented both have), over patients where group_of gives them; p Holm-adjusted over all the
    comparisons together. dice_of: {run: {mode: per-image Dice}}."""
    comparisons = []
    encoders = dict.fromkeys(name.split("-", 1)[1] for name in dice_of)  # run folders: <arch>-<encoder>
    for encoder, (baseline, challenger) in ((e, pair) for e in encoders for pair in report.COMPARED):
        pair = (f"{baseline}-{encoder}", f"{challenger}-{encoder}")
        if not all(n in dice_of for n in pair):
            continue
        mode = tta or next((m for m in reversed(TTA_MODES) if all(m in dice_of[n] for n in pair)), None)
        if not all(mode in dice_of[n] for n in pair):
            print(f"ensemble: {pair[0]} and {pair[1]} not compared: no OOF scores of both at "
                  f"{f'TTA {mode}' if mode else 'one TTA mode'}; run infer.py --tta {mode or 'none'} for both")
            continue
        a, b = (dice_of[n][mode] for n in pair)
        common = [i for i in image_ids if i in a.index and i in b.index]
        groups = group_labels([group_of.get(i, "") for i in common], common) if group_of else None
        comparisons.append({"encoder": encoder, "baseline": baseline, "challenger": challenger, "tta": mode,
                            **paired_comparison(a[common].to_numpy(), b[common].to_numpy(), groups=groups,
                                                alpha=ALPHA)})
    for comparison, p_value in zip(comparisons, holm([c["wilcoxon_p"] for c in comparisons])):
        comparison["p_holm"] = p_value  # adjusting can only make a difference insignificant
        comparison["verdict"] = comparison["verdict"] if p_value < ALPHA else "no significant difference"
    return comparisons


def write_test_masks(written: Path, fold_dirs: list, test_ids: list, weight_of: dict, settings: dict,
                     meta: dict) -> None:
    """Test images (or the prediction set --set NAME): weighted mean over every run and fold, post-processed, as PNG
    and RLE; masks of images no longer predicted are removed."""
    masks = written / "masks"
    masks.mkdir(parents=True, exist_ok=True)

    def test_mask(image_id):
        files = [(d / f"{image_id}.npz", weight_of[name]) for name, d in fold_dirs if (d / f"{image_id}.npz").exists()]
        final = postprocess.apply(mean_at(*read_mean(*zip(*files))), settings)
        write_png(masks / f"{image_id}.png", final * 255 if meta["task"] == "binary" else final)
        if meta["task"] == "binary":
            return [{"id": image_id, "rle": rle_encode(final)}]
        return [{"id": image_id, "class": c, "rle": rle_encode(final == k)} for k, c in enumerate(meta["classes"]) if k]

    test_rows = [r for rows in thread_map(test_mask, test_ids, "test masks") for r in rows]
    for old in set(p.stem for p in masks.glob("*.png")) - set(test_ids):
        (masks / f"{old}.png").unlink()
    columns = ["id", "rle"] if meta["task"] == "binary" else ["id", "class", "rle"]
    write_atomic(written / "submission.csv", pd.DataFrame(test_rows, columns=columns).to_csv(index=False))


def write_reports(out: Path, args, runs: dict, tuned: dict, ensemble: dict, ensemble_scores: pd.DataFrame,
                  comparisons: list, weight_of: dict, test_images: int, data: dict) -> dict:
    """scores.json, leaderboard.md, the figures and the tracker's tables; returns the scores."""
    summaries, oof_ids, meta, chosen = runs["summaries"], runs["oof_ids"], data["meta"], runs["chosen"]
    multiclass = len(meta["classes"]) > 2
    image_dice = {n: tuning.image_dice(s).loc[oof_ids] for n, s in runs["postprocessed_scores"].items()}
    by = data["by"]
    subgroups = {"column": by, "table": dice_by_group(
        {**image_dice, "ensemble": tuning.image_dice(ensemble_scores)}, data["index"][by]
    ).reset_index().to_dict("records")} if by else None
    tuning_by_fold = {f: {"images": int((runs["image_folds"] == f).sum()), "tta": dict(zip(chosen, tuned["tta_of_fold"][f])),
                          "postprocess": tuned["settings_of_fold"][f]} for f in runs["fold_ids"]}
    scores = {"dataset": args.dataset, "selection": selection_of(args, chosen), "checkpoint": args.checkpoint,
              "images": {"scored": len(oof_ids), "left_out": runs["missing"]},
              "runs": summaries, "ensemble": ensemble, **ensemble_gain(summaries, ensemble),
              "tta_gain": runs["tta_gain"], **(per_class(summaries, ensemble) if multiclass else {"per_class": {}}),
              "by": subgroups, "comparisons": comparisons, "tuning_by_fold": tuning_by_fold,
              "postprocess": tuned["settings"], "weights": weight_of, "test_images": test_images}
    scores["by_encoder"] = report.by_encoder(scores)
    # The headline's intervals, over patients where the split grouped images by patient (as the comparisons).
    groups = group_labels([data["group_of"].get(i, "") for i in oof_ids], oof_ids) if data["group_of"] else None
    best, ensemble_dice = image_dice[scores["best_single"]].to_numpy(), tuning.image_dice(ensemble_scores).loc[oof_ids]
    scores["best_interval"] = mean_interval(best, groups)
    scores["ensemble_vs_best"] = paired_comparison(best, ensemble_dice.to_numpy(), groups=groups, alpha=ALPHA)
    write_atomic(out / "scores.json", json.dumps(scores, indent=2, default=float) + "\n")
    write_atomic(out / "leaderboard.md", report.leaderboard_markdown(scores))
    report.score_bars(out / "scores.png", scores)
    if scores["by_encoder"]:
        report.study_figure(out / "study.png", scores["by_encoder"])
    dataset_dir = data["dataset_dir"]

    def panels(image_id):  # each run's OOF mask post-processed with its own choices on all OOF images, and its Dice
        target = read_image(dataset_dir / "masks" / f"{image_id}.png")
        masks = {n: postprocess.apply(mean_at(*read_mean([s.oof(image_id)], [1.0])),
                                      summaries[n]["postprocessed"]["postprocess"])
                 for n, s in chosen.items()}
        dice = {n: per_image(scores_table({image_id: image_scores(mask, target, meta["classes"], with_hd95=False)},
                                          data["fold_of"], ensemble_scores))["dice"].iloc[0] for n, mask in masks.items()}
        return image_id, read_dataset_image(dataset_dir, data["index"].loc[image_id], meta["channels"]), target, masks, dice

    shown = report.pick_examples(image_dice, args.figures)
    if shown:
        report.comparison_grid(out / "comparison.png", [panels(i) for i in shown], meta["classes"])
    log_to_tracker(out, args, chosen, scores, runs["fold_ids"])
    return scores


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


def log_to_tracker(out: Path, args, chosen: dict, scores: dict, folds: list) -> None:
    configs = [c for c in (read_json(s.folder.parent / "config.json") for s in chosen.values()) if c]
    trackers = {c.get("tracker") for c in configs}
    if (args.tracker or ("wandb" if "wandb" in trackers else "none")) != "wandb":
        return
    # Every row post-processed with its dice_raw beside it, as the leaderboard's table: a run's own keys are raw.
    models = {**{n: {**r, **r["postprocessed"]} for n, r in scores["runs"].items()}, "ensemble": scores["ensemble"]}
    table = pd.DataFrame([{"model": n, **{k: v for k, v in r.items() if not isinstance(v, dict)}}
                          for n, r in models.items()])
    by_encoder = {"by_encoder": pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, (dict, list))}
                                              for r in scores["by_encoder"]])} if scores["by_encoder"] else {}
    tracking.log_tables(args.dataset, "ensemble", "ensemble", "ensemble", out, {"leaderboard": table, **by_encoder},
                        {"ensemble_dice": scores["ensemble"]["dice"], "ensemble_gain": scores["ensemble_gain"],
                         "ensemble_gain_raw": scores["ensemble_gain_raw"]},
                        tags=",".join(sorted({t for c in configs for t in c.get("tags", "").split(",") if t})),
                        config={"arch": sorted({c["arch"] for c in configs}),
                                "encoder": sorted({c["encoder"] for c in configs}), "fold": sorted(int(f) for f in folds),
                                "runs": sorted(chosen), "tta": args.tta, "checkpoint": args.checkpoint})


if __name__ == "__main__":
    main()
