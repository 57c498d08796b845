"""Average fold x architecture predictions into final masks, tune post-processing on OOF data, write the scores.

  python ensemble.py                         # every run with predictions for the dataset
  python ensemble.py --runs 'unet*' --weights unet-resnet34=1,unetpp-resnet34=2

Reads preds/<dataset>/ (infer.py) and data/<dataset>/masks; writes ensemble/<dataset>/: masks/<id>.png (final masks
at original size: 0/255 for binary, class index for multiclass), submission.csv (Kaggle RLE), scores.json,
leaderboard.md, comparison.png and scores.png.
"""
import argparse
import json
import sys
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd

from src import postprocess, report, tracking
from src.canonical import load_index, load_meta, read_dataset_image
from src.folds import load_folds
from src.images import read_image, write_png
from src.metrics import dice_by_group, image_scores, per_image, pooled_by_class
from src.parallel import thread_map
from src.predict import OldPredictionFormat, mean_at, read_mean
from src.rle import rle_encode
from src.stats import paired_comparison

TTA_MODES = ["none", "flip", "d4"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--tta", choices=["best", "none", "flip", "d4"], default="best",
                        help="which TTA predictions to use per run (best: the highest OOF Dice of those predicted)")
    parser.add_argument("--runs", help="only runs matching this glob, e.g. 'unet*-resnet34'")
    parser.add_argument("--weights", help="test-time run weights, e.g. unet-resnet34=1,unetpp-resnet34=2 (default 1)")
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


def oof_dice(tta_dir: Path) -> float:
    """Mean per-image Dice of the OOF scores infer.py wrote in one tta-* folder."""
    return per_image(pd.read_csv(tta_dir / "oof_scores.csv", dtype={"id": str}))["dice"].mean()


def find_predictions(preds_root: Path, tta: str, runs_glob: str | None) -> dict:
    """{run name: its chosen tta-* folder}; only runs whose OOF predictions were scored by infer.py."""
    chosen = {}
    for run in sorted(p for p in preds_root.iterdir() if p.is_dir()) if preds_root.is_dir() else []:
        if runs_glob and not fnmatch(run.name, runs_glob):
            continue
        available = [run / f"tta-{m}" for m in TTA_MODES if (run / f"tta-{m}" / "oof_scores.csv").exists()]
        if tta == "best" and available:  # chosen on OOF scores, like the post-processing; ties keep the cheaper TTA
            chosen[run.name] = max(available, key=oof_dice)
        elif run / f"tta-{tta}" in available:
            chosen[run.name] = run / f"tta-{tta}"
    if not chosen:
        sys.exit(f"ensemble: no scored predictions in {preds_root} (run `python infer.py --tta` first)")
    return chosen


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def summarize_scores(scores: pd.DataFrame) -> dict:
    images = per_image(scores)
    fold_means = images.groupby("fold")["dice"].mean()
    return {"dice": images["dice"].mean(), "dice_image_std": images["dice"].std(ddof=0),
            "dice_fold_mean": fold_means.mean(), "dice_fold_std": fold_means.std(ddof=0),
            "iou": images["iou"].mean(), "hd95": images["hd95"].mean(),
            "folds": {int(f): d for f, d in fold_means.items()}, "per_class": pooled_by_class(scores)}


def main(argv=None):
    try:
        run(parse_args(argv))
    except OldPredictionFormat as error:
        sys.exit(f"ensemble: {error}")


