"""Average fold x architecture predictions into final masks, tune TTA and post-processing on OOF data, write scores.

  python ensemble.py                         # every run with predictions for the dataset
  python ensemble.py --runs 'unet*' --weights unet-resnet34=1,unetpp-resnet34=2
  python ensemble.py --checkpoint last --set new_xrays   # last.pt's predictions; masks of infer.py --images new_xrays/

Reads preds/<dataset>/ (infer.py) and data/<dataset>/masks; writes ensemble/<dataset>/: masks/<id>.png (final masks
at original size: 0/255 for binary, class index for multiclass), submission.csv (Kaggle RLE), scores.json,
leaderboard.md, comparison.png and scores.png; with --set NAME the masks and submission.csv of that prediction set
go to ensemble/<dataset>/sets/NAME/ instead. The scores are cross-validated: each fold is scored with the TTA and
post-processing chosen on the other folds; the test masks use the choices made on all OOF images.
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
from src.folds import fingerprint, load_folds
from src.images import read_image, write_png
from src.metrics import dice_by_group, image_scores, per_image, pooled_by_class
from src.parallel import thread_map
from src.predict import OldPredictionFormat, SplitChanged, check_set_name, mean_at, pred_dir, read_mean, read_split
from src.rle import rle_encode
from src.stats import holm, paired_comparison

TTA_MODES = ["none", "flip", "d4"]
ALPHA = 0.05  # significance level of the Unet++ vs Unet comparisons, after Holm's adjustment


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--tta", choices=["best", "none", "flip", "d4"], default="best",
                        help="which TTA predictions to use per run (best: the highest OOF Dice of those predicted)")
    parser.add_argument("--compare-tta", choices=TTA_MODES,
                        help="TTA of both runs in the Unet++ vs Unet comparison (default: the most augmented mode "
                             "both were predicted with: d4, else flip, else none)")
    parser.add_argument("--runs", help="only runs matching this glob, e.g. 'unet*-resnet34'")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="the predictions of best.pt or last.pt (infer.py --checkpoint)")
    parser.add_argument("--set", help="write the masks of this prediction set (infer.py --images DIR --name NAME) "
                                      "instead of the dataset's test split")
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


def find_predictions(preds_dir: Path, dataset: str, tta: str, runs_glob: str | None, checkpoint: str = "best") -> dict:
    """{run name: its chosen tta-* folder}; only runs whose OOF predictions (of that checkpoint) infer.py scored."""
    root = Path(preds_dir) / dataset
    chosen = {}
    for run in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if runs_glob and not fnmatch(run.name, runs_glob):
            continue
        folders = {m: pred_dir(preds_dir, dataset, run.name, m, checkpoint) for m in TTA_MODES}
        available = [f for f in folders.values() if (f / "oof_scores.csv").exists()]
        if tta == "best" and available:  # chosen on OOF scores, like the post-processing; ties keep the cheaper TTA
            chosen[run.name] = max(available, key=oof_dice)
        elif folders.get(tta) in available:
            chosen[run.name] = folders[tta]
    if not chosen:
        sys.exit(f"ensemble: no scored predictions of {checkpoint}.pt in {root} (run `python infer.py --tta "
                 f"--checkpoint {checkpoint}` first)")
    return chosen


def recorded_split(runs: dict, args) -> pd.DataFrame:
    """The folds that every run's predictions were made on (infer.py records the fold file in the preds' config.json):
    one split for all, unchanged since."""
    recorded = {name: (read_json(path.parent / "config.json") or {}).get("folds") for name, path in runs.items()}
    lacking = [name for name, split in recorded.items() if split is None]
    try:
        if lacking:  # predicted before infer.py recorded the split
            load_folds(args.folds_dir, args.dataset)  # a clear error if it is missing
            assumed = fingerprint(args.folds_dir, args.dataset)
            print(f"ensemble: warning: the predictions of {', '.join(lacking)} do not record their fold file; "
                  f"assuming {assumed['file']} (--folds-dir)")
            recorded.update({name: assumed for name in lacking})
        (first, split), *others = recorded.items()
        other = next((name for name, s in others if s["sha256"] != split["sha256"]), None)
        if other:
            sys.exit(f"ensemble: {first} was trained on {split['file']} but {other} on another split "
                     f"({recorded[other]['file']}); ensemble runs of one split (--runs)")
        return read_split(split, f"{runs[first]} was predicted")
    except (FileNotFoundError, SplitChanged) as error:
        sys.exit(f"ensemble: {error}")


def prediction_set(runs: dict, name: str | None) -> Path:
    """Where in each run's tta-* folder the images to write masks for are: test/, or sets/<name>/ for --set."""
    if name is None:
        return Path("test")
    try:
        check_set_name(name)
    except ValueError as error:
        sys.exit(f"ensemble: --set: {error}")
    source = Path("sets") / name
    lacking = [run for run, path in runs.items() if not (path / source).is_dir()]
    if lacking:  # found before tuning, not after
        sys.exit(f"ensemble: {', '.join(lacking)} did not predict set '{name}' ({runs[lacking[0]] / source} missing); "
                 f"run `python infer.py --images DIR --name {name}` with the same --tta and --checkpoint")
    return source


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def summarize_scores(scores: pd.DataFrame) -> dict:
    """Means over images, and the sample std (ddof=1, as infer.py's tables) over images and over fold means."""
    images = per_image(scores)
    fold_means = images.groupby("fold")["dice"].mean()
    return {"dice": images["dice"].mean(), "dice_image_std": images["dice"].std(ddof=1),
            "dice_fold_mean": fold_means.mean(), "dice_fold_std": fold_means.std(ddof=1),
            "iou": images["iou"].mean(), "hd95": images["hd95"].mean(),
            **({"hd95_pct": images["hd95_pct"].mean()} if "hd95_pct" in images else {}),
            "folds": {int(f): d for f, d in fold_means.items()}, "per_class": pooled_by_class(scores)}


