"""Average fold x architecture predictions into final masks, tune TTA and post-processing on OOF data, write scores.

  python ensemble.py                         # every run with predictions for the dataset
  python ensemble.py --runs 'unet*' --weights unet-resnet34=1,unetpp-resnet34=2
  python ensemble.py --checkpoint last --set new_xrays   # last.pt's predictions; masks of infer.py --images new_xrays/

Reads preds/<dataset>/ (infer.py) and data/<dataset>/masks; writes ensemble/<dataset>/: masks/<id>.png (final masks
at original size: 0/255 for binary, class index for multiclass), submission.csv (Kaggle RLE), scores.json,
leaderboard.md, comparison.png, scores.png and, where Unet and Unet++ share encoders, study.png; with --set NAME the
masks and submission.csv of that prediction set go to ensemble/<dataset>/sets/NAME/ instead. The scores are
cross-validated: each fold is scored with the TTA and post-processing chosen on the other folds; the test masks use
the choices made on all OOF images.
"""
import argparse
import json
import sys
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd

from src import postprocess, report, tracking, tuning
from src.canonical import load_index, load_meta, read_dataset_image
from src.folds import FoldFileError, fingerprint, load_folds
from src.images import read_image, write_png
from src.metrics import dice_by_group, image_scores, per_image
from src.parallel import thread_map
from src.predict import OldPredictionFormat, SplitChanged, check_set_name, mean_at, pred_dir, read_mean, read_split
from src.rle import rle_encode
from src.stats import holm, paired_comparison
from src.tuning import TTA_MODES, scores_table

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


def recorded_split(runs: dict, args, index: pd.DataFrame) -> pd.DataFrame:
    """The folds that every run's predictions were made on (infer.py records the fold file in the preds' config.json):
    one split for all, unchanged since."""
    recorded = {name: (read_json(path.parent / "config.json") or {}).get("folds") for name, path in runs.items()}
    lacking = [name for name, split in recorded.items() if split is None]
    try:
        if lacking:  # predicted before infer.py recorded the split
            load_folds(args.folds_dir, args.dataset, index)  # a clear error if it is missing or wrong
            assumed = fingerprint(args.folds_dir, args.dataset)
            print(f"ensemble: warning: the predictions of {', '.join(lacking)} do not record their fold file; "
                  f"assuming {assumed['file']} (--folds-dir)")
            recorded.update({name: assumed for name in lacking})
        (first, split), *others = recorded.items()
        other = next((name for name, s in others if s["sha256"] != split["sha256"]), None)
        if other:
            sys.exit(f"ensemble: {first} was trained on {split['file']} but {other} on another split "
                     f"({recorded[other]['file']}); ensemble runs of one split (--runs)")
        return read_split(split, f"{runs[first]} was predicted", index)
    except (FileNotFoundError, SplitChanged, FoldFileError) as error:
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