def run(args):
    dataset_dir = Path(args.data_dir) / args.dataset
    try:
        meta, folds = load_meta(dataset_dir), load_folds(args.folds_dir, args.dataset)
        index = load_index(dataset_dir).set_index("id", drop=False)
    except FileNotFoundError as error:
        sys.exit(f"ensemble: {error}")
    by = args.by or ("tissue" if "tissue" in index else None)
    if by and by not in index:
        sys.exit(f"ensemble: --by {by}: no such column in {dataset_dir / 'index.csv'} (have: {', '.join(index.columns)})")
    runs = find_predictions(Path(args.preds_dir) / args.dataset, args.tta, args.runs)
    weight_of = {name: 1.0 for name in runs}
    for item in filter(None, (args.weights or "").split(",")):
        name, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            sys.exit(f"ensemble: --weights {item}: write RUN=WEIGHT, e.g. {next(iter(runs), 'unet-resnet34')}=1")
        if name not in runs:
            sys.exit(f"ensemble: --weights names '{name}', which has no predictions (have: {', '.join(runs)})")
        weight_of[name] = weight
    out = Path(args.out_dir) / args.dataset
    (out / "masks").mkdir(parents=True, exist_ok=True)

    # 1. Each run on its own, from the OOF scores infer.py wrote.
    run_scores = {name: pd.read_csv(path / "oof_scores.csv", dtype={"id": str}) for name, path in runs.items()}
    summaries = {name: {"tta": path.name[4:], **summarize_scores(run_scores[name]),
                        "training": read_json(path.parent / "training.json")} for name, path in runs.items()}
    tta_gain = {}
    for name, path in runs.items():
        plain = path.parent / "tta-none"
        if path.name != "tta-none" and (plain / "oof_scores.csv").exists():
            tta_gain[name] = {"tta": path.name[4:], "gain": summaries[name]["dice"] - oof_dice(plain)}

    # 2. Tune post-processing on the averaged OOF probabilities (test predictions are never read here).
    oof_ids = [i for i in folds["id"] if all((p / "oof" / f"{i}.npz").exists() for p in runs.values())]
    if not oof_ids:
        sys.exit(f"ensemble: no training image has an OOF prediction from every run ({', '.join(runs)}); "
                 f"run infer.py for all folds of each run")
    if len(oof_ids) < len(folds):
        print(f"ensemble: {len(folds) - len(oof_ids)} training images lack an OOF prediction from some run; "
              f"scoring the {len(oof_ids)} that all runs predicted")

    def truth(image_id):
        return read_image(dataset_dir / "masks" / f"{image_id}.png")

    candidates = postprocess.binary_candidates()
    def read_and_tune(image_id):  # each OOF file is read once: the mean stays in memory at the models' size
        maps, size = read_mean([p / "oof" / f"{image_id}.npz" for p in runs.values()], [weight_of[n] for n in runs])
        target = postprocess.shrink(truth(image_id), args.tune_size)
        probs = mean_at(maps, target.shape)  # straight from the models' size to the tuning size
        if meta["task"] == "binary":
            return (maps, size), postprocess.binary_candidate_dice(probs[0], target, candidates)
        return (maps, size), postprocess.multiclass_candidate_dice(probs, target)

    tuned = thread_map(read_and_tune, oof_ids, "tune post-processing (OOF)")
    oof_means = {image_id: mean for image_id, (mean, _) in zip(oof_ids, tuned)}
    settings = postprocess.choose(meta["task"], np.stack([candidate_scores for _, candidate_scores in tuned]))

    # 3. Score the ensemble at original size with those settings, and without them (the raw average: Dice only).
    def score(image_id):
        probs, target = mean_at(*oof_means[image_id]), truth(image_id)
        plain = postprocess.apply(probs, postprocess.PLAIN[meta["task"]])
        raw = np.mean([r["dice"] for r in image_scores(plain, target, meta["classes"], with_hd95=False)])
        return image_scores(postprocess.apply(probs, settings), target, meta["classes"]), raw

    fold_of = dict(zip(folds["id"], folds["fold"]))
    scored = thread_map(score, oof_ids, "score ensemble (OOF)")
    raw = [r for _, r in scored]
    ensemble_scores = pd.DataFrame([{"id": i, "fold": fold_of[i], **r} for i, (rows, _) in zip(oof_ids, scored)
                                    for r in rows])
    ensemble_scores.to_csv(out / "oof_scores.csv", index=False)
    ensemble = {**summarize_scores(ensemble_scores), "dice_raw": float(np.mean(raw))}
    best_single = max(summaries, key=lambda n: summaries[n]["dice"])

    # 4. Unet++ against Unet with the same encoder, image by image.
    comparisons = []
    for name in runs:
        arch, encoder = name.split("-", 1)
        if arch == "unet" and f"unetpp-{encoder}" in runs:
            a = per_image(run_scores[name]).set_index("id")["dice"]
            b = per_image(run_scores[f"unetpp-{encoder}"]).set_index("id")["dice"]
            common = a.index.intersection(b.index)
            comparisons.append({"encoder": encoder, **paired_comparison(a[common].to_numpy(), b[common].to_numpy())})

    # 5. Test images: mean over every run and fold, post-processed, as PNG and RLE.
    fold_dirs = [(name, d) for name, path in runs.items() for d in sorted((path / "test").glob("fold*"))]
    test_ids = sorted({p.stem for _, d in fold_dirs for p in d.glob("*.npz")})
    incomplete = [i for i in test_ids if not all((d / f"{i}.npz").exists() for _, d in fold_dirs)]
    if incomplete:
        print(f"ensemble: {len(incomplete)} test images (e.g. {incomplete[0]}) lack a prediction from some of the "
              f"{len(fold_dirs)} fold models; they are averaged over the models that predicted them")

    def test_mask(image_id):
        files = [(d / f"{image_id}.npz", weight_of[name]) for name, d in fold_dirs if (d / f"{image_id}.npz").exists()]
        final = postprocess.apply(mean_at(*read_mean(*zip(*files))), settings)
        write_png(out / "masks" / f"{image_id}.png", final * 255 if meta["task"] == "binary" else final)
        if meta["task"] == "binary":
            return [{"id": image_id, "rle": rle_encode(final)}]
        return [{"id": image_id, "class": c, "rle": rle_encode(final == k)} for k, c in enumerate(meta["classes"]) if k]

    test_rows = [r for rows in thread_map(test_mask, test_ids, "test masks") for r in rows]
    pd.DataFrame(test_rows, columns=["id", "rle"] if meta["task"] == "binary" else ["id", "class", "rle"]).to_csv(
        out / "submission.csv", index=False)

    # 6. Scores, leaderboard, figures.
    per_class = {c: {**{n: s["per_class"][c] for n, s in summaries.items()}, "ensemble": ensemble["per_class"][c]}
                 for c in meta["classes"][1:]} if len(meta["classes"]) > 2 else {}
    image_dice = {n: per_image(s).set_index("id")["dice"].loc[oof_ids] for n, s in run_scores.items()}
    subgroups = {"column": by, "table": dice_by_group(
        {**image_dice, "ensemble": per_image(ensemble_scores).set_index("id")["dice"]}, index[by]
    ).reset_index().to_dict("records")} if by else None
    scores = {"dataset": args.dataset, "runs": summaries, "ensemble": ensemble, "best_single": best_single,
              "ensemble_gain": ensemble["dice"] - summaries[best_single]["dice"], "tta_gain": tta_gain,
              "per_class": per_class, "by": subgroups, "comparisons": comparisons, "postprocess": settings,
              "weights": weight_of, "test_images": len(test_ids)}
    (out / "scores.json").write_text(json.dumps(scores, indent=2, default=float) + "\n")
    (out / "leaderboard.md").write_text(report.leaderboard_markdown(scores))
    report.score_bars(out / "scores.png", scores)
    shown = report.pick_examples(image_dice, args.figures)
    if shown:
        report.comparison_grid(out / "comparison.png", [
            (i, read_dataset_image(dataset_dir, index.loc[i], meta["channels"]), truth(i),
             {n: postprocess.apply(mean_at(*read_mean([p / "oof" / f"{i}.npz"], [1.0])), settings)
              for n, p in runs.items()},
             {n: image_dice[n][i] for n in runs}) for i in shown], meta["classes"])
    trackers = {json.loads((p.parent / "config.json").read_text()).get("tracker") for p in runs.values()
                if (p.parent / "config.json").exists()}
    if (args.tracker or ("wandb" if "wandb" in trackers else "none")) == "wandb":
        table = pd.DataFrame([{"model": n, **{k: v for k, v in r.items() if not isinstance(v, dict)}}
                              for n, r in {**summaries, "ensemble": ensemble}.items()])
        tracking.log_tables(args.dataset, "ensemble", "ensemble", "ensemble", out, {"leaderboard": table},
                            {"ensemble_dice": ensemble["dice"], "ensemble_gain": scores["ensemble_gain"]})
    print(report.leaderboard_markdown(scores))
    print(f"wrote {out}/: {len(test_ids)} test masks, submission.csv, scores.json, leaderboard.md, figures")


if __name__ == "__main__":
    main()
