"""Predict out-of-fold and test images with trained runs, at the model's size, and score the OOF ones at original size.

  python infer.py --tta                 # every run of the dataset, flip TTA
  python infer.py --tta d4 --arch unetpp --folds 0,1
  python infer.py --images new_xrays/   # any folder of images, predicted by every fold's model

Reads runs/<dataset>/<arch>-<encoder>/fold<k>/ (config.json + best.pt), writes preds/ (see src/predict.py),
preds/.../oof_scores.csv (Dice, IoU, HD95 per image and class) and prints mean +- std per fold.
"""
import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from src import postprocess, tracking
from src.cache import open_cache
from src.canonical import load_index
from src.config import Config
from src.data import CachedSegmentation, channels_first, default_workers, make_loader
from src.folds import load_folds
from src.images import IMAGE_SUFFIXES, read_image, resize, to_channels
from src.metrics import dice_by_group, image_scores, per_image, pooled_by_class
from src.models import ModelError
from src.parallel import thread_map
from src.predict import (OldPredictionFormat, is_current_format, load_pred, load_trained_model, pred_dir, resize_prob,
                         save_pred, to_uint8, with_tta)


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
    parser.add_argument("--images", type=Path, help="predict this folder of images instead of the dataset's test split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--overwrite", action="store_true", help="predict again images that already have a file")
    parser.add_argument("--tracker", choices=["wandb", "none"], help="log OOF scores (default: as the run was trained)")
    parser.add_argument("--runs-dir", default=defaults.runs_dir)
    parser.add_argument("--data-dir", default=defaults.data_dir)
    parser.add_argument("--folds-dir", default=defaults.folds_dir)
    parser.add_argument("--preds-dir", default="preds")
    return parser.parse_args(argv)


