"""Predict out-of-fold and test images with trained runs, at the model's size, and score the OOF ones at original size.

  python infer.py --tta                 # every run of the dataset, flip TTA
  python infer.py --tta d4 --arch unetpp --folds 0,1
  python infer.py --checkpoint last     # the final epoch's weights instead of the best epoch's
  python infer.py --images new_xrays/   # any folder of images, predicted by every fold's model: set "new_xrays"

Reads runs/<dataset>/<arch>-<encoder>/fold<k>/ (config.json, best.pt or last.pt) and the fold file each run was
trained on; writes preds/ (layout in src/predict.py), preds/.../oof_scores.csv (Dice, IoU, HD95 per image and
class), preds/.../inference.json (OOF prediction speed, images/s) and prints mean +- std per fold. Run folders
without a finished epoch are skipped (and the exit status is 1).
"""
import argparse
import json
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd
import torch

from src import postprocess, tracking
from src.cache import open_cache
from src.canonical import load_index, spacing_of
from src.config import Config
from src.data import CachedSegmentation, default_workers
from src.folds import FoldFileError, fingerprint, load_folds
from src.images import IMAGE_SUFFIXES, read_image
from src.metrics import dice_by_group, image_scores, per_image, pooled_by_class
from src.models import ModelError
from src.parallel import thread_map
from src.predict import (FolderImages, SplitChanged, UnfinishedRun, check_set_name, checkpoint_file, file_sha256,
                         load_pred, load_trained_model, made_by, needs_prediction, pred_dir, read_split, resize_prob,
                         with_tta, write_predictions)


def parse_args(argv=None):
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=defaults.dataset)
    parser.add_argument("--tta", nargs="?", const="flip", default="none", choices=["none", "flip", "d4"],
                        help="test-time augmentation; --tta alone means flip")
    parser.add_argument("--arch", help="only runs of this architecture")
    parser.add_argument("--encoder", help="only runs of this encoder")
    parser.add_argument("--folds", help="only these folds, e.g. 0,1")
    parser.add_argument("--runs", help="only run folders matching this glob, e.g. 'unet*'")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="best.pt (best validation epoch) or last.pt (final epoch: its OOF score is not chosen on "
                             "the OOF images themselves)")
    parser.add_argument("--images", type=Path, help="predict this folder of images instead of the dataset's test split")
    parser.add_argument("--name", help="the prediction set's name for --images (default: the folder's name)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--overwrite", action="store_true", help="predict again images that already have a file")
    parser.add_argument("--tracker", choices=["wandb", "none"], help="log OOF scores (default: as the run was trained)")
    parser.add_argument("--runs-dir", default=defaults.runs_dir)
    parser.add_argument("--data-dir", default=defaults.data_dir)
    parser.add_argument("--folds-dir", default=defaults.folds_dir)
    parser.add_argument("--preds-dir", default="preds")
    return parser.parse_args(argv)


def find_runs(args) -> list:
    root = Path(args.runs_dir) / args.dataset
    runs = sorted(p.parent for p in root.glob("*/fold*/config.json"))
    runs = [r for r in runs if (not args.runs or fnmatch(r.parent.name, args.runs))
            and (not args.arch or r.parent.name.startswith(args.arch + "-"))
            and (not args.encoder or r.parent.name.endswith("-" + args.encoder))
            and (not args.folds or r.name[4:] in args.folds.split(","))]
    if not runs:
        sys.exit(f"infer: no training runs match in {root} (train one with `accelerate launch train.py ...`)")
    return runs


