"""Step 4 of an ensemble: the scores scores.json holds. Each run on its own, raw from the OOF scores infer.py wrote
(each fold at its chosen TTA and level) and post-processed as an ensemble of one; the ensemble; every model at
original size with each fold's own settings (the estimate), with the test masks' settings (optimistic) and raw;
the ensemble against the best run and Unet++ against Unet, like with like, over patients where the split grouped
images by patient; subgroups; the study's table by encoder.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.contrib.concurrent import thread_map

from src import runs as ledger, volume_scores
from src.config import name_parts, run_name
from src.metrics import dice_by_group, image_dice, image_scores, per_image, pooled_by_class
from src.portable import postprocess
from src.portable.images import HOST_THREADS, read_image
from src.stats import holm, mean_interval, paired_comparison, pooled_dice_interval

ALPHA = 0.05  # significance level of the Unet++ vs Unet comparisons (after Holm's adjustment) and of ensemble vs best
ARCHS = ("unet", "unetpp", "unetpp_ds")  # the architectures the study's table sets side by side, by encoder
COMPARED = [("unet", "unetpp"), ("unet", "unetpp_ds"), ("unetpp", "unetpp_ds")]  # (baseline, challenger)


def score(inputs, choices, compare_tta: str | None) -> tuple:
    """Step 4: (scores.json's content, {model: its post-processed OOF scores table, "ensemble" too}). inputs and
    choices: steps 2 and 3's; compare_tta: the TTA of the architectures' comparison (None: the most augmented)."""
    ids, selection, subgroups = inputs.image_ids, inputs.selection, inputs.subgroups
    masks_dir, classes = inputs.dataset_dir / "masks", inputs.meta["classes"]
    fold_of = dict(zip(inputs.folds["id"], inputs.folds["fold"]))
    groups = [g for g in inputs.folds.set_index("id").loc[ids, "group"]] if "group" in inputs.folds else None
    dice_of = {run: {mode: image_dice(c.scores(ids, fold_of)) for mode, c in modes.items()}
               for run, modes in choices.at_mode.items()}  # every TTA mode predicted: the TTA gain, the comparisons
    summaries = {run: run_summary(choice, inputs.sets[run], summarize_scores(choice.scores(ids, fold_of)))
                  for run, choice in choices.runs.items()}
    unit = group_unit(inputs)
    comparisons = compare_architectures(ids, dice_of, groups, compare_tta, unit)
    models = {**{run: ({run: choice}, {run: 1.0}) for run, choice in choices.runs.items()},
              "ensemble": (choices.runs, choices.weights)}  # each run alone (an ensemble of one), then all of them
    post, tables = {}, {}
    for model, (runs, weights) in models.items():
        post[model], tables[model] = postprocessed(runs, weights, choices.postprocess[model], ids, fold_of, masks_dir,
                                                   classes)
    for run in choices.runs:
        summaries[run]["postprocessed"] = {**post[run], "postprocess": choices.postprocess[run].for_test}
    ensemble, dice = post["ensemble"], {model: image_dice(table).loc[ids] for model, table in tables.items()}
    image_folds = np.array([fold_of[i] for i in ids])
    scores = {"dataset": selection.dataset, "selection": selection.record(list(choices.runs)),
              "checkpoint": selection.checkpoint, "images": {"scored": len(ids), "left_out": len(inputs.folds) - len(ids)},
              "runs": summaries, "ensemble": ensemble, **ensemble_gain(summaries, ensemble),
              "tta_gain": {run: tta_gain(dice_of[run], ids) for run in choices.runs},
              **(per_class(summaries, ensemble, tables["ensemble"], dict(zip(ids, groups)) if groups else None, unit)
                 if len(classes) > 2
                 else {"per_class": {}}),
              "by": {"column": subgroups.name, "table": dice_by_group(dice, subgroups).reset_index().to_dict("records")}
              if subgroups is not None else None,
              "comparisons": comparisons,
              "tuning_by_fold": {f: {"images": int((image_folds == f).sum()),
                                     "tta": {run: c.by_fold[f].tta for run, c in choices.runs.items()},
                                     "postprocess": settings}
                                 for f, settings in choices.postprocess["ensemble"].by_fold.items()},
              "postprocess": choices.postprocess["ensemble"].for_test, "weights": choices.weights,
              "test_images": len(choices.test)}
    if "volumes" in inputs.meta:
        scores["volumes"] = in_3d(inputs, models, choices.postprocess, ids, fold_of)
    scores["by_encoder"] = by_encoder(scores)
    best = dice[scores["best_single"]].to_numpy()
    scores["best_interval"] = mean_interval(best, groups, group_unit=unit)
    scores["ensemble_vs_best"] = paired_comparison(best, dice["ensemble"].to_numpy(), groups=groups, alpha=ALPHA,
                                                   group_unit=unit)
    return scores, tables


def group_unit(inputs) -> str:
    """What the split's groups are called: cases where they are a volume dataset's cases, else patients."""
    if "volumes" not in inputs.meta or "group" not in inputs.folds:
        return "patient"
    cases = inputs.index["case"].reindex(inputs.folds["id"]).to_numpy()
    return "case" if (inputs.folds["group"].to_numpy() == cases).all() else "patient"


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_summary(choice, levels_of_mode: dict, raw: dict) -> dict:
    """A run's leaderboard entry before its post-processing: its TTA for the test masks and each fold, its raw OOF
    scores at them, the rule that chose its weights and each fold's epoch, training and prediction cost; for a
    unetpp_ds run, its levels. inference.json is absent where infer.py predicted no OOF image (no speed measured)."""
    s = choice.for_test
    training = json.loads((s.folder.parent / "training.json").read_text())
    summary = {"tta": s.tta, "tta_by_fold": {f: c.tta for f, c in choice.by_fold.items()}, **raw,
               "epoch_rule": epoch_rule(s), "accepted_stale": accepted_stale(s),
               "parameters_m": training["parameters_m"], "training": training,
               "inference": read_json(s.folder / "inference.json")}
    if s.provenance["level"] is not None:  # unetpp_ds: each level its own set
        inference = {level: read_json(p.folder / "inference.json") or {} for level, p in levels_of_mode[s.tta].items()}
        summary.update({"level": s.provenance["level"],
                        "level_by_fold": {f: c.provenance["level"] for f, c in choice.by_fold.items()},
                        "levels": {level: {"parameters_m": inference[level].get("parameters_m"),
                                           "dice": per_image(p.oof_scores())["dice"].mean(),
                                           "images_per_s": inference[level].get("images_per_s")}
                                   for level, p in levels_of_mode[s.tta].items()}})
    return summary


def fold_folders(predictions: ledger.PredictionSet) -> dict:
    """{fold: the run's fold folder} of the folds whose OOF predictions the set holds."""
    run_dir = Path(predictions.provenance["run_dir"])
    return {f: run_dir / f"fold{f}" for f in sorted(predictions.weights("oof"))}


def epoch_rule(predictions: ledger.PredictionSet) -> dict:
    """Which rule chose the weights of a run's predictions, and the epoch each fold's weights are from: figures of
    --select-on fold are optimistic (its epoch, plateau and early stop read the very images it is scored on)."""
    found = {f: ledger.epoch_of(folder, predictions.checkpoint) for f, folder in fold_folders(predictions).items()}
    rules = sorted({rule for rule, _ in found.values()})
    return {"select_on": "/".join(rules), "checkpoint": predictions.checkpoint,
            "epochs": {f: e for f, (_, e) in found.items()}, "optimistic": "fold" in rules}


def accepted_stale(predictions: ledger.PredictionSet) -> dict:
    """{fold: {study, differs}} of the run's folds a study kept with --accept-stale, though it asked other settings."""
    return {f: record for f, folder in fold_folders(predictions).items() if (record := ledger.accepted_stale(folder))}


def postprocessed(runs: dict, weights: dict, tuned, image_ids: list, fold_of: dict, masks_dir: Path,
                  classes: list) -> tuple:
    """(summary, scores table) of the weighted mean of runs ({run: Choice}; one run: that run) at original size:
    each fold's images read and post-processed as that fold's choices say (the estimate, with HD95); the summary
    adds the raw mean (no post-processing) and the test masks' choices (optimistic: made on these very images)."""
    weight_list = [weights[run] for run in runs]
    for_test = tuple(c.for_test for c in runs.values())

    probabilities = ledger.mean_probabilities(weight_list)

    def one(image_id: str) -> tuple:
        target, fold = read_image(masks_dir / f"{image_id}.png"), fold_of[image_id]
        read, settings = tuple(c.by_fold[fold] for c in runs.values()), tuned.by_fold[fold]
        probs = probabilities(image_id, read)
        task = settings["task"]
        rows = image_scores(postprocess.apply(probs, settings), target, classes, task=task)
        raw = image_scores(postprocess.apply(probs, postprocess.PLAIN[task]), target, classes, with_hd95=False,
                           task=task)
        if read == for_test and settings == tuned.for_test:
            return rows, raw, rows
        probs = probs if read == for_test else probabilities(image_id, for_test)
        return rows, raw, image_scores(postprocess.apply(probs, tuned.for_test), target, classes, with_hd95=False,
                                       task=task)

    scored = dict(zip(image_ids, thread_map(one, image_ids, max_workers=HOST_THREADS, desc="score ensemble (OOF)",
                                            unit="img")))
    table = scores_table({i: rows for i, (rows, _, _) in scored.items()}, fold_of)
    raw, optimistic = (scores_table({i: r[k] for i, r in scored.items()}, fold_of, table) for k in (1, 2))
    return {**summarize_scores(table), "dice_raw": per_image(raw)["dice"].mean(), "per_class_raw": pooled_by_class(raw),
            "dice_optimistic": per_image(optimistic)["dice"].mean()}, table


def in_3d(inputs, models: dict, tuned: dict, image_ids: list, fold_of: dict) -> dict:
    """A volume dataset's 3D scores of each model ({model: (runs, weights)}), its slices' OOF masks made as
    postprocessed() makes them (each fold with its own choices), stacked back into their cases and post-processed in
    3D with the choice of the case's fold."""
    volumes_meta, classes = inputs.meta["volumes"], inputs.meta["classes"]
    cases = volume_scores.case_slices(inputs.index, image_ids)
    records = volume_scores.read_records(inputs.dataset_dir)

    def target(image_id: str) -> np.ndarray:
        return read_image(inputs.dataset_dir / "masks" / f"{image_id}.png")

    contexts = {run: json.loads((c.for_test.folder.parent / "config.json").read_text())["context"]
                for run, c in models["ensemble"][0].items()}
    out = {"rules": {"axis": volumes_meta["axis_rule"], "normalisation": volumes_meta["normalisation"],
                     "size": volumes_meta["size_rule"], "context": contexts}, "models": {}}
    for model, (runs, weights) in models.items():
        probabilities = ledger.mean_probabilities([weights[run] for run in runs])

        def mask(image_id: str) -> np.ndarray:
            fold = fold_of[image_id]
            read = tuple(c.by_fold[fold] for c in runs.values())
            return postprocess.apply(probabilities(image_id, read), tuned[model].by_fold[fold])
        def largest(case: str) -> list:  # the 3D step of the case's fold
            return tuned[model].by_fold[fold_of[cases[case][0]]].get("largest_3d", [])
        table = volume_scores.volume_table(mask, target, cases, records, volumes_meta["axis"], classes, largest,
                                           inputs.meta["task"])
        out["models"][model] = volume_scores.summary(table)
    return out


def scores_table(rows_of: dict, fold_of: dict, like: pd.DataFrame | None = None) -> pd.DataFrame:
    """{image id: image_scores() rows} -> a scores table. like: a full table, whose columns rows scored without HD95
    take (left empty), so that per_image() averages their classes exactly as it does the full table's."""
    table = pd.DataFrame([{"id": i, "fold": fold_of[i], **r} for i, rows in rows_of.items() for r in rows])
    return table if like is None else table.reindex(columns=like.columns)


def summarize_scores(scores: pd.DataFrame) -> dict:
    """Means over images, and the sample std (ddof=1, as infer.py's tables) over images and over fold means."""
    images = per_image(scores)
    fold_means = images.groupby("fold")[["dice", "iou"]].mean()
    return {"dice": images["dice"].mean(), "dice_image_std": images["dice"].std(ddof=1),
            "dice_fold_mean": fold_means["dice"].mean(), "dice_fold_std": fold_means["dice"].std(ddof=1),
            "iou": images["iou"].mean(), "iou_fold_mean": fold_means["iou"].mean(),
            "iou_fold_std": fold_means["iou"].std(ddof=1), "hd95": images["hd95"].mean(),
            **({"hd95_pct": images["hd95_pct"].mean()} if "hd95_pct" in images else {}),
            "folds": {int(f): d for f, d in fold_means["dice"].items()}, "per_class": pooled_by_class(scores)}


def tta_gain(dice_of: dict, image_ids: list) -> dict:
    """Mean Dice of every TTA mode a run was predicted with, on those of image_ids that all of them predicted, and the
    gain of each over none (None where none was not predicted). dice_of: {mode: image_dice()}."""
    dice = pd.DataFrame(dice_of).reindex(image_ids).dropna()
    plain = dice["none"].mean() if "none" in dice else None
    return {"images": len(dice), "modes": {m: {"dice": d, "gain": None if plain is None else d - plain}
                                           for m, d in dice.mean().items()}}


def ensemble_gain(summaries: dict, ensemble: dict) -> dict:
    """The ensemble against the best single run, like with like: post-processed (each cross-validated) with
    post-processed, and raw (threshold 0.5 or argmax) with raw. An ensemble of one run gains exactly 0."""
    best = max(summaries, key=lambda n: summaries[n]["postprocessed"]["dice"])
    best_raw = max(summaries, key=lambda n: summaries[n]["postprocessed"]["dice_raw"])
    return {"best_single": best, "ensemble_gain": ensemble["dice"] - summaries[best]["postprocessed"]["dice"],
            "best_single_raw": best_raw,
            "ensemble_gain_raw": ensemble["dice_raw"] - summaries[best_raw]["postprocessed"]["dice_raw"]}


def per_class(summaries: dict, ensemble: dict, table: pd.DataFrame, group_of: dict | None, unit: str) -> dict:
    """Several classes: each model's Dice per class with pixels pooled over the scored images, post-processed
    (cross-validated) and raw, their macro means, every class that post-processing lowered, and the ensemble's
    pooled Dice per class with its bootstrap interval (over images, or their groups: group_of {id: group}; table:
    its scores)."""
    models = {**{n: s["postprocessed"] for n, s in summaries.items()}, "ensemble": ensemble}
    classes = list(ensemble["per_class"])
    pooled = {c: {n: m["per_class"][c] for n, m in models.items()} for c in classes}
    raw = {c: {n: m["per_class_raw"][c] for n, m in models.items()} for c in classes}
    intervals = {c: pooled_dice_interval(*(rows[k].to_numpy() for k in ("tp", "fp", "fn")),
                                         groups=[group_of[i] for i in rows["id"]] if group_of else None,
                                         group_unit=unit)["ci95"]
                 for c, rows in table.groupby("class", sort=False)}
    return {"per_class": pooled, "per_class_raw": raw, "per_class_interval": intervals,
            "macro": {n: {"postprocessed": float(np.mean([pooled[c][n] for c in classes])),
                          "raw": float(np.mean([raw[c][n] for c in classes]))} for n in models},
            "lowered_classes": [{"model": n, "class": c, "raw": raw[c][n], "postprocessed": pooled[c][n]}
                                for n in models for c in classes if pooled[c][n] < raw[c][n]]}


def compare_architectures(image_ids: list, dice_of: dict, groups: list | None, tta: str | None,
                          group_unit: str = "patient") -> list:
    """For each encoder, each pair of COMPARED both ran with (Unet++ vs Unet; the deep-supervised Unet++ at its levels
    chosen by fold vs Unet and vs Unet++), and each run of slices with context against the same run without (its
    comparison has a context), on the same images, both at one TTA mode fixed in advance (tta, else the
    most augmented both have), over patients where groups (one per image of image_ids) are given; p Holm-adjusted
    over all the comparisons together. dice_of: {run: {mode: per-image Dice}}."""
    comparisons, group_of = [], dict(zip(image_ids, groups)) if groups else {}
    encoders = dict.fromkeys(name.split("-", 1)[1] for name in dice_of)  # run folders: <arch>-<encoder>[-c<K>]
    wanted = [((f"{b}-{e}", f"{c}-{e}"), {"encoder": e, "baseline": b, "challenger": c})
              for e in encoders for b, c in COMPARED]
    for name in dice_of:  # slices with K-slice context against the same run without: the study's --contexts
        arch, encoder, context = name_parts(name)
        if context > 1:
            wanted.append(((run_name(arch, encoder), name),
                           {"encoder": encoder, "baseline": arch, "challenger": arch, "context": context}))
    for pair, which in wanted:
        if not all(n in dice_of for n in pair):
            continue
        mode = tta or next((m for m in reversed(ledger.TTA_MODES) if all(m in dice_of[n] for n in pair)), None)
        if not all(mode in dice_of[n] for n in pair):
            print(f"ensemble: {pair[0]} and {pair[1]} not compared: no OOF scores of both at "
                  f"{f'TTA {mode}' if mode else 'one TTA mode'}; run infer.py --tta {mode or 'none'} for both")
            continue
        a, b = (dice_of[n][mode] for n in pair)
        common = [i for i in image_ids if i in a.index and i in b.index]
        comparisons.append({**which, "tta": mode,
                            **paired_comparison(a[common].to_numpy(), b[common].to_numpy(),
                                                groups=[group_of[i] for i in common] if groups else None,
                                                alpha=ALPHA, group_unit=group_unit)})
    for comparison, p_value in zip(comparisons, holm([c["wilcoxon_p"] for c in comparisons])):
        comparison["p_holm"] = p_value  # adjusting can only make a difference insignificant
        comparison["verdict"] = comparison["verdict"] if p_value < ALPHA else "no significant difference"
    return comparisons


def by_encoder(scores: dict) -> list:
    """One row per encoder that two or more of ARCHS ran with (the study's table): each one's parameters (M),
    cross-validated raw Dice and IoU (mean and std over folds), training seconds per epoch and OOF prediction images/s
    (None where not recorded or not run), for Unet++ DS at its test masks' level, with its chosen levels and every
    level's parameters, images/s and Dice; and each comparison of scores["comparisons"] as <challenger>-<baseline>_
    difference, _ci95_low, _ci95_high, _wilcoxon_p, _p_holm, _tta (None where not compared). Best Dice first."""
    runs, rows = scores["runs"], []
    compared = {(c["encoder"], c["baseline"], c["challenger"]): c for c in scores["comparisons"]}
    for encoder in dict.fromkeys(name.split("-", 1)[1] for name in runs):  # run folders: <arch>-<encoder>
        present = [arch for arch in ARCHS if f"{arch}-{encoder}" in runs]
        if len(present) < 2:
            continue
        row = {"encoder": encoder, "folds": len(runs[f"{present[0]}-{encoder}"]["folds"]), "archs": present}
        for arch in ARCHS:
            r = runs.get(f"{arch}-{encoder}", {})  # an architecture the encoder did not run with: None everywhere
            training, inference = r.get("training"), r.get("inference")
            parameters = (r.get("levels") or {}).get(r.get("level"), {}).get("parameters_m") or r.get("parameters_m")
            row.update({f"{arch}_parameters_m": parameters,
                        f"{arch}_dice": r.get("dice_fold_mean"), f"{arch}_dice_std": r.get("dice_fold_std"),
                        f"{arch}_iou": r.get("iou_fold_mean"), f"{arch}_iou_std": r.get("iou_fold_std"),
                        f"{arch}_tta": r.get("tta"),
                        f"{arch}_seconds_per_epoch": 60 * training["minutes"] / (
                            training["folds"] * training["epochs_per_fold"]) if training else None,
                        f"{arch}_images_per_s": inference["images_per_s"] if inference else None})
        r = runs.get(f"unetpp_ds-{encoder}", {})
        row.update({"unetpp_ds_level": r.get("level"), "unetpp_ds_level_by_fold": r.get("level_by_fold"),
                    "unetpp_ds_levels": r.get("levels")})
        for baseline, challenger in COMPARED:
            c = compared.get((encoder, baseline, challenger), {"ci95": [None, None]})  # not both, or no common TTA
            row.update({f"{challenger}-{baseline}_{key}": value for key, value in (
                ("difference", c.get("mean_difference")), ("ci95_low", c["ci95"][0]), ("ci95_high", c["ci95"][1]),
                ("wilcoxon_p", c.get("wilcoxon_p")), ("p_holm", c.get("p_holm")), ("tta", c.get("tta")))})
        rows.append(row)
    return sorted(rows, key=lambda row: -max(row[f"{a}_dice"] for a in row["archs"]))