class FolderImages(Dataset):
    """Images from any folder, decoded and resized on the fly: (uint8 C x S x S, original (H, W), position).

    The same rules as prepare (src/images.py): any colour mode, 16-bit or DICOM becomes the run's channel count."""

    def __init__(self, paths: list, size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        original = to_channels(read_image(self.paths[i]), self.channels, str(self.paths[i]))
        return channels_first(resize(original, self.size, is_mask=False)), torch.tensor(original.shape[:2]), i


def needs_prediction(path: Path, weights_time: int, overwrite: bool) -> bool:
    """Missing, older than the weights (the run was retrained since), in the old full-size format, or --overwrite."""
    return (overwrite or not path.exists() or path.stat().st_mtime_ns < weights_time
            or not is_current_format(path))


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


@torch.no_grad()
def predict(model, dataset: Dataset, ids: dict, sizes: dict | None, out_dir: Path, batch_size: int, workers: int,
            device, desc: str) -> None:
    """Stream batches through the model and write one file per image at the model's size; memory stays flat.

    The dataset's last item is a key into ids (and sizes; without sizes its second item is the original size).
    """
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    writing = []
    with ThreadPoolExecutor(2) as writer:  # compressing and writing a batch overlaps the model's next one
        for batch in tqdm(loader, desc=desc, unit="batch"):
            images, keys = batch[0], batch[-1].tolist()
            originals = [sizes[k] for k in keys] if sizes is not None else batch[1].tolist()
            with autocast:
                probs = model(images.to(device, non_blocking=True)).float()
            maps = to_uint8(probs)
            for done in writing:  # at most one batch waits to be written; a failed write raises here
                done.result()
            writing = [writer.submit(save_pred, out_dir / f"{ids[key]}.npz", prob, original)
                       for key, prob, original in zip(keys, maps, originals)]
        for done in writing:
            done.result()


def score_oof(out_dir: Path, folds: pd.DataFrame, dataset_dir: Path, meta: dict, index: pd.DataFrame) -> pd.DataFrame:
    """Dice, IoU and HD95 of every OOF prediction at its original size against its mask, kept in oof_scores.csv.

    The saved scores are reused while no OOF prediction is newer and the same images are covered.
    """
    files = {i: out_dir / "oof" / f"{i}.npz" for i in folds["id"] if (out_dir / "oof" / f"{i}.npz").exists()}
    saved = out_dir / "oof_scores.csv"
    if saved.exists() and saved.stat().st_mtime_ns > max((f.stat().st_mtime_ns for f in files.values()), default=0):
        scores = pd.read_csv(saved, dtype={"id": str})
        if set(scores["id"]) == set(files):
            return scores
    extra = [c for c in ("tissue",) if c in index]
    info = folds.loc[folds["id"].isin(files), ["id", "fold"]].merge(index[["id", *extra]], on="id")

    def score(row) -> list:
        pred = postprocess.apply(resize_prob(*load_pred(files[row.id])), postprocess.PLAIN[meta["task"]])
        mask = read_image(Path(dataset_dir) / "masks" / f"{row.id}.png")
        return [{**row._asdict(), **r} for r in image_scores(pred, mask, meta["classes"])]

    rows = thread_map(score, list(info.itertuples(index=False)), "score OOF")
    scores = pd.DataFrame([r for image_rows in rows for r in image_rows])
    scores.to_csv(saved, index=False)
    return scores


def fold_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over images of Dice, IoU and HD95, per fold and over all folds."""
    images = per_image(scores)
    table = pd.concat([images.assign(fold=images["fold"].astype(str)), images.assign(fold="all")])
    table = table.groupby("fold")[["dice", "iou", "hd95"]].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    return table.reset_index()


def print_summary(name: str, scores: pd.DataFrame) -> None:
    print(f"\n{name}: OOF at original resolution, mean +- std over images ({scores['id'].nunique()} images)")
    for r in fold_table(scores).itertuples():
        print(f"  fold {r.fold:>3}: Dice {r.dice_mean:.4f} +- {r.dice_std:.4f}   IoU {r.iou_mean:.4f} +- {r.iou_std:.4f}"
              f"   HD95 {r.hd95_mean:.1f} px")
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
        index, folds = load_index(dataset_dir), load_folds(args.folds_dir, args.dataset)
    except FileNotFoundError as error:
        sys.exit(f"infer: {error}")
    if args.images and not args.images.is_dir():
        sys.exit(f"infer: --images {args.images}: no such folder")
    test_paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if args.images else None
    if test_paths == []:
        sys.exit(f"infer: --images {args.images} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    scored = {}
    for run_dir in runs:
        try:
            model, cfg, meta = load_trained_model(run_dir, device)
        except (FileNotFoundError, ModelError) as error:
            sys.exit(f"infer: {error}")
        model = with_tta(model, meta["task"], args.tta)
        weights_time = (run_dir / "best.pt").stat().st_mtime_ns
        out_dir = pred_dir(args.preds_dir, args.dataset, cfg.run_name, args.tta)
        images, masks = open_cache(dataset_dir, cfg.size)
        jobs = [("oof", index[index["id"].isin(folds.loc[folds["fold"] == cfg.fold, "id"])], out_dir / "oof")]
        if test_paths is None:
            jobs.append(("test", index[index["split"] == "test"], out_dir / "test" / f"fold{cfg.fold}"))
        for kind, rows, target in jobs:
            todo = rows[[needs_prediction(target / f"{i}.npz", weights_time, args.overwrite) for i in rows["id"]]]
            if len(todo):  # index labels are cache rows, which CachedSegmentation hands back as keys
                predict(model, CachedSegmentation(images, masks, todo.index), dict(zip(todo.index, todo["id"])),
                        dict(zip(todo.index, zip(todo["height"], todo["width"]))), target, args.batch_size, workers,
                        device, f"{cfg.run_name} fold{cfg.fold} {kind}")
        if test_paths is not None:
            target = out_dir / "test" / f"fold{cfg.fold}"
            todo = [p for p in test_paths if needs_prediction(target / f"{p.stem}.npz", weights_time, args.overwrite)]
            try:
                predict(model, FolderImages(todo, cfg.size, meta["channels"]), {i: p.stem for i, p in enumerate(todo)},
                        None, target, args.batch_size, workers, device, f"{cfg.run_name} fold{cfg.fold} images")
            except ValueError as error:  # from a loader worker the file's own message is the last line
                sys.exit(f"infer: {str(error).strip().splitlines()[-1]}")
        cfg.save(out_dir.parent / "config.json", meta=meta)  # what ensemble.py needs to know about the run
        scored[out_dir] = (cfg, meta, run_dir.parent)
    for out_dir, (cfg, meta, trained) in scored.items():  # one entry per run: its folds share out_dir
        (out_dir.parent / "training.json").write_text(json.dumps(training_summary(trained), indent=2) + "\n")
        try:
            scores = score_oof(out_dir, folds, dataset_dir, meta, index)
        except OldPredictionFormat as error:  # a fold this call did not predict again
            sys.exit(f"infer: {error}")
        print_summary(f"{cfg.run_name} (tta {args.tta})", scores)
        if (args.tracker or cfg.tracker) == "wandb":
            table = fold_table(scores)
            tracking.log_tables(args.dataset, cfg.run_name, f"oof-tta-{args.tta}", "infer", out_dir,
                                {"oof_by_fold": table}, table.set_index("fold").loc["all"].to_dict())


if __name__ == "__main__":
    main()
