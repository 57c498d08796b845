"""Step 5 of an ensemble: what its folder holds besides the masks: scores.json and oof_scores.csv (step 4's), the
selection it was made from (selection.json), the leaderboard (Markdown, its answers first) and figures (PNG), and
the tracker's tables."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from src import runs as ledger, tracking
from src.canonical import read_dataset_image
from src.config import load_run_config
from src.metrics import image_dice, image_scores, per_image
from src.plotting import pyplot
from src.portable import postprocess
from src.portable.files import write_atomic
from src.portable.images import read_image
from src.portable.postprocess import shrink
from src.runs import TTA_MODES

# Fixed class colours (RGB), background black: the same class always looks the same.
PALETTE = np.array([(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)], np.uint8)


def write(out: Path, scores: dict, tables: dict, inputs, choices, figures: int, tracker: str | None) -> None:
    """Step 5: scores.png, study.png (where two architectures share an encoder), comparison.png (figures OOF images:
    where the first two runs disagree most, and the worst one), the tracker's tables where asked or the runs were
    trained so; then scores.json, oof_scores.csv (the ensemble's post-processed OOF scores), selection.json and
    leaderboard.md. tables, choices, inputs: steps 4, 3 and 2's."""
    out.mkdir(parents=True, exist_ok=True)
    score_bars(out / "scores.png", scores)
    if scores["by_encoder"]:
        study_figure(out / "study.png", scores["by_encoder"])
    shown = pick_examples({run: image_dice(tables[run]) for run in choices.runs}, figures)
    if shown:
        comparison_grid(out / "comparison.png", [panels(i, choices, scores, inputs) for i in shown],
                        inputs.meta["classes"])
    log_to_tracker(out, scores, choices, tracker)
    write_atomic(out / "oof_scores.csv", tables["ensemble"].to_csv(index=False))
    write_atomic(out / "selection.json", json.dumps(scores["selection"], indent=2) + "\n")
    write_atomic(out / "scores.json", json.dumps(scores, indent=2, default=float) + "\n")
    write_atomic(out / "leaderboard.md", leaderboard_markdown(scores))


def panels(image_id: str, choices, scores: dict, inputs) -> tuple:
    """One comparison.png row: the image, its truth, and each run's OOF mask as its test masks would be made (its
    test set, post-processed with its settings chosen on all OOF images) with that mask's Dice."""
    dataset_dir, meta = inputs.dataset_dir, inputs.meta
    target = read_image(dataset_dir / "masks" / f"{image_id}.png")
    masks = {}
    for run, choice in choices.runs.items():
        masks[run] = postprocess.apply(ledger.mean_probabilities([1.0])(image_id, (choice.for_test,)),
                                       scores["runs"][run]["postprocessed"]["postprocess"])
    dice = {run: per_image(pd.DataFrame([{"id": image_id, **row} for row in image_scores(
        mask, target, meta["classes"], with_hd95=False, task=meta["task"])]))["dice"].iloc[0]
        for run, mask in masks.items()}
    image = read_dataset_image(dataset_dir, inputs.index.loc[image_id], meta["channels"])
    return image_id, image if meta["channels"] in (1, 3) else image[..., 0], target, masks, dice  # a volume: channel 0


def log_to_tracker(out: Path, scores: dict, choices, tracker: str | None) -> None:
    """The leaderboard and the per-encoder table as W&B tables (tracker: --tracker; None: wandb where a run was
    trained with it), every row post-processed with its dice_raw beside it, as the Markdown's."""
    configs = [load_run_config(c.for_test.folder.parent)[0] for c in choices.runs.values()]
    if (tracker or ("wandb" if any(c.tracker == "wandb" for c in configs) else "none")) != "wandb":
        return
    models = {**{n: {**r, **r["postprocessed"]} for n, r in scores["runs"].items()}, "ensemble": scores["ensemble"]}
    table = pd.DataFrame([{"model": n, **{k: v for k, v in r.items() if not isinstance(v, dict)}}
                          for n, r in models.items()])
    by_encoder = {"by_encoder": pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, (dict, list))}
                                              for r in scores["by_encoder"]])} if scores["by_encoder"] else {}
    selection = scores["selection"]
    tracking.log_tables(scores["dataset"], "ensemble", "ensemble", "ensemble", out, {"leaderboard": table, **by_encoder},
                        {"ensemble_dice": scores["ensemble"]["dice"], "ensemble_gain": scores["ensemble_gain"],
                         "ensemble_gain_raw": scores["ensemble_gain_raw"]},
                        tags=",".join(sorted({t for c in configs for t in c.tags.split(",") if t})),
                        config={"arch": sorted({c.arch for c in configs}), "encoder": sorted({c.encoder for c in configs}),
                                "fold": sorted(int(f) for f in scores["tuning_by_fold"]), "runs": sorted(choices.runs),
                                "tta": selection["tta"], "checkpoint": selection["checkpoint"]})