def scores_table(rows_of: dict, fold_of: dict, like: pd.DataFrame | None = None) -> pd.DataFrame:
    """{image id: image_scores() rows} -> a scores table. like: a full table, whose columns rows scored without HD95
    take (left empty), so that per_image() averages their classes exactly as it does the full table's."""
    table = pd.DataFrame([{"id": i, "fold": fold_of[i], **r} for i, rows in rows_of.items() for r in rows])
    return table if like is None else table.reindex(columns=like.columns)


def main(argv=None):
    try:
        run(parse_args(argv))
    except OldPredictionFormat as error:
        sys.exit(f"ensemble: {error}")


def run(args):
    dataset_dir = Path(args.data_dir) / args.dataset
    try:
        meta, index = load_meta(dataset_dir), load_index(dataset_dir).set_index("id", drop=False)
    except FileNotFoundError as error:
        sys.exit(f"ensemble: {error}")
    by = args.by or ("tissue" if "tissue" in index else None)
    if by and by not in index:
        sys.exit(f"ensemble: --by {by}: no such column in {dataset_dir / 'index.csv'} (have: {', '.join(index.columns)})")
    runs = find_predictions(args.preds_dir, args.dataset, args.tta, args.runs, args.checkpoint)
    folds = recorded_split(runs, args)
    source = prediction_set(runs, args.set)
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
    out.mkdir(parents=True, exist_ok=True)

    # 1. Each run on its own, from the OOF scores infer.py wrote, on the images that every run predicted. Every choice
    #    made on OOF data is made for each fold on the other folds (cross-validated): here, under --tta best, the TTA.
    oof = {(name, mode): pd.read_csv(path.parent / f"tta-{mode}" / "oof_scores.csv", dtype={"id": str})
           for name, path in runs.items() for mode in TTA_MODES
           if (path.parent / f"tta-{mode}" / "oof_scores.csv").exists()}
    dice_of = {key: per_image(table).set_index("id")["dice"] for key, table in oof.items()}
    modes_of = {name: [m for m in TTA_MODES if (name, m) in oof] if args.tta == "best" else [args.tta] for name in runs}
    oof_ids = [i for i in folds["id"] if all(i in dice_of[name, m].index for name in runs for m in modes_of[name])]
    if not oof_ids:
        sys.exit(f"ensemble: no training image has an OOF prediction from every run ({', '.join(runs)}); "
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
    for name in runs:
        dice = pd.DataFrame({m: dice_of[name, m].loc[oof_ids] for m in modes_of[name]})
        tta_by_fold[name] = {f: dice[image_folds != f].mean().idxmax() for f in fold_ids}  # ties: the cheaper TTA
        run_scores[name] = pd.concat([oof[name, mode][oof[name, mode]["id"].isin(dice.index[image_folds == f])]
                                      for f, mode in tta_by_fold[name].items()])
    summaries = {name: {"tta": path.name[4:], "tta_by_fold": tta_by_fold[name], **summarize_scores(run_scores[name]),
                        "training": read_json(path.parent / "training.json")} for name, path in runs.items()}
    tta_gain = {}
    for name in runs:  # every mode the run was predicted with, on the same images
        dice = pd.DataFrame({m: dice_of[name, m] for m in TTA_MODES if (name, m) in oof}).reindex(oof_ids).dropna()
        plain = dice["none"].mean() if "none" in dice else None
        tta_gain[name] = {"images": len(dice), "modes": {m: {"dice": d, "gain": None if plain is None else d - plain}
                                                         for m, d in dice.mean().items()}}

    # 2. Tune post-processing on the averaged OOF probabilities (test predictions are never read here): for each fold
    #    on the other folds' images, with that fold's TTA (the estimate), and on all images (for the test masks).
    tta_of_fold = {f: tuple(tta_by_fold[name][f] for name in runs) for f in fold_ids}
    tta_all = tuple(path.name[4:] for path in runs.values())

    def truth(image_id):
        return read_image(dataset_dir / "masks" / f"{image_id}.png")

    candidates = postprocess.binary_candidates()
    def read_and_tune(image_id, modes):  # each OOF file is read once: the mean stays in memory at the models' size
        maps, size = read_mean([runs[n].parent / f"tta-{m}" / "oof" / f"{image_id}.npz" for n, m in zip(runs, modes)],
                               [weight_of[n] for n in runs])
        target = postprocess.shrink(truth(image_id), args.tune_size)
        probs = mean_at(maps, target.shape)  # straight from the models' size to the tuning size
        if meta["task"] == "binary":
            return (maps, size), postprocess.binary_candidate_dice(probs[0], target, candidates)
        return (maps, size), postprocess.multiclass_candidate_dice(probs, target)

    oof_means, settings_by_modes = {}, {}
    for modes in dict.fromkeys([*tta_of_fold.values(), tta_all]):  # one pass per TTA combination, usually one
        tuned = thread_map(lambda i: read_and_tune(i, modes), oof_ids,
                           f"tune post-processing (OOF, TTA {', '.join(modes)})")
        for image_id, (mean, _) in zip(oof_ids, tuned):
            if modes in (tta_of_fold[fold_of[image_id]], tta_all):
                oof_means[image_id, modes] = mean
        candidate_scores = np.stack([scores for _, scores in tuned])
        settings_by_modes[modes] = postprocess.choose_by_fold(meta["task"], candidate_scores, image_folds)
        if modes == tta_all:
            settings = postprocess.choose(meta["task"], candidate_scores)
    settings_of_fold = {f: settings_by_modes[tta_of_fold[f]][f] for f in fold_ids}

    # 3. Score the ensemble at original size: each fold with its own TTA and settings (the headline); with the settings
    #    chosen on all images (optimistic: tuned and scored on the same images) and without any (the raw average).
    #    These two are Dice only: HD95 is most of the work.
    def score(image_id):
        fold, target = fold_of[image_id], truth(image_id)
        probs = mean_at(*oof_means[image_id, tta_of_fold[fold]])
        rows = image_scores(postprocess.apply(probs, settings_of_fold[fold]), target, meta["classes"])
        plain = postprocess.apply(probs, postprocess.PLAIN[meta["task"]])
        raw = image_scores(plain, target, meta["classes"], with_hd95=False)
        if (tta_all, settings) == (tta_of_fold[fold], settings_of_fold[fold]):
            return rows, raw, rows
        probs = probs if tta_all == tta_of_fold[fold] else mean_at(*oof_means[image_id, tta_all])
        return rows, raw, image_scores(postprocess.apply(probs, settings), target, meta["classes"], with_hd95=False)

    scored = dict(zip(oof_ids, thread_map(score, oof_ids, "score ensemble (OOF)")))
    ensemble_scores = scores_table({i: rows for i, (rows, _, _) in scored.items()}, fold_of)
    ensemble_scores.to_csv(out / "oof_scores.csv", index=False)
    raw, optimistic = (per_image(scores_table({i: r[k] for i, r in scored.items()}, fold_of, ensemble_scores))["dice"]
                       for k in (1, 2))
    ensemble = {**summarize_scores(ensemble_scores), "dice_raw": raw.mean(), "dice_optimistic": optimistic.mean()}
    best_single = max(summaries, key=lambda n: summaries[n]["dice"])

    # 4. Unet++ against Unet with the same encoder, image by image: both at one TTA mode fixed in advance
    #    (--compare-tta, else the most augmented both have), over patients where the split grouped them; p values
    #    Holm-adjusted over the comparisons.
    group_of = dict(zip(folds["id"], folds["group"])) if "group" in folds else {}
    comparisons = []
    for name in runs:
        arch, encoder = name.split("-", 1)
        if arch != "unet" or f"unetpp-{encoder}" not in runs:
            continue
        pair = (name, f"unetpp-{encoder}")
        mode = args.compare_tta or next((m for m in reversed(TTA_MODES) if all((n, m) in oof for n in pair)), None)
        if not all((n, mode) in oof for n in pair):
            print(f"ensemble: {pair[0]} and {pair[1]} not compared: no OOF scores of both at "
                  f"{f'TTA {mode}' if mode else 'one TTA mode'}; run infer.py --tta {mode or 'none'} for both")
            continue
        a, b = (dice_of[n, mode] for n in pair)
        common = [i for i in oof_ids if i in a.index and i in b.index]
        groups = [group_of.get(i) or i for i in common] if group_of else None  # an image without a group: its own
        comparisons.append({"encoder": encoder, "tta": mode, **paired_comparison(
            a[common].to_numpy(), b[common].to_numpy(), groups=groups, alpha=ALPHA)})
    for comparison, p_value in zip(comparisons, holm([c["wilcoxon_p"] for c in comparisons])):
        comparison["p_holm"] = p_value  # adjusting can only make a difference insignificant
        comparison["verdict"] = comparison["verdict"] if p_value < ALPHA else "no significant difference"

    # 5. Test images (or the prediction set --set NAME): mean over every run and fold, post-processed, as PNG and RLE.
    written = out / source if args.set else out
    fold_dirs = [(name, d) for name, path in runs.items() for d in sorted((path / source).glob("fold*"))]
    test_ids = sorted({p.stem for _, d in fold_dirs for p in d.glob("*.npz")})
    incomplete = [i for i in test_ids if not all((d / f"{i}.npz").exists() for _, d in fold_dirs)]
    if incomplete:
        print(f"ensemble: {len(incomplete)} test images (e.g. {incomplete[0]}) lack a prediction from some of the "
              f"{len(fold_dirs)} fold models; they are averaged over the models that predicted them")
    (written / "masks").mkdir(parents=True, exist_ok=True)

    def test_mask(image_id):
        files = [(d / f"{image_id}.npz", weight_of[name]) for name, d in fold_dirs if (d / f"{image_id}.npz").exists()]
        final = postprocess.apply(mean_at(*read_mean(*zip(*files))), settings)
        write_png(written / "masks" / f"{image_id}.png", final * 255 if meta["task"] == "binary" else final)
        if meta["task"] == "binary":
            return [{"id": image_id, "rle": rle_encode(final)}]
        return [{"id": image_id, "class": c, "rle": rle_encode(final == k)} for k, c in enumerate(meta["classes"]) if k]

    test_rows = [r for rows in thread_map(test_mask, test_ids, "test masks") for r in rows]
    pd.DataFrame(test_rows, columns=["id", "rle"] if meta["task"] == "binary" else ["id", "class", "rle"]).to_csv(
        written / "submission.csv", index=False)

    # 6. Scores, leaderboard, figures.
    per_class = {c: {**{n: s["per_class"][c] for n, s in summaries.items()}, "ensemble": ensemble["per_class"][c]}
                 for c in meta["classes"][1:]} if len(meta["classes"]) > 2 else {}
    image_dice = {n: per_image(s).set_index("id")["dice"].loc[oof_ids] for n, s in run_scores.items()}
    subgroups = {"column": by, "table": dice_by_group(
        {**image_dice, "ensemble": per_image(ensemble_scores).set_index("id")["dice"]}, index[by]
    ).reset_index().to_dict("records")} if by else None
    tuning_by_fold = {f: {"images": int((image_folds == f).sum()), "tta": dict(zip(runs, tta_of_fold[f])),
                          "postprocess": settings_of_fold[f]} for f in fold_ids}
    scores = {"dataset": args.dataset, "images": {"scored": len(oof_ids), "left_out": len(folds) - len(oof_ids)},
              "runs": summaries, "ensemble": ensemble, "best_single": best_single,
              "ensemble_gain": ensemble["dice"] - summaries[best_single]["dice"], "tta_gain": tta_gain,
              "per_class": per_class, "by": subgroups, "comparisons": comparisons, "tuning_by_fold": tuning_by_fold,
              "postprocess": settings, "weights": weight_of, "test_images": len(test_ids)}
    (out / "scores.json").write_text(json.dumps(scores, indent=2, default=float) + "\n")
    (out / "leaderboard.md").write_text(report.leaderboard_markdown(scores))
    report.score_bars(out / "scores.png", scores)

    def panels(image_id):  # each run's OOF mask post-processed as the test masks are, beside the Dice of that mask
        target = truth(image_id)
        masks = {n: postprocess.apply(mean_at(*read_mean([p / "oof" / f"{image_id}.npz"], [1.0])), settings)
                 for n, p in runs.items()}
        dice = {n: per_image(scores_table({image_id: image_scores(mask, target, meta["classes"], with_hd95=False)},
                                          fold_of, ensemble_scores))["dice"].iloc[0] for n, mask in masks.items()}
        return image_id, read_dataset_image(dataset_dir, index.loc[image_id], meta["channels"]), target, masks, dice

    shown = report.pick_examples(image_dice, args.figures)
    if shown:
        report.comparison_grid(out / "comparison.png", [panels(i) for i in shown], meta["classes"])
    trackers = {json.loads((p.parent / "config.json").read_text()).get("tracker") for p in runs.values()
                if (p.parent / "config.json").exists()}
    if (args.tracker or ("wandb" if "wandb" in trackers else "none")) == "wandb":
        table = pd.DataFrame([{"model": n, **{k: v for k, v in r.items() if not isinstance(v, dict)}}
                              for n, r in {**summaries, "ensemble": ensemble}.items()])
        tracking.log_tables(args.dataset, "ensemble", "ensemble", "ensemble", out, {"leaderboard": table},
                            {"ensemble_dice": ensemble["dice"], "ensemble_gain": scores["ensemble_gain"]})
    print(report.leaderboard_markdown(scores))
    print(f"wrote {out}/: scores.json, leaderboard.md, figures; {written}/: {len(test_ids)} masks, submission.csv")


if __name__ == "__main__":
    main()
