"""A run's OOF predictions scored at original size against the masks (oof_scores.csv), and what infer.py prints of
them: mean and std per fold, per class, per tissue."""
import sys
from pathlib import Path

import pandas as pd
from tqdm.contrib.concurrent import thread_map

from src import runs as ledger, volume_scores
from src.runs import load_pred, made_by
from src.portable import postprocess
from src.canonical import spacing_of
from src.portable.files import write_atomic
from src.portable.images import HOST_THREADS, read_image
from src.metrics import dice_by_group, image_scores, per_image, pooled_by_class
from src.portable.maps import resize_prob


def score_oof(predictions: ledger.PredictionSet, folds: pd.DataFrame, dataset_dir: Path, meta: dict,
              index: pd.DataFrame, dirs: dict) -> pd.DataFrame:
    """Dice, IoU and HD95 of every OOF prediction at its original size against its mask, kept in oof_scores.csv.

    The saved scores are reused while they were made from the weights the OOF files record and the same images are
    covered. Every file must come from the current weights of its image's fold: one left from another split, model
    or earlier weights is refused with the command that predicts it again (dirs: its folder flags).
    """
    dataset = Path(dataset_dir).name
    out_dir = predictions.folder
    on_disk = ledger.prediction_files(out_dir / "oof")
    files = {i: on_disk[i] for i in folds["id"] if i in on_disk}
    fold_of = dict(zip(folds["id"], folds["fold"]))
    stale = next((i for i, f in files.items() if made_by(f).get("fold") != fold_of[i]), None)
    if stale is not None:  # a fold this call did not predict
        sys.exit(f"infer: {files[stale]} was not made by the model of fold {fold_of[stale]}, which holds {stale} in "
                 f"the run's fold file; predict that fold again: "
                 f"`{predictions.renew_command(dataset, [fold_of[stale]], dirs)}`")
    renew = predictions.stale_folds("oof", sorted({fold_of[i] for i in files}))
    if renew:
        sys.exit(f"infer: the OOF predictions of fold {', '.join(map(str, renew))} in {out_dir / 'oof'} were not made "
                 f"by the current weights of {predictions.run}; renew them: `"
                 f"{predictions.renew_command(dataset, renew, dirs)}`")
    saved, made_with = out_dir / "oof_scores.csv", predictions.weights("oof")
    if saved.exists() and predictions.provenance.get("scored") == {str(f): w for f, w in made_with.items()}:
        scores = pd.read_csv(saved, dtype={"id": str})
        if set(scores["id"]) == set(files):
            return scores
    extra = [c for c in ("tissue",) if c in index]
    spacing = [c for c in ("spacing_row_mm", "spacing_col_mm") if c in index]  # DICOM: HD95 in mm too
    info = folds.loc[folds["id"].isin(files), ["id", "fold"]].merge(index[["id", *extra, *spacing]], on="id")

    def score(row) -> list:
        pred = postprocess.apply(resize_prob(*load_pred(files[row.id])), postprocess.PLAIN[meta["task"]])
        mask = read_image(Path(dataset_dir) / "masks" / f"{row.id}.png")
        keys = {k: v for k, v in row._asdict().items() if k not in spacing}
        return [{**keys, **r} for r in image_scores(pred, mask, meta["classes"], spacing=spacing_of(row),
                                                    task=meta["task"])]

    rows = thread_map(score, list(info.itertuples(index=False)), max_workers=HOST_THREADS, desc="score OOF",
                      unit="img")
    scores = pd.DataFrame([r for image_rows in rows for r in image_rows])
    write_atomic(saved, scores.to_csv(index=False))
    ledger.record_scores(out_dir, made_with)
    return scores