def compare_architectures(image_ids: list, dice_of: dict, group_of: dict, tta: str | None) -> list:
    """Unet++ against Unet of each encoder both ran with, on the same images, both at one TTA mode fixed in advance
    (tta, else the most augmented both have), over patients where group_of gives them; p Holm-adjusted over the
    comparisons. dice_of: {run: {mode: per-image Dice}}."""
    comparisons = []
    for name in dice_of:
        arch, encoder = name.split("-", 1)
        if arch != "unet" or f"unetpp-{encoder}" not in dice_of:
            continue
        pair = (name, f"unetpp-{encoder}")
        mode = tta or next((m for m in reversed(TTA_MODES) if all(m in dice_of[n] for n in pair)), None)
        if not all(mode in dice_of[n] for n in pair):
            print(f"ensemble: {pair[0]} and {pair[1]} not compared: no OOF scores of both at "
                  f"{f'TTA {mode}' if mode else 'one TTA mode'}; run infer.py --tta {mode or 'none'} for both")
            continue
        a, b = (dice_of[n][mode] for n in pair)
        common = [i for i in image_ids if i in a.index and i in b.index]
        groups = [group_of.get(i) or i for i in common] if group_of else None  # an image without a group: its own
        comparisons.append({"encoder": encoder, "tta": mode, **paired_comparison(
            a[common].to_numpy(), b[common].to_numpy(), groups=groups, alpha=ALPHA)})
    for comparison, p_value in zip(comparisons, holm([c["wilcoxon_p"] for c in comparisons])):
        comparison["p_holm"] = p_value  # adjusting can only make a difference insignificant
        comparison["verdict"] = comparison["verdict"] if p_value < ALPHA else "no significant difference"
    return comparisons


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
    folds = recorded_split(runs, args, index)
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
    oof = tuning.read_oof_scores(runs)
    dice_of = {name: {mode: tuning.image_dice(table) for mode, table in tables.items()} for name, tables in oof.items()}
    modes_of = {name: list(oof[name]) if args.tta == "best" else [args.tta] for name in runs}
    oof_ids = tuning.scored_images(dice_of, modes_of, folds["id"])
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
        tta_by_fold[name], run_scores[name] = tuning.choose_tta_by_fold(
            {mode: oof[name][mode] for mode in modes_of[name]}, oof_ids, image_folds)
    summaries = {name: {"tta": path.name[4:], "tta_by_fold": tta_by_fold[name],
                        **tuning.summarize_scores(run_scores[name]),
                        "parameters_m": (read_json(path.parent / "training.json") or {}).get("parameters_m"),
                        "training": read_json(path.parent / "training.json"),
                        "inference": read_json(path / "inference.json")} for name, path in runs.items()}
    tta_gain = {name: tuning.tta_gain(dice_of[name], oof_ids) for name in runs}  # every mode, on the same images

    # 2. Tune post-processing on the averaged OOF probabilities (test predictions are never read here): for each fold
    #    on the other folds' images, with that fold's TTA (the estimate), and on all images (for the test masks).
    tta_of_fold = {f: tuple(tta_by_fold[name][f] for name in runs) for f in fold_ids}
    tta_all = tuple(path.name[4:] for path in runs.values())
    settings_of_fold, settings, oof_means = tuning.tune_postprocessing(
        runs, weight_of, dataset_dir / "masks", meta["task"], oof_ids, image_folds, tta_of_fold, tta_all,
        args.tune_size)

    # 3. Score the ensemble at original size: each fold with its own TTA and settings (the headline); with the settings
    #    chosen on all images (optimistic: tuned and scored on the same images) and without any (the raw average).
    ensemble_scores, raw, optimistic = tuning.score_ensemble(
        oof_means, dataset_dir / "masks", meta["classes"], oof_ids, image_folds,
        {f: (tta_of_fold[f], settings_of_fold[f]) for f in fold_ids}, (tta_all, settings))
    ensemble_scores.to_csv(out / "oof_scores.csv", index=False)
    ensemble = {**tuning.summarize_scores(ensemble_scores), "dice_raw": raw.mean(),
                "dice_optimistic": optimistic.mean()}
    best_single = max(summaries, key=lambda n: summaries[n]["dice"])

    # 4. Unet++ against Unet with the same encoder, image by image, over patients where the split grouped them.
    group_of = dict(zip(folds["id"], folds["group"])) if "group" in folds else {}
    comparisons = compare_architectures(oof_ids, dice_of, group_of, args.compare_tta)

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
    image_dice = {n: tuning.image_dice(s).loc[oof_ids] for n, s in run_scores.items()}
    subgroups = {"column": by, "table": dice_by_group(
        {**image_dice, "ensemble": tuning.image_dice(ensemble_scores)}, index[by]
    ).reset_index().to_dict("records")} if by else None
    tuning_by_fold = {f: {"images": int((image_folds == f).sum()), "tta": dict(zip(runs, tta_of_fold[f])),
                          "postprocess": settings_of_fold[f]} for f in fold_ids}
    scores = {"dataset": args.dataset, "images": {"scored": len(oof_ids), "left_out": len(folds) - len(oof_ids)},
              "runs": summaries, "ensemble": ensemble, "best_single": best_single,
              "ensemble_gain": ensemble["dice"] - summaries[best_single]["dice"], "tta_gain": tta_gain,
              "per_class": per_class, "by": subgroups, "comparisons": comparisons, "tuning_by_fold": tuning_by_fold,
              "postprocess": settings, "weights": weight_of, "test_images": len(test_ids)}
    scores["by_encoder"] = report.by_encoder(scores)
    (out / "scores.json").write_text(json.dumps(scores, indent=2, default=float) + "\n")
    (out / "leaderboard.md").write_text(report.leaderboard_markdown(scores))
    report.score_bars(out / "scores.png", scores)
    if scores["by_encoder"]:
        report.study_figure(out / "study.png", scores["by_encoder"])

    def panels(image_id):  # each run's OOF mask post-processed as the test masks are, beside the Dice of that mask
        target = read_image(dataset_dir / "masks" / f"{image_id}.png")
        masks = {n: postprocess.apply(mean_at(*read_mean([p / "oof" / f"{image_id}.npz"], [1.0])), settings)
                 for n, p in runs.items()}
        dice = {n: per_image(scores_table({image_id: image_scores(mask, target, meta["classes"], with_hd95=False)},
                                          fold_of, ensemble_scores))["dice"].iloc[0] for n, mask in masks.items()}
        return image_id, read_dataset_image(dataset_dir, index.loc[image_id], meta["channels"]), target, masks, dice

    shown = report.pick_examples(image_dice, args.figures)
    if shown:
        report.comparison_grid(out / "comparison.png", [panels(i) for i in shown], meta["classes"])
    configs = [json.loads((p.parent / "config.json").read_text()) for p in runs.values()
               if (p.parent / "config.json").exists()]
    trackers = {c.get("tracker") for c in configs}
    if (args.tracker or ("wandb" if "wandb" in trackers else "none")) == "wandb":
        table = pd.DataFrame([{"model": n, **{k: v for k, v in r.items() if not isinstance(v, dict)}}
                              for n, r in {**summaries, "ensemble": ensemble}.items()])
        by_encoder = {"by_encoder": pd.DataFrame(scores["by_encoder"])} if scores["by_encoder"] else {}
        tracking.log_tables(args.dataset, "ensemble", "ensemble", "ensemble", out,
                            {"leaderboard": table, **by_encoder},
                            {"ensemble_dice": ensemble["dice"], "ensemble_gain": scores["ensemble_gain"]},
                            tags=",".join(sorted({t for c in configs for t in c.get("tags", "").split(",") if t})))
    print(report.leaderboard_markdown(scores))
    print(f"wrote {out}/: scores.json, leaderboard.md, figures; {written}/: {len(test_ids)} masks, submission.csv")


if __name__ == "__main__":
    main()