def leaderboard_markdown(scores: dict) -> str:
    images, e = scores["images"], scores["ensemble"]
    left_out = (f" ({images['left_out']} more lack an OOF prediction from some run and are left out)"
                if images["left_out"] else "")
    lines = [f"# Leaderboard: {scores['dataset']}", *headline(scores), "", *made_from(scores),
             f"Out-of-fold scores at original resolution, every model on the same {images['scored']} training images"
             f"{left_out}. Cross-validated: each choice made on OOF data (a run's TTA under `--tta best`, the "
             "post-processing of each run and of the ensemble) is made for each fold on the other folds and applied "
             "to that fold, so no image is scored with settings tuned on it. Every model is post-processed the same "
             "way (a single run is an ensemble of one); raw: its own masks (threshold 0.5 or argmax, no "
             "post-processing). Every figure is labelled one or the other. Dice (folds): mean +- std of the fold "
             "means of per-image Dice; Dice (images): mean +- std over images (std with ddof=1).", ""]
    runs = sorted(scores["runs"].items(), key=lambda kv: -kv[1]["postprocessed"]["dice"])
    if scores["per_class"]:
        lines += [*per_class_markdown(scores), ""]
    lines += ["| model | TTA | epoch rule | post-processed Dice (folds) | post-processed Dice (images) | "
              "post-processed IoU | post-processed HD95 px (% diag) | raw Dice (images) | training (all folds) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs:
        p = r["postprocessed"]
        lines.append(f"| {name}{level_note(r)}{window_note(r)}{stale_mark(r)} | {tta_cell(r['tta_by_fold'])} | {rule_cell(r['epoch_rule'])} | "
                     f"{dice_cells(p)} | {hd95_cell(p)} | {p['dice_raw']:.4f} | {training_cell(r['training'])} |")
    optimistic = [n for n, r in runs if r["epoch_rule"]["optimistic"]]
    lines.append(f"| **ensemble** ({len(scores['runs'])} runs, post-processing tuned on the other folds) | | "
                 f"{'optimistic' if optimistic else ''} | {dice_cells(e)} | {hd95_cell(e)} | {e['dice_raw']:.4f} | |")
    lines += ["", "Epoch rule (which epoch's weights each run is scored with, per fold): "
              + "; ".join(f"`{rule}`: {text}" for rule, text in RULES.items()
                          if any(rule in r["epoch_rule"]["select_on"].split("/") for _, r in runs)) + "."]
    if optimistic:
        lines += ["", f"Optimistic epoch rule: {', '.join(optimistic)} trained under `--select-on fold`, which chose the epoch (and "
                  "steered the schedule and early stopping) on the very fold it is scored on; their figures, and the "
                  "ensemble's, flatter them. Train with `--select-on final` or `inner` for an estimate."]
    for name, r in runs:
        lines += [f"\nStale, kept: {name} fold {fold} was kept by study {record['study']} with `--accept-stale`, "
                  f"though it asked other settings ({record['differs']})."
                  for fold, record in r["accepted_stale"].items()]
    lines += ["", f"Optimistic (tuned and scored on the same images): the ensemble's post-processed Dice "
              f"{e['dice_optimistic']:.4f}, with the TTA and post-processing chosen on all OOF images, as the test "
              "masks use them."]
    modes = [m for m in TTA_MODES if any(m in t["modes"] for t in scores["tta_gain"].values())]
    lines += ["", "Raw OOF Dice of each TTA mode a run was predicted with (gain over none):", "",
              "| model | images | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
    for name, tta in scores["tta_gain"].items():
        cells = [f"{m['dice']:.4f}" + (f" ({m['gain']:+.4f})" if m["gain"] is not None and mode != "none" else "")
                 if (m := tta["modes"].get(mode)) else "-" for mode in modes]
        lines.append(f"| {name} | {tta['images']} | " + " | ".join(cells) + " |")
    if scores["comparisons"]:
        lines += ["", comparison_markdown(scores["comparisons"])]
    if scores["by_encoder"]:
        lines += ["", by_encoder_markdown(scores["by_encoder"])]
    if scores["by"]:
        by = pd.DataFrame(scores["by"]["table"])
        models = [c for c in by.columns if c not in ("group", "images")]
        lines += ["", f"Mean post-processed Dice per image by `{scores['by']['column']}`:", "",
                  f"| {scores['by']['column']} | images | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
        lines += [f"| {r['group']} | {r['images']} | " + " | ".join(f"{r[m]:.4f}" for m in models) + " |"
                  for r in by.to_dict("records")]
    lines += ["", "Chosen for each fold on the other folds' images:", "", "| fold | images | TTA | post-processing |",
              "|---|---|---|---|"]
    lines += [f"| {f} | {t['images']} | {', '.join(f'{n} {m}' for n, m in t['tta'].items())} | "
              f"{settings_text(t['postprocess'])} |" for f, t in scores["tuning_by_fold"].items()]
    test_tta = ", ".join(f"{n} {r['tta']}" for n, r in scores["runs"].items())
    weights = ", ".join(f"{n} {w:g}" for n, w in scores["weights"].items())
    lines += ["", f"Test masks: chosen on all OOF images: TTA {test_tta}; {settings_text(scores['postprocess'])}."
              + (f" Weighted mean over the runs: {weights}." if weights else "")]
    return "\n".join(lines) + "\n"

def headline(scores: dict) -> list:
    """The leaderboard's answers, before its tables, and what ensemble.py and study.py print last (four lines): the
    best model's Dice with its 95% interval; the ensemble against it, like with like; each architecture comparison's
    verdict and difference with its interval; the epoch rule and TTA."""
    runs, best, interval = scores["runs"], scores["best_single"], scores["best_interval"]
    p = runs[best]["postprocessed"]
    lines = [f"- Best model: {best}{level_note(runs[best])}, Dice {p['dice']:.4f} per image, post-processed, 95% CI "
             f"{span(interval['ci95'])} (bootstrap over {interval['units']} {interval['unit']}s); raw "
             f"{p['dice_raw']:.4f}."]
    e, versus = scores["ensemble"], scores["ensemble_vs_best"]
    raw_best = runs[scores["best_single_raw"]]["postprocessed"]["dice_raw"]
    if len(runs) == 1:
        lines.append("- Ensemble: of one run, the best model itself (gain 0).")
    else:
        verdict = {"better": "beats it", "worse": "is worse than it",
                   "no significant difference": "does not beat it significantly"}[versus["verdict"]]
        lines.append(f"- Ensemble of {len(runs)} runs {verdict}, like with like: post-processed {e['dice']:.4f} vs "
                     f"{p['dice']:.4f}, {versus['mean_difference']:+.4f}, 95% CI {span(versus['ci95'], '+.4f')}; raw "
                     f"{e['dice_raw']:.4f} vs {raw_best:.4f} ({scores['best_single_raw']} raw), "
                     f"{scores['ensemble_gain_raw']:+.4f}.")
    if scores["comparisons"]:
        lines.append("- " + "; ".join(
            f"{compared(c)[0]} vs {compared(c)[1]}, {c['encoder']}: "
            + (f"{compared(c)[0]} {c['verdict']}" if c["verdict"] in ("better", "worse") else c["verdict"])
            + f", raw Dice {c['mean_difference']:+.4f}, 95% CI {span(c['ci95'], '+.4f')} (TTA {c['tta']}, "
            f"Holm-adjusted p {c['p_holm']:.3g})" for c in scores["comparisons"]) + ".")
    else:
        lines.append("- Unet++ vs Unet: not compared (no encoder has both, scored at one TTA mode).")
    if scores.get("volumes"):
        lines.append(volume_line(scores["volumes"]))
    rules = sorted({rule for r in runs.values() for rule in r["epoch_rule"]["select_on"].split("/")})
    optimistic = [n for n, r in runs.items() if r["epoch_rule"]["optimistic"]]
    selection = scores["selection"]
    weights = "" if selection["checkpoint"] == "selected" else f", scored with {selection['checkpoint']}.pt"
    tta = (f"TTA {selection['tta']}" if selection["tta"] != "best" else "TTA chosen for each fold on the other folds: "
           + ", ".join(f"{n} {tta_cell(r['tta_by_fold'])}" for n, r in runs.items()))
    lines.append(f"- Epoch rule {', '.join(f'--select-on {r}' for r in rules)}{weights}"
                 + (f" (optimistic for {', '.join(optimistic)}: epoch chosen on the scored fold)" if optimistic else "")
                 + f"; {tta}.")
    return lines


def volume_line(volumes: dict) -> str:
    """The cases in 3D, as nnU-Net reports them: per-label Dice and HD95 (mm) averaged over cases, each model."""
    def model(name: str, v: dict) -> str:
        labels = ", ".join(f"{label} {c['dice']:.4f} ({c['hd95_mm']:.2f} mm)" for label, c in v["per_class"].items())
        return f"{name} {v['dice']:.4f} {span(v['dice_interval']['ci95'])}: {labels}"
    models, rules = volumes["models"], volumes["rules"]
    if len(models) == 2:  # one run: the ensemble is that run
        models = {name: v for name, v in models.items() if name != "ensemble"}
    contexts = sorted(set(rules["context"].values()))
    return (f"- In 3D over {next(iter(models.values()))['cases']} cases, Dice per case [95% CI over cases] and per "
            f"label (HD95): " + "; ".join(model(name, v) for name, v in models.items())
            + f". Slices: {rules['axis']}; {rules['normalisation']}; context "
            + ("/".join(map(str, contexts)) if len(contexts) > 1 else f"{contexts[0]}") + ".")


def span(ci95: list, spec: str = ".4f") -> str:
    return f"[{ci95[0]:{spec}}, {ci95[1]:{spec}}]"


def per_class_markdown(scores: dict) -> list:
    """Multiclass: the leaderboard's lead, each model's pooled Dice per class and their macro mean beside its
    per-image Dice, post-processed with raw in brackets; then every class that post-processing lowered."""
    classes, models = list(scores["per_class"]), list(scores["macro"])
    per_image = {**{n: r["postprocessed"] for n, r in scores["runs"].items()}, "ensemble": scores["ensemble"]}
    lines = ["Dice per class, pixels pooled over the scored images, and their macro mean, beside the mean per-image "
             "Dice; post-processed (cross-validated), raw in brackets:", "",
             "| model | macro mean | " + " | ".join(classes) + " | Dice per image |", "|---|---|" + "---|" * len(classes) + "---|"]
    for n in models:
        cells = [f"{scores['macro'][n]['postprocessed']:.4f} ({scores['macro'][n]['raw']:.4f})"]
        cells += [f"{scores['per_class'][c][n]:.4f} ({scores['per_class_raw'][c][n]:.4f})" for c in classes]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {per_image[n]['dice']:.4f} ({per_image[n]['dice_raw']:.4f}) |")
    lines += ["", "The ensemble's pooled Dice per class with its bootstrap 95% interval: " + ", ".join(
        f"{c} {scores['per_class'][c]['ensemble']:.4f} [{low:.4f}, {high:.4f}]"
        for c, (low, high) in scores["per_class_interval"].items()) + "."]
    lowered = scores["lowered_classes"]
    if lowered:
        lines += ["", "Post-processing lowered a class's pooled Dice (its minimum area erased more true than false "
                  "pixels): " + "; ".join(f"{d['class']} in {d['model']} {d['raw']:.4f} -> {d['postprocessed']:.4f}"
                                          for d in lowered) + "."]
    return lines


RULES = {"final": "the final weights of a fixed schedule (`--select-on final`: no validation score steers training)",
         "inner": "the epoch chosen on an inner split of the training folds, never the scored fold "
                  "(`--select-on inner`; with `--checkpoint last` the final epoch)",
         "fold": "the epoch chosen on the scored fold itself (`--select-on fold`; with `--checkpoint last` the final "
                 "epoch, but plateau and early stopping read that fold): optimistic"}


def rule_cell(rule: dict) -> str:
    """'final, epoch 12' or 'fold, epochs 9/12/11 (optimistic)': the rule and each fold's epoch."""
    epochs = list(rule["epochs"].values())
    shown = f"epoch {epochs[0]}" if len(set(epochs)) == 1 else "epochs " + "/".join(map(str, epochs))
    return f"{rule['select_on']}, {shown}" + (" (optimistic)" if rule["optimistic"] else "")


def stale_mark(run: dict) -> str:
    """' (stale, kept)' for a run a study kept with --accept-stale though it asked other settings."""
    return " (stale, kept)" if run["accepted_stale"] else ""


CHECKPOINTS = {"selected": "the weights each run's --select-on rule scores", "best": "best.pt, the best validation epoch",
               "last": "last.pt, the final epoch"}


def made_from(scores: dict) -> list:
    """The leaderboard's first line: which checkpoint's predictions of which runs, and the TTA rule, made it."""
    selection = scores["selection"]
    checkpoint = selection["checkpoint"]
    asked = "" if selection["runs"] == "*" else f" (--runs {selection['runs']})"
    rules = sorted({rule for r in scores["runs"].values() for rule in r["epoch_rule"]["select_on"].split("/")})
    return [f"Made from the predictions of {CHECKPOINTS.get(checkpoint, checkpoint + '.pt')} of "
            f"{', '.join(selection['found'])}{asked}; TTA {selection['tta']}; epoch rule "
            f"{', '.join(f'--select-on {r}' for r in rules)}.", ""]


ARCHS = {"unet": "Unet", "unetpp": "Unet++", "unetpp_ds": "Unet++ DS"}  # names as printed; DS: deep supervision


def window_note(r: dict) -> str:
    """' (sliding window 128 px, overlap 0.5, 9 windows an image)' for a run trained on patches (infer.py's record
    in inference.json), '' for a run predicting the whole image."""
    window = (r.get("inference") or {}).get("window")
    return f" ({window})" if window else ""


def level_note(r: dict) -> str:
    """' (level L3)' or ' (levels L3/L4/L3 by fold)' for a unetpp_ds run's summary, '' for any other."""
    if "level_by_fold" not in r:
        return ""
    levels = tta_cell(r["level_by_fold"])
    return f" (level{'s' * (len(set(r['level_by_fold'].values())) > 1)} {levels})"


def compared(c: dict) -> tuple:
    """(challenger, baseline) of a comparison as printed: Unet++ and Unet, or Unet at context 3 and Unet alone."""
    if c.get("context"):
        return f"{ARCHS[c['challenger']]} at context {c['context']}", f"{ARCHS[c['baseline']]} on single slices"
    return ARCHS[c["challenger"]], ARCHS[c["baseline"]]


def comparison_markdown(comparisons: list) -> str:
    """scores.compare_architectures()'s comparisons, one line each under the rule they share."""
    pairs = ", ".join(dict.fromkeys(" vs ".join(compared(c)) for c in comparisons))
    lines = [f"{pairs}, both on the same images, on raw masks (the models' own: threshold 0.5 or argmax, no "
             "post-processing) at one TTA fixed in advance (Wilcoxon signed-rank and a bootstrap 95% interval "
             "of the mean Dice difference, over patients where the split grouped images by patient; p Holm-adjusted "
             f"over the {len(comparisons)} comparison(s) together; Unet++ DS at the level chosen for each fold on the "
             "other folds):", ""]
    for c in comparisons:
        units = (f"{c['units']} {c['unit']}s, " if c["unit"] != "image" else "") + f"{c['images']} images"
        lines.append(f"- {c['encoder']}, {' vs '.join(compared(c))} (TTA {c['tta']}, "
                     f"{units}): {compared(c)[0]} {c['verdict']} (mean raw Dice difference "
                     f"{c['mean_difference']:+.4f}, 95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], "
                     f"p = {c['wilcoxon_p']:.3g}, Holm-adjusted p = {c['p_holm']:.3g})")
    return "\n".join(lines)


def by_encoder_markdown(rows: list) -> str:
    """scores.by_encoder()'s rows as the leaderboard's per-encoder table, and the levels of Unet++ DS where it ran."""
    archs = [a for a in ARCHS if any(a in r["archs"] for r in rows)]
    pairs = [(a, b) for a, b in (("unet", "unetpp"), ("unet", "unetpp_ds"), ("unetpp", "unetpp_ds"))
             if a in archs and b in archs]
    names = " / ".join(ARCHS[a] for a in archs)

    def each(row, key, spec):
        return " / ".join("n/a" if row[f"{a}_{key}"] is None else format(row[f"{a}_{key}"], spec) for a in archs)

    def scores(row, arch):
        if row[f"{arch}_dice"] is None:
            return "n/a | n/a"
        level = f" ({tta_cell(row['unetpp_ds_level_by_fold'])})" if arch == "unetpp_ds" else ""
        return " | ".join(f"{row[f'{arch}_{m}']:.4f} +- {row[f'{arch}_{m}_std']:.4f}" for m in ("dice", "iou")) + level

    def difference(row, pair):
        key = f"{pair[1]}-{pair[0]}_"
        if row[key + "difference"] is None:
            return "n/a | n/a"
        return (f"{row[key + 'difference']:+.4f} [{row[key + 'ci95_low']:+.4f}, {row[key + 'ci95_high']:+.4f}] "
                f"(TTA {row[key + 'tta']}) | {row[key + 'wilcoxon_p']:.3g} ({row[key + 'p_holm']:.3g})")

    header = [f"params M ({names})", *(f"{ARCHS[a]} raw {m}" for a in archs for m in ("Dice", "IoU")),
              *(f"{ARCHS[b]} - {ARCHS[a]} [95% CI] | Wilcoxon p (Holm)" for a, b in pairs),
              f"s/epoch ({names})", f"images/s ({names})"]
    lines = [f"Per encoder, {' against '.join(ARCHS[a] for a in archs)} (best Dice first): raw Dice and IoU (the "
             "runs' own masks, no post-processing, as the differences; the table above has them post-processed), "
             "cross-validated, mean +- std over the folds (Unet++ DS: deep supervision, each fold at the level chosen "
             "on the other folds, in brackets); each difference, its bootstrap 95% interval and Wilcoxon p "
             "(Holm-adjusted in brackets) as above, at one TTA; s/epoch from training's history.csv; OOF prediction "
             "images/s (reading, model at the run's TTA, writing) from infer.py; Unet++ DS's parameters and images/s "
             "those of its test masks' level.", "",
             "| encoder | " + " | ".join(header) + " |", "|---" * (1 + len(header) + len(pairs)) + "|"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {each(r, 'parameters_m', '.1f')} | "
                     + " | ".join(scores(r, a) for a in archs) + " | "
                     + "".join(difference(r, pair) + " | " for pair in pairs)
                     + f"{each(r, 'seconds_per_epoch', '.1f')} | {each(r, 'images_per_s', '.0f')} |")
    levelled = [r for r in rows if r["unetpp_ds_levels"]]
    if levelled:
        lines += ["", "Unet++ DS by level (L1 ... L4: the sub-network up to that head; mean: all heads averaged), at "
                  "its test masks' TTA: parameters (M), OOF prediction images/s, raw OOF Dice of the level alone on "
                  "all images (not cross-validated):", "", "| encoder | level | params M | images/s | raw Dice |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['encoder']} | {level}{' (test masks)' * (level == r['unetpp_ds_level'])} | "
                  f"{number(v['parameters_m'], '.2f')} | {number(v['images_per_s'], '.0f')} | {v['dice']:.4f} |"
                  for r in levelled for level, v in r["unetpp_ds_levels"].items()]
    return "\n".join(lines)


def number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def tta_cell(by_fold: dict) -> str:
    """'flip' when every fold chose it, else each fold's choice in fold order."""
    modes = list(by_fold.values())
    return modes[0] if len(set(modes)) == 1 else "/".join(modes) + " (by fold)"


def dice_cells(r: dict) -> str:
    return (f"{r['dice_fold_mean']:.4f} +- {r['dice_fold_std']:.4f} | {r['dice']:.4f} +- {r['dice_image_std']:.4f} | "
            f"{r['iou']:.4f}")


def hd95_cell(r: dict) -> str:
    return f"{r['hd95']:.1f}" + (f" ({r['hd95_pct']:.2f}%)" if "hd95_pct" in r else "")


def settings_text(settings: dict) -> str:
    """'threshold 0.55, fill holes, min area 0.002, keep 2 largest' or 'argmax, min area per class 0, 0.0005', then a
    volume's 3D step: '; in 3D, the largest component of labels 1, 2'."""
    largest = settings.get("largest_3d")
    in_3d = "" if largest is None else "; in 3D, " + (
        f"the largest component of label{'s' * (len(largest) > 1)} {', '.join(map(str, largest))}" if largest
        else "all components kept")
    return slice_settings_text(settings) + in_3d


def slice_settings_text(settings: dict) -> str:
    if settings["task"] == "multilabel":  # each class's own binary settings
        return "; ".join(f"class {c}: {slice_settings_text({'task': 'binary', **by})}"
                         for c, by in enumerate(settings["by_class"], start=1)) or "threshold 0.5 each class"
    if settings["task"] != "binary":
        return "argmax" + (", min area per class " + ", ".join(f"{a:g}" for a in settings["min_areas"])
                           if any(settings["min_areas"]) else "")
    return ", ".join([f"threshold {settings['threshold']:g}"] + ["fill holes"] * settings["fill_holes"] +
                     [f"min area {settings['min_area']:g}"] * bool(settings["min_area"]) +
                     [f"keep {settings['keep_largest']} largest"] * bool(settings["keep_largest"]) +
                     [f"emptied below {settings.get('min_total', 0):g} of the image"] * bool(settings.get("min_total")))


def training_cell(training: dict | None) -> str:
    """'12.3 min, 15 epochs/fold, 18 img/s' from the runs' history.csv files (infer.py copies it to preds/)."""
    if not training:
        return "n/a"
    return (f"{training['minutes']:.1f} min, {training['epochs_per_fold']:.0f} epochs/fold, "
            f"{training['images_per_s']:.1f} img/s")


def colour(class_map: np.ndarray) -> np.ndarray:
    return PALETTE[np.asarray(class_map) % len(PALETTE)]


def pick_examples(image_dice: dict, n: int) -> list:
    """Image ids worth a look: where the first two models' Dice differ most, then the one where all fail most.

    image_dice: {model: Series of per-image Dice indexed by id}. With one model, its n worst images."""
    table = pd.DataFrame(image_dice).dropna()
    worst = table.mean(axis=1).sort_values()
    if table.shape[1] < 2 or n < 2:
        return list(worst.index[:n])
    disagreement = (table.iloc[:, 0] - table.iloc[:, 1]).abs().sort_values(ascending=False)
    chosen = list(disagreement.index[:n - 1])
    return chosen + [next(i for i in worst.index if i not in chosen)]


def comparison_grid(path: Path, rows: list, class_names: list) -> None:
    """rows: (title, image, truth, {model: post-processed prediction}, {model: its Dice}). Each panel draws one mask
    as contours over the image (class colours; truth dashed in white on the model panels); the last shows where the
    first two models disagree."""
    models = list(rows[0][3])
    columns = 1 + len(models) + (1 if len(models) >= 2 else 0)
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), columns, figsize=(3 * columns, 3 * len(rows)), squeeze=False)
    for axis_row, (title, image, truth, preds, dice) in zip(axes, rows):
        # A 3-inch panel shows no more of a 2000 px X-ray than 512 px do; matplotlib took 4 s on the originals.
        image, truth, *masks = (shrink(a, 512) for a in (image, truth, *preds.values()))
        panels = [(f"{title}\ntruth", truth, None)] + [(f"{m}\npost-processed Dice {dice[m]:.3f}", mask, truth)
                                                       for m, mask in zip(models, masks)]
        for axis, (label, mask, reference) in zip(axis_row, panels):
            axis.imshow(image, cmap="gray")
            for c in range(1, len(class_names)):
                if reference is not None and (reference == c).any():
                    axis.contour(reference == c, levels=[0.5], colors="white", linewidths=0.6, linestyles="dashed")
                if (mask == c).any():
                    axis.contour(mask == c, levels=[0.5], colors=[PALETTE[c] / 255], linewidths=1.0)
            axis.set_title(label, fontsize=7)
        if len(models) >= 2:
            overlay = np.dstack([image] * 3) if image.ndim == 2 else image.copy()
            overlay[masks[0] != masks[1]] = (255, 0, 255)
            axis_row[-1].imshow(overlay)
            # One name a line: two run names side by side are wider than the panel and ran into the next title.
            axis_row[-1].set_title(f"disagreement (magenta):\n{models[0]}\nvs {models[1]}", fontsize=7)
        for axis in axis_row:
            axis.axis("off")
    from matplotlib.patches import Patch
    fig.legend(handles=[Patch(color=PALETTE[i] / 255, label=n) for i, n in enumerate(class_names) if i] +
               [Patch(color="white", label="truth (dashed)", ec="black")], loc="lower center",
               ncol=len(class_names) + 1, fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score_bars(path: Path, scores: dict) -> None:
    """Each run's and the ensemble's post-processed Dice (folds), like with like as the leaderboard's table."""
    models = {**{n: r["postprocessed"] for n, r in scores["runs"].items()}, "ensemble": scores["ensemble"]}
    names, values = list(models), [m["dice_fold_mean"] for m in models.values()]
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    axis.bar(names, values, yerr=[m["dice_fold_std"] for m in models.values()], capsize=4,
             color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
    axis.set_ylabel("post-processed OOF Dice\n(cross-validated, mean +- std\nover folds)")
    axis.set_ylim(max(0, min(values) - 0.1), 1)
    axis.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study_figure(path: Path, rows: list) -> None:
    """Per encoder (by_encoder()'s order), the raw Dice of Unet, Unet++ and Unet++ DS (at its levels chosen by fold)
    side by side, each with the 95% interval of its mean over the folds (Student's t, from the std over the folds)."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(1.1 * len(rows) + 2.5, 3.5))
    x = np.arange(len(rows))
    for offset, (arch, label) in zip((-0.2, 0, 0.2), ARCHS.items()):
        drawn = [i for i, r in enumerate(rows) if r[f"{arch}_dice"] is not None]
        if not drawn:
            continue
        half = [stats.t.ppf(0.975, rows[i]["folds"] - 1) * rows[i][f"{arch}_dice_std"] / np.sqrt(rows[i]["folds"])
                for i in drawn]
        axis.errorbar(x[drawn] + offset, [rows[i][f"{arch}_dice"] for i in drawn], yerr=half, fmt="o", capsize=4,
                      label=label)
    axis.set_xticks(x, [r["encoder"] for r in rows], rotation=30, fontsize=7)
    axis.set_xlim(-0.5, len(rows) - 0.5)
    axis.set_ylabel("raw OOF Dice, cross-validated\n(mean over folds, 95% CI)")
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