def fold_table(scores: pd.DataFrame, all_folds: list) -> pd.DataFrame:
    """Mean and std over images of Dice, IoU and HD95 (px, % of the diagonal, mm where known), per fold and over the
    folds scored: "all" only when they are all the split's folds, else their list (e.g. "0+1"; none for one fold)."""
    images = per_image(scores)
    scored = [str(f) for f in sorted(images["fold"].unique().tolist())]
    over = "all" if len(scored) == len(set(all_folds)) else "+".join(scored)
    rows = [*scored, over] if len(scored) > 1 else scored
    table = pd.concat([images.assign(fold=images["fold"].astype(str)), images.assign(fold=over)])
    metrics = [m for m in ("dice", "iou", "hd95", "hd95_pct", "hd95_mm") if m in images]
    table = table.groupby("fold")[metrics].agg(["mean", "std"]).reindex(rows)
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    return table.rename_axis("fold").reset_index()


def print_summary(name: str, scores: pd.DataFrame, table: pd.DataFrame) -> None:
    print(f"\n{name}: OOF at original resolution, mean +- std over images ({scores['id'].nunique()} images)")
    for r in table.itertuples():
        print(f"  fold {r.fold:>3}: Dice {r.dice_mean:.4f} +- {r.dice_std:.4f}   IoU {r.iou_mean:.4f} +- {r.iou_std:.4f}"
              f"   HD95 {r.hd95_mean:.1f} px = {r.hd95_pct_mean:.2f}% of the diagonal"
              + (f" = {r.hd95_mm_mean:.1f} mm" if "hd95_mm_mean" in r._fields else ""))
    images = per_image(scores).set_index("id")
    if scores["class"].nunique() > 1:
        print("  per class (pooled Dice): " + ", ".join(f"{c} {d:.3f}" for c, d in pooled_by_class(scores).items()))
    if "tissue" in images:
        tissues = dice_by_group({"dice": images["dice"]}, images["tissue"])["dice"].sort_values()
        print("  per tissue (mean Dice): " + ", ".join(f"{t} {d:.3f}" for t, d in tissues.items()))


def volume_table(oof_folder: Path, dataset_dir: Path, meta: dict, index: pd.DataFrame, scored: set) -> pd.DataFrame:
    """A volume dataset's OOF cases in 3D, raw (no post-processing): one row per case and label (src.volume_scores)
    over the cases whose every slice is in `scored`."""
    cases = volume_scores.case_slices(index, scored)
    files = ledger.prediction_files(oof_folder)

    def mask(image_id: str):
        return postprocess.apply(resize_prob(*load_pred(files[image_id])), postprocess.PLAIN[meta["task"]])

    return volume_scores.volume_table(mask, lambda i: read_image(Path(dataset_dir) / "masks" / f"{i}.png"), cases,
                                      volume_scores.read_records(dataset_dir), meta["volumes"]["axis"],
                                      meta["classes"], task=meta["task"])


def volume_line(predictions: ledger.PredictionSet, dataset_dir: Path, meta: dict, index: pd.DataFrame,
                scored: set) -> str:
    """What infer.py prints of a run's OOF cases in 3D: Dice per case and, per label, Dice and HD95 (mm)."""
    summary = volume_scores.summary(volume_table(predictions.folder / "oof", dataset_dir, meta, index, scored))
    labels = ", ".join(f"{name} {c['dice']:.4f} (HD95 {c['hd95_mm']:.2f} mm)" for name, c in summary["per_class"].items())
    return (f"  in 3D over {summary['cases']} cases (slices stacked back, raw): Dice {summary['dice']:.4f} per case; "
            f"{labels}")


def training_summary(run_dir: Path) -> dict | None:
    """Wall time and speed of a run's training over all its folds, from their history.csv, for the leaderboard."""
    histories = [pd.read_csv(h) for h in sorted(run_dir.glob("fold*/history.csv"))]
    if not histories:
        return None
    epochs = pd.concat(histories)
    return {"folds": len(histories), "minutes": epochs["seconds"].sum() / 60,
            "epochs_per_fold": len(epochs) / len(histories), "images_per_s": epochs["train_images_per_s"].mean()}
