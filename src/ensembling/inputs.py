"""Steps 1 and 2 of an ensemble: find the prediction sets a selection asks for (infer.py's, under preds/<dataset>/),
then check them: all predicted on one split, unchanged since; every OOF, test and --set file made by its run's
current weights and by the sliding window of its OOF files; the OOF images that every set predicted; the dataset
they were predicted for, the runs' weights, and an output folder that holds no other selection's ensemble. Any
other stops the ensemble in one line, with the command that renews what it names.
"""
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src import runs as ledger
from src.canonical import load_index, load_meta
from src.folds import FoldFileError, SplitChanged, read_split
from src.portable.submission import read_sample


@dataclass(frozen=True)
class Selection:
    """What an ensemble is made from, as its folder's selection.json records it: the runs asked (names or globs; None:
    every run), the checkpoint, the TTA rule (a mode, or best: chosen for each fold on the others), the predictions'
    folder, and the prediction set whose masks it writes (None: the dataset's test split)."""
    dataset: str
    runs: str | None
    checkpoint: str
    tta: str
    preds_dir: str
    set: str | None
    dirs: dict  # the folder flags a hint's command repeats: --data-dir, --folds-dir, --preds-dir

    @property
    def part(self) -> str:
        """The part of every prediction set whose masks the ensemble writes: test, or sets/<name>."""
        return f"sets/{self.set}" if self.set else "test"

    def record(self, found: list) -> dict:
        return {"runs": self.runs or "*", "checkpoint": self.checkpoint, "tta": self.tta, "found": found,
                "preds_dir": str(Path(self.preds_dir).resolve())}


@dataclass(frozen=True)
class Inputs:
    """The prediction sets an ensemble reads, checked, with the dataset they were predicted for (step 2's result)."""
    selection: Selection
    dataset_dir: Path
    meta: dict
    index: pd.DataFrame  # index.csv, by id
    subgroups: pd.Series | None  # the index.csv column the scores are also given by (--by; tissue where there is one)
    weights: dict  # {run: its weight in the ensemble's mean}
    sets: dict  # {run: {TTA mode: {level: PredictionSet}}}: scored, cheapest first; level None but for unetpp_ds's
    folds: pd.DataFrame  # the split every set was predicted on
    image_ids: list  # the OOF images that every set a run may be scored with predicted, in the fold file's order
    modes: dict  # {run: the TTA modes its folds choose from}: --tta's, or under best every one it was predicted with
    test_ids: list  # the dataset's test split (index.csv)


def selection(dataset: str, runs: str | None, checkpoint: str | None, tta: str | None, preds_dir: str,
              set_name: str | None, saved: Path, dirs: dict) -> Selection:
    """The selection asked. --runs, --checkpoint and --tta left out: with --set, those of the output folder's
    selection.json (a study's ensemble writes a new set's masks with its own runs), else every run, the selected
    weights, the best TTA. saved: that selection.json (None: --overwrite, which reads none)."""
    if set_name:
        folder_name("--set", set_name)
    before = json.loads(saved.read_text()) if set_name and saved and saved.exists() else \
        {"runs": "*", "checkpoint": "selected", "tta": "best"}
    return Selection(dataset, runs or (None if before["runs"] == "*" else before["runs"]),
                     checkpoint or before["checkpoint"], tta or before["tta"], preds_dir, set_name, dirs)


def find(selection: Selection) -> dict:
    """Step 1: {run: {TTA mode: {level: PredictionSet}}} of the runs asked with scored predictions of the checkpoint
    asked, at the TTA asked (any under best): every mode and level each has, cheapest first."""
    try:
        found = ledger.level_sets(selection.preds_dir, selection.dataset, selection.checkpoint)
    except ledger.OldPredictions as error:
        sys.exit(f"ensemble: {error}")
    root = Path(selection.preds_dir) / selection.dataset
    unmatched = ledger.unmatched(found, selection.runs)
    if found and unmatched:
        sys.exit(f"ensemble: --runs {','.join(unmatched)} matches no run with predictions of {selection.checkpoint}.pt "
                 f"in {root} (there are: {', '.join(found)})")
    sets = {}
    for name in ledger.select(found, selection.runs):
        modes = {mode: {s.provenance["level"]: s for s in sorted(found[name][mode].values(), key=cost) if s.scored}
                 for mode in ledger.TTA_MODES if mode in found[name]}
        modes = {mode: levels for mode, levels in modes.items() if levels}
        if any(selection.tta in ("best", mode) for mode in modes):
            sets[name] = modes
    if not sets:
        predict = ledger.command("infer.py", selection.dataset, selection.dirs,
                                 *(["--runs", selection.runs] if selection.runs else []),
                                 "--tta", "flip" if selection.tta == "best" else selection.tta,
                                 "--checkpoint", selection.checkpoint)
        sys.exit(f"ensemble: no scored predictions of {weights_text(selection.checkpoint)} in {root} (run `{predict}` "
                 f"first)")
    return sets


