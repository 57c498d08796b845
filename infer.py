"""Predict out-of-fold and test images with trained runs, at the model's size, and score the OOF ones at original size.

  python infer.py --tta                 # every run of the dataset, flip TTA
  python infer.py --tta d4 --arch unetpp --folds 0,1
  python infer.py --runs 'unet-resnet34,unetpp-*'   # run names or globs, comma-separated
  python infer.py --runs 'unetpp_ds-*' --level all    # each level of Unet++ with deep supervision: L1..L4, mean
  python infer.py --checkpoint last     # last.pt (the final epoch) whatever the run's --select-on rule scores
  python infer.py --images new_xrays/   # any folder of images, predicted by every fold's model: set "new_xrays"

Reads runs/<dataset>/<arch>-<encoder>/fold<k>/ (config.json, best.pt or last.pt) and the fold file each run was
trained on; writes preds/ (layout in src/predict.py), preds/.../oof_scores.csv (Dice, IoU, HD95 per image and
class), preds/.../inference.json (OOF prediction speed, images/s; the parameters of the level predicting),
preds/.../prediction.json (which weights, fold file, TTA and level made each part: src/runs.py) and prints mean +-
std per fold. Run folders without a finished epoch are skipped (and the exit status is 1); each folder left out is
named with its reason.
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from src import runs as ledger, tracking
from src.cache import open_cache
from src.canonical import load_index
from src.config import Config, OldRunFormat, name_parts, overlap_share, positive
from src.folds import FoldFileError, SplitChanged, read_split
from src.oof_scores import fold_table, print_summary, score_oof, training_summary, volume_line
from src.portable.files import write_atomic
from src.portable.models import DEEP_SUPERVISED, ModelError, at_level
from src.portable.predictor import Model, file_batches
from src.portable.torch_model import torch_predictor
from src.predict import (UnfinishedRun, cache_batches, check_set_source, checkpoint_file, image_set,
                         load_trained_model, write_predictions)
from src.runs import file_sha256, needs_prediction
from src.sliding import describe, window


def parse_args(argv=None):
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=defaults.dataset)
    parser.add_argument("--tta", nargs="?", const="flip", default="none", choices=["none", "flip", "d4"],
                        help="test-time augmentation; --tta alone means flip")
    parser.add_argument("--arch", help="only runs of this architecture")
    parser.add_argument("--encoder", help="only runs of this encoder")
    parser.add_argument("--folds", help="only these folds, e.g. 0,1")
    parser.add_argument("--runs", help="only these runs: names or globs, comma-separated, e.g. 'unet-resnet34,unetpp-*'")
    parser.add_argument("--checkpoint", choices=["selected", "best", "last"], default="selected",
                        help="selected: the weights the run's --select-on rule scores; best.pt (best validation epoch) "
                             "or last.pt (final epoch)")
    parser.add_argument("--level", default="L4",
                        help="unetpp_ds runs: predict with the sub-network up to head L1, L2, L3 or L4 (the full "
                             "model), or the heads' mean; a comma-separated list, or all; each level is its own "
                             "prediction set")
    parser.add_argument("--images", type=Path, help="predict this folder of images instead of the dataset's test split")
    parser.add_argument("--name", help="the prediction set's name for --images (default: the folder's name)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--overlap", type=overlap_share, help="runs trained on patches (--patch): the sliding window's "
                        "overlap of neighbouring windows, in [0, 1) (default: the run's own, 0.5); another overlap "
                        "is another prediction, which the ensemble reads only if every part of the set has it")
    parser.add_argument("--sw-batch-size", type=positive, help="runs trained on patches: windows per forward pass "
                        "(default: the run's own); bounds the memory, changes nothing but speed")
    parser.add_argument("--overwrite", action="store_true", help="predict again images that already have a file")
    parser.add_argument("--tracker", choices=["wandb", "none"], help="log OOF scores (default: as the run was trained)")
    parser.add_argument("--runs-dir", default=defaults.runs_dir)
    parser.add_argument("--data-dir", default=defaults.data_dir)
    parser.add_argument("--folds-dir", default=defaults.folds_dir)
    parser.add_argument("--preds-dir", default="preds")
    return parser.parse_args(argv)


def find_runs(args) -> list:
    """The fold folders that --runs, --arch, --encoder and --folds select; a filter that matches nothing says what there
    is, and each folder left out for want of a config.json is named."""
    root = Path(args.runs_dir) / args.dataset
    folders = ledger.run_folders(args.runs_dir, args.dataset)
    if not folders:
        sys.exit(f"infer: no training runs in {root} (train one with `accelerate launch train.py ...`)")
    names = list(folders)
    parts = {n: name_parts(n) for n in names}
    for flag, value, there in (("--arch", args.arch, {p[0] for p in parts.values()}),
                               ("--encoder", args.encoder, {p[1] for p in parts.values() if p[1]})):
        if value and value not in there:
            sys.exit(f"infer: {flag} {value}: no such run in {root} (there are: {', '.join(sorted(there))})")
    if ledger.unmatched(names, args.runs):
        sys.exit(f"infer: --runs {','.join(ledger.unmatched(names, args.runs))} matches no run in {root} (there are: "
                 f"{', '.join(names)})")
    names = [n for n in ledger.select(names, args.runs) if (not args.arch or parts[n][0] == args.arch)
             and (not args.encoder or parts[n][1] == args.encoder)]
    chosen = [f for n in names for f in folders[n]]
    if args.folds:
        asked = args.folds.split(",")
        there = sorted({f.name[4:] for f in chosen}, key=int)
        missing = [f for f in asked if f not in there]
        if missing:
            sys.exit(f"infer: --folds {args.folds}: no fold {', '.join(missing)} among the runs asked in {root} "
                     f"(folds there: {', '.join(there) or 'none'})")
        chosen = [f for f in chosen if f.name[4:] in asked]
    for folder in chosen:
        if not (folder / "config.json").exists():
            print(f"infer: leaving out {folder}: no config.json (training never started there; "
                  f"holds {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})")
    runs = [f for f in chosen if (f / "config.json").exists()]
    if not runs:
        sys.exit(f"infer: none of the runs asked in {root} has started training (train one with "
                 f"`accelerate launch train.py ...`)")
    return runs


def levels_asked(spec: str) -> list:
    """--level as a list: L1, L2, L3, L4, mean, a comma-separated list of them, or all."""
    asked = list(ledger.LEVELS) if spec == "all" else spec.split(",")
    wrong = [level for level in asked if level not in ledger.LEVELS]
    if wrong:
        sys.exit(f"infer: --level {spec}: no level {', '.join(wrong)}; give {', '.join(ledger.LEVELS)}, a "
                 f"comma-separated list of them, or all")
    return asked


def level_models(model: torch.nn.Module, cfg: Config, levels: list, told: set, task: str) -> list:
    """[(level, the model predicting at it)]: each level asked of a unetpp_ds run (its sub-network, built once per
    fold; the heads' mean averages the task's probabilities); any other run's own forward (level None), said once
    where --level asked another level."""
    if cfg.arch != DEEP_SUPERVISED:
        if levels != ["L4"] and cfg.run_name not in told:
            told.add(cfg.run_name)
            print(f"infer: --level is for {DEEP_SUPERVISED} runs; {cfg.run_name} predicts with its own forward")
        return [(None, model)]
    built = []
    for level in levels:
        net = at_level(model, level, task)
        if getattr(net, "encoder_fallback", False) and (cfg.run_name, level) not in told:
            told.add((cfg.run_name, level))
            print(f"infer: {cfg.run_name} {level}: encoder {cfg.encoder} cannot be cut to this level's stages, so it "
                  f"runs all of them (the decoder nodes past {level} are still skipped)")
        built.append((level, net))
    return built


def level_text(level: str | None) -> str:
    return f" {level}" if level else ""


def trained_split(run_dir: Path, index: pd.DataFrame) -> tuple:
    """(fold file record, folds) of the split run_dir was trained on, refused if the file changed since."""
    recorded = ledger.run_config(run_dir)["folds"]
    try:
        return recorded, read_split(recorded, f"{run_dir} was trained", index)
    except (FileNotFoundError, SplitChanged, FoldFileError) as error:
        sys.exit(f"infer: {error}")


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dirs = {"--runs-dir": args.runs_dir, "--data-dir": args.data_dir, "--folds-dir": args.folds_dir,
            "--preds-dir": args.preds_dir}  # what a hint's command repeats
    runs = find_runs(args)
    dataset_dir = Path(args.data_dir) / args.dataset
    try:
        index = load_index(dataset_dir)
    except FileNotFoundError as error:
        sys.exit(f"infer: {error}")
    set_name, set_paths = image_set(args.images, args.name)
    images_dir = str(args.images.resolve()) if set_name else None
    levels, told = levels_asked(args.level), set()
    scored, skipped, speed = {}, [], {}
    for run_dir in runs:
        try:
            weights = checkpoint_file(run_dir, args.checkpoint)
            model, cfg, meta = load_trained_model(run_dir, weights, device)
        except UnfinishedRun as error:  # a study's other runs are still worth predicting
            print(f"infer: skipping {error}")
            skipped.append(run_dir)
            continue
        except (FileNotFoundError, ModelError, OldRunFormat) as error:
            sys.exit(f"infer: {error}")
        split, folds = trained_split(run_dir, index)
        window_flags = {"overlap": args.overlap, "sw_batch_size": args.sw_batch_size}  # the prediction's, not the run's
        cfg = replace(cfg, **{k: v for k, v in window_flags.items() if v is not None})
        foreign = ledger.foreign_predictions(args.preds_dir, args.dataset, cfg.run_name, args.runs_dir)
        if foreign:
            sys.exit(f"infer: {foreign}")
        parameters_m = sum(p.numel() for p in model.parameters()) / 1e6  # for the leaderboard's per-encoder table
        images, _ = open_cache(dataset_dir, cfg.size, cfg.context)
        for level, net in level_models(model, cfg, levels, told, meta["task"]):
            predictions = ledger.PredictionSet(cfg.run_name, args.checkpoint, args.tta, level, ledger.set_folder(
                args.preds_dir, args.dataset, cfg.run_name, args.tta, args.checkpoint, level))
            out_dir = predictions.folder
            if out_dir in scored and scored[out_dir][3]["sha256"] != split["sha256"]:
                sys.exit(f"infer: the folds of {run_dir.parent} were trained on different splits ({split['file']}, "
                         f"{scored[out_dir][3]['file']}); retrain them on one")
            if set_name and not args.overwrite:
                check_set_source(predictions, set_name, images_dir)
            size = {"level": level, "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6,
                    "encoder_fallback": getattr(net, "encoder_fallback", False)}
            size["window"] = describe(cfg) or None  # a patched run's window: "sliding window 128 px, overlap 0.5, ..."
            predictor = Model(f"{cfg.run_name}{level_text(level)} fold{cfg.fold}", cfg.size, 1.0, torch_predictor(
                net, meta["task"], args.tta, window(cfg), cfg.sw_batch_size, device))  # TTA on each batch of windows
            model_id = {"fold": cfg.fold, "weights": file_sha256(weights), "split": split["sha256"], "tta": args.tta,
                        **({"window": f"{cfg.patch}:{cfg.overlap:g}"} if cfg.tiles else {})}
            record = {"fold": cfg.fold, "weights": model_id["weights"], "run_dir": run_dir.parent.resolve(),
                      "split": split, "k": folds["fold"].nunique(), "level": level, "window": window(cfg)}
            jobs = [("oof", index[index["id"].isin(folds.loc[folds["fold"] == cfg.fold, "id"])], out_dir / "oof")]
            if set_name is None:
                jobs.append(("test", index[index["split"] == "test"], out_dir / "test" / f"fold{cfg.fold}"))
            for kind, rows, target in jobs:
                todo = rows[[needs_prediction(target / f"{i}.npz", model_id, args.overwrite) for i in rows["id"]]]
                if len(todo):  # index labels are cache rows
                    started = time.perf_counter()
                    write_predictions(predictor, cache_batches(images, todo, cfg.size, args.batch_size), target,
                                      model_id, f"{predictor.name} {kind}")
                    if kind == "oof":  # the run's prediction speed, for the leaderboard
                        speed.setdefault(out_dir, []).append((len(todo), time.perf_counter() - started))
                ledger.record_prediction(out_dir, kind, **record)
            if set_name is not None:
                target = predictions.part(set_name) / f"fold{cfg.fold}"
                todo = [p for p in set_paths if needs_prediction(target / f"{p.stem}.npz", model_id, args.overwrite)]
                try:
                    write_predictions(predictor, file_batches(todo, meta["channels"], [cfg.size], args.batch_size),
                                      target, model_id, f"{predictor.name} {set_name}")
                except ValueError as error:  # an image that cannot be read names itself (images.InputError)
                    sys.exit(f"infer: {error}")
                ledger.record_prediction(out_dir, f"sets/{set_name}", **record, images=images_dir,
                                         ids=[p.stem for p in set_paths])
            # What ensemble.py needs to know about the run, with the split its OOF predictions follow.
            cfg.save(out_dir.parent / "config.json", meta=meta, folds=split)
            scored[out_dir] = (cfg, meta, run_dir.parent, split, folds, parameters_m, predictions, size)
    for out_dir, (cfg, meta, trained, _, folds, parameters_m, predictions, size) in scored.items():  # folds share it
        write_atomic(out_dir.parent / "training.json", json.dumps(
            {**training_summary(trained), "parameters_m": parameters_m}, indent=2) + "\n")
        if out_dir in speed:  # OOF prediction (read, TTA model, write) in images/s; else an earlier record stays
            predicted, seconds = map(sum, zip(*speed[out_dir]))
            write_atomic(out_dir / "inference.json", json.dumps({
                "images": predicted, "seconds": seconds, "images_per_s": predicted / seconds,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", **size},
                indent=2) + "\n")
        scores = score_oof(predictions, folds, dataset_dir, meta, index, dirs)
        table = fold_table(scores, folds["fold"].unique().tolist())
        weights = cfg.selected_checkpoint if args.checkpoint == "selected" else args.checkpoint
        print_summary(f"{cfg.run_name}{level_text(size['level'])} (tta {args.tta}, {weights}.pt"
                      f"{', ' + size['window'] if size['window'] else ''})", scores, table)
        if "volumes" in meta:  # slices stacked back into their cases, scored as nnU-Net scores them
            print(volume_line(predictions, dataset_dir, meta, index, set(scores["id"])))
        if (args.tracker or cfg.tracker) == "wandb":
            name = f"oof-tta-{args.tta}" + ("" if args.checkpoint == "selected" else f"-{args.checkpoint}") + \
                (f"-{size['level']}" if size["level"] else "")
            config = {"arch": cfg.arch, "encoder": cfg.encoder, "fold": sorted(int(f) for f in scores["fold"].unique()),
                      "tta": args.tta, "checkpoint": args.checkpoint, "level": size["level"]}
            tracking.log_tables(args.dataset, cfg.run_name, name, "infer", out_dir, {"oof_by_fold": table},
                                table.set_index("fold").iloc[-1].to_dict(), tags=cfg.tags, config=config)
    if set_name is not None and scored:
        predicted = sorted({p.run for *_, p, _ in scored.values()})
        runs = args.runs or (",".join(predicted) if args.arch or args.encoder else None)  # the ensemble of these alone
        ensemble_dirs = {flag: folder for flag, folder in dirs.items() if flag != "--runs-dir"}  # ensemble.py: no runs
        masks = ledger.command("ensemble.py", args.dataset, ensemble_dirs, "--set", set_name, "--tta", args.tta,
                               *(["--checkpoint", args.checkpoint] if args.checkpoint != "selected" else []),
                               *(["--runs", runs] if runs else []))
        print(f"infer: set '{set_name}' ({len(set_paths)} images of {images_dir}) predicted into "
              f"{', '.join(str(p.part(set_name)) for *_, p, _ in scored.values())}; its masks: `{masks}`")
    if skipped:
        sys.exit(f"infer: skipped {len(skipped)} run folder(s) without the weights to predict with (listed above); "
                 f"the others were predicted")


if __name__ == "__main__":
    main()
