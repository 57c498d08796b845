"""Which prediction sets an ensemble reads (infer.py's, under preds/<dataset>/), each checked to come from its run's
current weights and from one split; any other stops the ensemble with the infer.py command that renews it."""
import json
import sys
from pathlib import Path

import pandas as pd

from src import runs as ledger, tuning
from src.portable.files import write_atomic
from src.metrics import per_image
from src.portable.models import DEEP_SUPERVISED
from src.folds import FoldFileError, SplitChanged, read_split
from src.predict import check_set_name
from src.tuning import TTA_MODES


def oof_dice(predictions: ledger.PredictionSet) -> float:
    """Mean per-image Dice of the OOF scores infer.py wrote for one prediction set."""
    return per_image(pd.read_csv(predictions.folder / "oof_scores.csv", dtype={"id": str}))["dice"].mean()


def select_runs(args) -> dict:
    """{run: {(TTA mode, level): its scored PredictionSet}} of the runs asked (--runs) with scored predictions of the
    checkpoint asked at the TTA asked (any under --tta best), every mode and level each has (level None but for
    unetpp_ds's other levels)."""
    try:
        found = ledger.level_sets(args.preds_dir, args.dataset, args.checkpoint)
    except ledger.OldPredictions as error:
        sys.exit(f"ensemble: {error}")
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


def recorded_split(sets: dict, args, index: pd.DataFrame) -> pd.DataFrame:
    """The folds that every set read was predicted on (infer.py records the fold file in prediction.json): one split
    for all, unchanged since."""
    recorded = {s: s.provenance["split"] for modes in sets.values() for s in modes.values()}
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
    mismatch = predictions.window_mismatch(part, stale[0]) if stale else ""
    if mismatch:  # tuned on the OOF files, so the masks must come from the same predictor
        sys.exit(f"ensemble: {files[stale[0]]} ({predictions.run}, fold {stale[0]}) was {mismatch}; predict it "
                 f"again with theirs: `{renew_command(predictions, stale, args, images)}`")
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


def fill_selection(args) -> None:
    """--runs, --checkpoint, --tta left out: with --set, the output folder's recorded selection (a study's ensemble
    writes a new set's masks with the study's own runs), else every run, the selected weights, the best TTA."""
    saved = Path(args.out_dir) / args.dataset / (args.name or "") / "selection.json"
    before = json.loads(saved.read_text()) if args.set and not args.overwrite and saved.exists() else {}
    args.runs = args.runs or (before.get("runs") if before.get("runs") != "*" else None)
    args.checkpoint = args.checkpoint or before.get("checkpoint", "selected")
    args.tta = args.tta or before.get("tta", "best")


def selection_of(args, chosen: dict) -> dict:
    """What an output folder was made from: the runs asked (and found), the checkpoint, the TTA rule."""
    return {"runs": args.runs or "*", "checkpoint": args.checkpoint, "tta": args.tta, "found": list(chosen),
            "preds_dir": str(Path(args.preds_dir).resolve())}


def describe(selection: dict) -> str:
    weights = "the selected weights" if selection["checkpoint"] == "selected" else f"{selection['checkpoint']}.pt"
    return f"runs {selection['runs']}, {weights}, TTA {selection['tta']}, from {selection.get('preds_dir', 'preds')}"


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
    keys = ("runs", "checkpoint", "tta", "preds_dir")  # another study's preds folder: another study's ensemble
    if before and any(before.get(k, selection[k]) != selection[k] for k in keys) and not args.overwrite:
        sys.exit(f"ensemble: {out} holds the ensemble of {describe(before)}; write this one ({describe(selection)}) "
                 f"to its own folder with --name NAME, or pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, json.dumps(selection, indent=2) + "\n")
    return out