def cost(predictions: ledger.PredictionSet) -> int:
    """A set's rank among its run's levels, the cheapest first (a choice's tie keeps it): L1 ... L4, mean, as
    prediction.json records them; a set of any other run than unetpp_ds has none (the model's own forward)."""
    level = predictions.provenance["level"]
    return ledger.LEVELS.index(level) if level else 0


def output_folder(out_dir: str, dataset: str, name: str | None) -> Path:
    """ensemble/<dataset>/, or ensemble/<dataset>/<NAME>/ for --name NAME (a folder's name, not one of the default
    folder's own)."""
    if name:
        folder_name("--name", name)
        if name in ("masks", "sets"):
            sys.exit(f"ensemble: --name {name}: the default output folder uses that name; choose another")
    return Path(out_dir) / dataset / (name or "")


def check(sets: dict, selection: Selection, dataset_dir: Path, by: str | None, weights: str | None, out: Path,
          overwrite: bool, sample: Path | None = None) -> Inputs:
    """Step 2: the dataset, the split every set was predicted on, every file each may read made by its run's
    current weights (OOF, test, and --set), the OOF images they all predicted, the runs' weights (--weights), a
    sample submission that can be followed, and an output folder free for this selection."""
    meta, index, subgroups = read_dataset(dataset_dir, by)
    try:
        if sample:
            read_sample(sample, meta["classes"], meta["submission"])
    except ValueError as error:
        sys.exit(f"ensemble: --sample-submission {error}")
    weight_of = run_weights(weights, sets)
    folds = recorded_split(sets, selection, index)
    fold_of = dict(zip(folds["id"], folds["fold"]))
    for modes in sets.values():
        for levels in modes.values():
            for predictions in levels.values():
                oof = {}
                for image_id, path in ledger.prediction_files(predictions.folder / "oof").items():
                    if image_id in fold_of:
                        oof.setdefault(int(fold_of[image_id]), path)
                refuse_stale(predictions, "oof", oof, selection)
                parts = {f: next(iter(ledger.prediction_files(d).values()), d)
                         for f, d in predictions.fold_folders(selection.part, set(fold_of.values())).items()}
                record = predictions.provenance.get("sets", {}).get(selection.set, {}) if selection.set else {}
                refuse_stale(predictions, selection.part, parts, selection, record.get("images"))
    modes = {name: list(by_mode) if selection.tta == "best" else [selection.tta] for name, by_mode in sets.items()}
    image_ids = scored_images(sets, modes, folds)
    check_output(out, selection, list(sets), overwrite)
    return Inputs(selection, dataset_dir, meta, index, subgroups, weight_of, sets, folds, image_ids, modes,
                  index.index[index["split"] == "test"].tolist())


def read_dataset(dataset_dir: Path, by: str | None) -> tuple:
    """(meta, index.csv by id, the column to score subgroups by: --by, else tissue where the dataset has one)."""
    try:
        meta, index = load_meta(dataset_dir), load_index(dataset_dir).set_index("id", drop=False)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"ensemble: {error}")
    if by and by not in index:
        sys.exit(f"ensemble: --by {by}: no such column in {dataset_dir / 'index.csv'} (have: {', '.join(index.columns)})")
    by = by or ("tissue" if "tissue" in index else None)
    return meta, index, index[by] if by else None


def run_weights(spec: str | None, runs: dict) -> dict:
    """{run: weight in the ensemble's mean} from --weights RUN=W,...: positive numbers naming runs found; 1 for the
    others."""
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