def image_set(args) -> tuple:
    """(name, image paths) of the prediction set --images DIR, or (None, None) for the dataset's test split."""
    if args.images is None:
        if args.name:
            sys.exit("infer: --name names the prediction set of --images DIR; pass --images too")
        return None, None
    if not args.images.is_dir():
        sys.exit(f"infer: --images {args.images}: no such folder")
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        sys.exit(f"infer: --images {args.images} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    by_stem = {}
    for path in paths:
        by_stem.setdefault(path.stem, []).append(path.name)
    twins = next((names for names in by_stem.values() if len(names) > 1), None)
    if twins:  # caught before any prediction: one would silently replace the other's
        sys.exit(f"infer: --images {args.images} holds {' and '.join(twins)}, whose predictions would share one "
                 f"file name; rename one of them")
    name = args.name or args.images.resolve().name
    try:
        check_set_name(name)
    except ValueError as error:
        sys.exit(f"infer: --name: {error}")
    return name, paths


def trained_split(run_dir: Path, args, index: pd.DataFrame) -> tuple:
    """(fold file record, folds) of the split run_dir was trained on, refused if the file changed since."""
    recorded = json.loads((run_dir / "config.json").read_text()).get("folds")
    try:
        if recorded is None:  # trained before runs recorded their fold file
            folds = load_folds(args.folds_dir, args.dataset, index)
            recorded = fingerprint(args.folds_dir, args.dataset)
            print(f"infer: warning: {run_dir} does not record its fold file (trained before runs did); assuming "
                  f"{recorded['file']} (--folds-dir) is the split it was trained on")
            return recorded, folds
        return recorded, read_split(recorded, f"{run_dir} was trained", index)
    except (FileNotFoundError, SplitChanged, FoldFileError) as error:
        sys.exit(f"infer: {error}")


def score_oof(out_dir: Path, folds: pd.DataFrame, dataset_dir: Path, meta: dict, index: pd.DataFrame) -> pd.DataFrame:
    """Dice, IoU and HD95 of every OOF prediction at its original size against its mask, kept in oof_scores.csv.

    The saved scores are reused while no OOF prediction is newer and the same images are covered. Every file must
    come from the model of its image's fold: one left from another split or format is refused.
    """
    files = {i: out_dir / "oof" / f"{i}.npz" for i in folds["id"] if (out_dir / "oof" / f"{i}.npz").exists()}
    saved = out_dir / "oof_scores.csv"
    if saved.exists() and saved.stat().st_mtime_ns > max((f.stat().st_mtime_ns for f in files.values()), default=0):
        scores = pd.read_csv(saved, dtype={"id": str})
        if set(scores["id"]) == set(files) and "hd95_pct" in scores:  # else scored by the older HD95 definition
            return scores
    fold_of = dict(zip(folds["id"], folds["fold"]))
    stale = next((i for i, f in files.items() if made_by(f).get("fold") != fold_of[i]), None)
    if stale is not None:  # a fold this call did not predict
        sys.exit(f"infer: {files[stale]} was not made by the model of fold {fold_of[stale]}, which holds {stale} in "
                 f"the run's fold file; predict that fold again (`python infer.py --folds {fold_of[stale]}` and "
                 f"your --dataset, --runs, --tta, --checkpoint)")
    extra = [c for c in ("tissue",) if c in index]
    spacing = [c for c in ("spacing_row_mm", "spacing_col_mm") if c in index]  # DICOM: HD95 in mm too
    info = folds.loc[folds["id"].isin(files), ["id", "fold"]].merge(index[["id", *extra, *spacing]], on="id")

    def score(row) -> list:
        pred = postprocess.apply(resize_prob(*load_pred(files[row.id])), postprocess.PLAIN[meta["task"]])
        mask = read_image(Path(dataset_dir) / "masks" / f"{row.id}.png")
        keys = {k: v for k, v in row._asdict().items() if k not in spacing}
        return [{**keys, **r} for r in image_scores(pred, mask, meta["classes"], spacing=spacing_of(row))]

    rows = thread_map(score, list(info.itertuples(index=False)), "score OOF")
    scores = pd.DataFrame([r for image_rows in rows for r in image_rows])
    scores.to_csv(saved, index=False)
    return scores


def fold_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over images of Dice, IoU and HD95 (px, % of the diagonal, mm where known), per fold and over all."""
    images = per_image(scores)
    table = pd.concat([images.assign(fold=images["fold"].astype(str)), images.assign(fold="all")])
    metrics = [m for m in ("dice", "iou", "hd95", "hd95_pct", "hd95_mm") if m in images]
    table = table.groupby("fold")[metrics].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    return table.reset_index()


def print_summary(name: str, scores: pd.DataFrame) -> None:
    print(f"\n{name}: OOF at original resolution, mean +- std over images ({scores['id'].nunique()} images)")
    for r in fold_table(scores).itertuples():
        print(f"  fold {r.fold:>3}: Dice {r.dice_mean:.4f} +- {r.dice_std:.4f}   IoU {r.iou_mean:.4f} +- {r.iou_std:.4f}"
              f"   HD95 {r.hd95_mean:.1f} px = {r.hd95_pct_mean:.2f}% of the diagonal"
              + (f" = {r.hd95_mm_mean:.1f} mm" if "hd95_mm_mean" in r._fields else ""))
    images = per_image(scores).set_index("id")
    if scores["class"].nunique() > 1:
        print("  per class (pooled Dice): " + ", ".join(f"{c} {d:.3f}" for c, d in pooled_by_class(scores).items()))
    if "tissue" in images:
        tissues = dice_by_group({"dice": images["dice"]}, images["tissue"])["dice"].sort_values()
        print("  per tissue (mean Dice): " + ", ".join(f"{t} {d:.3f}" for t, d in tissues.items()))


def training_summary(run_dir: Path) -> dict | None:
    """Wall time and speed of a run's training over all its folds, from their history.csv, for the leaderboard."""
    histories = [pd.read_csv(h) for h in sorted(run_dir.glob("fold*/history.csv"))]
    if not histories:
        return None
    epochs = pd.concat(histories)
    return {"folds": len(histories), "minutes": epochs["seconds"].sum() / 60,
            "epochs_per_fold": len(epochs) / len(histories), "images_per_s": epochs["train_images_per_s"].mean()}


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = default_workers(args.workers)
    runs = find_runs(args)
    dataset_dir = Path(args.data_dir) / args.dataset
    try:
        index = load_index(dataset_dir)
    except FileNotFoundError as error:
        sys.exit(f"infer: {error}")
    set_name, set_paths = image_set(args)
    scored, skipped, speed = {}, [], {}
    for run_dir in runs:
        try:
            weights = checkpoint_file(run_dir, args.checkpoint)
            model, cfg, meta = load_trained_model(run_dir, weights, device)
        except UnfinishedRun as error:  # a study's other runs are still worth predicting
            print(f"infer: skipping {error}")
            skipped.append(run_dir)
            continue
        except (FileNotFoundError, ModelError) as error:
            sys.exit(f"infer: {error}")
        split, folds = trained_split(run_dir, args, index)
        out_dir = pred_dir(args.preds_dir, args.dataset, cfg.run_name, args.tta, args.checkpoint)
        if out_dir in scored and scored[out_dir][3]["sha256"] != split["sha256"]:
            sys.exit(f"infer: the folds of {run_dir.parent} were trained on different splits ({split['file']}, "
                     f"{scored[out_dir][3]['file']}); retrain them on one")
        parameters_m = sum(p.numel() for p in model.parameters()) / 1e6  # for the leaderboard's per-encoder table
        model = with_tta(model, meta["task"], args.tta)
        model_id = {"fold": cfg.fold, "weights": file_sha256(weights)}
        images, masks = open_cache(dataset_dir, cfg.size)
        jobs = [("oof", index[index["id"].isin(folds.loc[folds["fold"] == cfg.fold, "id"])], out_dir / "oof")]
        if set_name is None:
            jobs.append(("test", index[index["split"] == "test"], out_dir / "test" / f"fold{cfg.fold}"))
        for kind, rows, target in jobs:
            todo = rows[[needs_prediction(target / f"{i}.npz", model_id, args.overwrite) for i in rows["id"]]]
            if len(todo):  # index labels are cache rows, which CachedSegmentation hands back as keys
                sizes = dict(zip(todo.index, zip(todo["height"], todo["width"])))
                ids = dict(zip(todo.index, todo["id"]))
                started = time.perf_counter()
                write_predictions(model, CachedSegmentation(images, masks, todo.index), ids, sizes, target,
                                  model_id, args.batch_size, workers, device, f"{cfg.run_name} fold{cfg.fold} {kind}")
                if kind == "oof":  # the run's prediction speed, for the leaderboard
                    speed.setdefault(out_dir, []).append((len(todo), time.perf_counter() - started))
        if set_name is not None:
            target = out_dir / "sets" / set_name / f"fold{cfg.fold}"
            todo = [p for p in set_paths if needs_prediction(target / f"{p.stem}.npz", model_id, args.overwrite)]
            try:
                write_predictions(model, FolderImages(todo, cfg.size, meta["channels"]),
                                  {i: p.stem for i, p in enumerate(todo)}, None, target, model_id, args.batch_size,
                                  workers, device, f"{cfg.run_name} fold{cfg.fold} {set_name}")
            except ValueError as error:  # from a loader worker the file's own message is the last line
                sys.exit(f"infer: {str(error).strip().splitlines()[-1]}")
        # What ensemble.py needs to know about the run, with the split its OOF predictions follow.
        cfg.save(out_dir.parent / "config.json", meta=meta, folds=split)
        scored[out_dir] = (cfg, meta, run_dir.parent, split, folds, parameters_m)
    for out_dir, (cfg, meta, trained, _, folds, parameters_m) in scored.items():  # one per run: its folds share out_dir
        (out_dir.parent / "training.json").write_text(json.dumps(
            {**training_summary(trained), "parameters_m": parameters_m}, indent=2) + "\n")
        if out_dir in speed:  # OOF prediction (read, TTA model, write) in images/s; else an earlier record stays
            predicted, seconds = map(sum, zip(*speed[out_dir]))
            (out_dir / "inference.json").write_text(json.dumps({
                "images": predicted, "seconds": seconds, "images_per_s": predicted / seconds,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}, indent=2) + "\n")
        scores = score_oof(out_dir, folds, dataset_dir, meta, index)
        print_summary(f"{cfg.run_name} (tta {args.tta}, {args.checkpoint}.pt)", scores)
        if (args.tracker or cfg.tracker) == "wandb":
            table = fold_table(scores)
            name = f"oof-tta-{args.tta}" + ("-last" if args.checkpoint == "last" else "")
            tracking.log_tables(args.dataset, cfg.run_name, name, "infer", out_dir, {"oof_by_fold": table},
                                table.set_index("fold").loc["all"].to_dict())
    if skipped:
        sys.exit(f"infer: skipped {len(skipped)} run folder(s) without the weights to predict with (listed above); "
                 f"the others were predicted")


if __name__ == "__main__":
    main()
