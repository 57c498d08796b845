"""The ensemble's leaderboard (Markdown) and figures (PNG)."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from src.postprocess import shrink  # noqa: E402

# Fixed class colours (RGB), background black: the same class always looks the same.
PALETTE = np.array([(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)], np.uint8)


def leaderboard_markdown(scores: dict) -> str:
    lines = [f"# Leaderboard: {scores['dataset']}", "",
             "Out-of-fold scores at original resolution. Dice (folds): mean +- std of the fold means of per-image "
             "Dice; Dice (images): mean +- std over all images.", "",
             "| model | TTA | Dice (folds) | Dice (images) | IoU | HD95 px |", "|---|---|---|---|---|---|"]
    for name, r in sorted(scores["runs"].items(), key=lambda kv: -kv[1]["dice"]):
        lines.append(f"| {name} | {r['tta']} | {r['dice_fold_mean']:.4f} +- {r['dice_fold_std']:.4f} | {r['dice']:.4f} +- "
                     f"{r['dice_image_std']:.4f} | {r['iou']:.4f} | {r['hd95']:.1f} |")
    e = scores["ensemble"]
    lines.append(f"| **ensemble** ({len(scores['runs'])} runs, tuned post-processing) | | {e['dice_fold_mean']:.4f} +- "
                 f"{e['dice_fold_std']:.4f} | {e['dice']:.4f} +- {e['dice_image_std']:.4f} | {e['iou']:.4f} | "
                 f"{e['hd95']:.1f} |")
    lines += ["", f"Ensemble gain over the best single model ({scores['best_single']}): "
              f"{scores['ensemble_gain']:+.4f} Dice (raw average, before post-processing: {e['dice_raw']:.4f})."]
    for name, gain in scores.get("tta_gain", {}).items():
        lines.append(f"TTA gain for {name}: {gain['gain']:+.4f} Dice ({gain['tta']} vs none).")
    if scores["per_class"]:
        lines += ["", "| class | " + " | ".join(scores["per_class"]) + " |",
                  "|---|" + "---|" * len(scores["per_class"])]
        for name in list(scores["runs"]) + ["ensemble"]:
            lines.append(f"| {name} | " + " | ".join(f"{scores['per_class'][c].get(name, float('nan')):.3f}"
                                                  for c in scores["per_class"]) + " |")
    if scores["comparisons"]:
        lines += ["", "Unet++ vs Unet on the same images (Wilcoxon signed-rank, bootstrap 95% interval of the mean "
                  "Dice difference):", ""]
        for c in scores["comparisons"]:
            lines.append(f"- {c['encoder']}: Unet++ {c['verdict']} (mean difference {c['mean_difference']:+.4f}, "
                         f"95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], p = {c['wilcoxon_p']:.3g}, "
                         f"{c['images']} images)")
    lines += ["", f"Post-processing chosen on OOF data only: `{scores['postprocess']}`"]
    return "\n".join(lines) + "\n"


def colour(class_map: np.ndarray) -> np.ndarray:
    return PALETTE[np.asarray(class_map) % len(PALETTE)]


def comparison_grid(path: Path, rows: list, class_names: list) -> None:
    """rows: (title, image, truth, {model: prediction}); the last column shows where the first two models disagree."""
    models = list(rows[0][3])
    columns = 2 + len(models) + (1 if len(models) >= 2 else 0)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.4 * columns, 2.4 * len(rows)), squeeze=False)
    for axis_row, (title, image, truth, preds) in zip(axes, rows):
        # A 264 px panel shows no more of a 2000 px X-ray than 512 px do; matplotlib took 4 s to resample the originals.
        image, truth = shrink(image, 512), shrink(truth, 512)
        preds = {m: shrink(p, 512) for m, p in preds.items()}
        panels = [(title, image), ("truth", colour(truth))] + [(m, colour(p)) for m, p in preds.items()]
        if len(models) >= 2:
            panels.append(("disagreement (first two)", preds[models[0]] != preds[models[1]]))
        for axis, (label, picture) in zip(axis_row, panels):
            axis.imshow(picture, cmap="gray" if np.ndim(picture) == 2 else None)
            axis.set_title(label, fontsize=7)
            axis.axis("off")
    fig.legend(handles=[Patch(color=PALETTE[i] / 255, label=n) for i, n in enumerate(class_names)],
               loc="lower center", ncol=len(class_names), fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score_bars(path: Path, scores: dict) -> None:
    names = list(scores["runs"]) + ["ensemble"]
    values = [scores["runs"][n]["dice_fold_mean"] for n in names[:-1]] + [scores["ensemble"]["dice_fold_mean"]]
    errors = [scores["runs"][n]["dice_fold_std"] for n in names[:-1]] + [scores["ensemble"]["dice_fold_std"]]
    fig, axis = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    axis.bar(names, values, yerr=errors, capsize=4, color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
    axis.set_ylabel("OOF Dice (mean +- std over folds)")
    axis.set_ylim(max(0, min(values) - 0.1), 1)
    axis.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