def recorded_split(sets: dict, selection: Selection, index: pd.DataFrame) -> pd.DataFrame:
    """The folds that every set was predicted on (infer.py records the fold file in prediction.json): one split for
    all, unchanged since."""
    recorded = {s: s.provenance["split"] for modes in sets.values() for levels in modes.values()
                for s in levels.values()}
    first, split = next(iter(recorded.items()))
    other = next((s for s, o in recorded.items() if o["sha256"] != split["sha256"]), None)
    if other:
        sys.exit(f"ensemble: {first.run} was trained on {split['file']} but {other.run} on another split "
                 f"({recorded[other]['file']}); ensemble runs of one split (--runs)")
    try:
        return read_split(split, f"{first.folder} was predicted", index)
    except (FileNotFoundError, SplitChanged, FoldFileError) as error:
        sys.exit(f"ensemble: {error}")


def refuse_stale(predictions: ledger.PredictionSet, part: str, files: dict, selection: Selection,
                 images: str | None = None) -> None:
    """Stop at the first fold of a part whose files its run's current weights, or the sliding window of its OOF
    files (which the ensemble tunes on), did not make. files: {fold: a file of it}."""
    stale = predictions.stale_folds(part, sorted(files))
    if not stale:
        return
    renew = predictions.renew_command(selection.dataset, stale, selection.dirs, images, selection.set)
    mismatch = predictions.window_mismatch(part, stale[0])
    if mismatch:
        sys.exit(f"ensemble: {files[stale[0]]} ({predictions.run}, fold {stale[0]}) was {mismatch}; predict it "
                 f"again with theirs: `{renew}`")
    weights = ledger.weights_file(Path(predictions.provenance["run_dir"]), stale[0], predictions.checkpoint)
    sys.exit(f"ensemble: {files[stale[0]]} ({predictions.run}, fold {stale[0]}) was not made by the current weights "
             f"of {weights} (retrained or deleted since); renew it: `{renew}`")


def scored_images(sets: dict, modes: dict, folds: pd.DataFrame) -> list:
    """The OOF images, in the fold file's order, that every set a run may be scored with (each TTA mode of modes, each
    level) scored; those left out are said, and fewer than two folds stop the ensemble (its choices are made for
    each fold on the others)."""
    scored = [set(s.oof_scores()["id"]) for name, by_mode in sets.items() for mode in modes[name]
              for s in by_mode[mode].values()]
    image_ids = [i for i in folds["id"] if all(i in ids for ids in scored)]
    if not image_ids:
        sys.exit(f"ensemble: no training image has an OOF prediction from every run ({', '.join(sets)}); run "
                 f"infer.py for all folds of each run")
    if len(image_ids) < len(folds):
        print(f"ensemble: {len(folds) - len(image_ids)} training images lack an OOF prediction from some run (or TTA "
              f"mode under --tta best); scoring every model on the {len(image_ids)} that all predicted")
    covered = sorted(set(folds.set_index("id").loc[image_ids, "fold"]))
    if len(covered) < 2:
        sys.exit(f"ensemble: the OOF predictions cover only fold {covered[0]}; settings are tuned on the other folds, "
                 f"so run infer.py for at least two folds of each run")
    return image_ids


def folder_name(flag: str, name: str) -> None:
    try:
        ledger.check_set_name(name)
    except ValueError as error:
        sys.exit(f"ensemble: {flag}: {error}")


def weights_text(checkpoint: str) -> str:
    return "the selected weights" if checkpoint == "selected" else f"{checkpoint}.pt"


def describe(record: dict) -> str:
    return f"runs {record['runs']}, {weights_text(record['checkpoint'])}, TTA {record['tta']}, from {record['preds_dir']}"


def check_output(out: Path, selection: Selection, found: list, overwrite: bool) -> None:
    """ensemble/<dataset>/[NAME/] holds no ensemble of another selection (its selection.json says), unless
    --overwrite: a subset or another checkpoint never silently takes the place of the default leaderboard."""
    saved, wanted = out / "selection.json", selection.record(found)
    if saved.exists():
        before = json.loads(saved.read_text())
        keys = ("runs", "checkpoint", "tta", "preds_dir")  # another study's preds folder: another study's ensemble
        if any(before[k] != wanted[k] for k in keys) and not overwrite:
            sys.exit(f"ensemble: {out} holds the ensemble of {describe(before)}; write this one ({describe(wanted)}) "
                     f"to its own folder with --name NAME, or pass --overwrite to replace it")
    elif (out / "scores.json").exists() and not overwrite:
        sys.exit(f"ensemble: {out} holds an ensemble without a selection.json (an older ensemble.py's); write this "
                 f"one to its own folder with --name NAME, or pass --overwrite to replace it")
