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

import pandas as pd
from tqdm.contrib.concurrent import thread_map

from src import report, tracking, tuning
from src.portable import postprocess
from src.canonical import load_index, load_meta, read_dataset_image
from src.ensemble_inputs import (check_oof, choose_levels, fill_selection, output_folder, recorded_split,
                                 select_runs, selection_of, test_predictions)
from src.ensemble_scores import (ensemble_gain, name_levels, per_class, postprocess_runs, read_json,
                                 score_ensemble, score_runs, tune)
from src.portable.files import write_atomic
from src.folds import group_labels
from src.portable.images import HOST_THREADS, read_image
from src.metrics import dice_by_group, image_scores, per_image
from src.portable.maps import final_mask, mean_at
from src.predict import read_mean, read_weighted
from src.portable.submission import csv_text, mask_rows, staged
from src.stats import holm, mean_interval, paired_comparison
from src.tuning import TTA_MODES, scores_table

ALPHA = 0.05  # significance level of the Unet++ vs Unet comparisons (after Holm's adjustment) and of ensemble vs best


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--tta", choices=["best", "none", "flip", "d4"],
                        help="which TTA predictions to use per run (default best: the highest OOF Dice of those "
                             "predicted; with --set, the folder's own)")
    parser.add_argument("--compare-tta", choices=TTA_MODES,
                        help="TTA of both runs in the Unet++ vs Unet comparison (default: the most augmented mode "
                             "both were predicted with: d4, else flip, else none)")
    parser.add_argument("--runs", help="only these runs: names or globs, comma-separated, e.g. 'unet*-resnet34'")
    parser.add_argument("--checkpoint", choices=["selected", "best", "last"],
                        help="the predictions of the selected weights (the default), best.pt or last.pt (infer.py "
                             "--checkpoint; with --set, the folder's own)")
    parser.add_argument("--name", help="write to ensemble/<dataset>/NAME/ (default: ensemble/<dataset>/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder made from another selection of runs, checkpoint or TTA")
    parser.add_argument("--set", help="write the masks of this prediction set (infer.py --images DIR --name NAME) "
                                      "instead of the dataset's test split, with the output folder's runs, checkpoint "
                                      "and TTA where --runs, --checkpoint, --tta are not given")
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
    run(parse_args(argv))


def run(args):
    """The story: which predictions, checked; each run scored; the ensemble tuned and scored; masks; reports."""
    fill_selection(args)
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
    def test_mask(image_id, masks):
        files = [(d / f"{image_id}.npz", weight_of[name]) for name, d in fold_dirs if (d / f"{image_id}.npz").exists()]
        final = final_mask(*read_weighted(*zip(*files)), settings)  # as an exported package computes it
        return mask_rows(image_id, final, meta["task"], meta["classes"], masks)

    with staged(written / "masks") as masks:
        test_rows = [r for rows in thread_map(lambda i: test_mask(i, masks), test_ids, max_workers=HOST_THREADS,
                                              desc="test masks", unit="img") for r in rows]
    for old in set(p.stem for p in (written / "masks").glob("*.png")) - set(test_ids):
        (written / "masks" / f"{old}.png").unlink()
    write_atomic(written / "submission.csv", csv_text(test_rows, meta["task"]))


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
