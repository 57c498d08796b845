"""One row per (recipe, run) of runs trained at a working size, whole or on patches: out-of-fold Dice, IoU and HD95
at original size (infer.py's oof_scores.csv, threshold 0.5), the window, seconds per training epoch (median over
epochs) and per image at OOF prediction (infer.py's inference.json), and against the first recipe's same run the
paired Dice difference on the same images (patients as units where the dataset has groups).

  python docs/results/patch_table.py cxr flip "resize 128=preds-planned-steps" "256, patches 128=preds-patch256"
"""
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.canonical import load_index  # noqa: E402
from src.config import load_run_config  # noqa: E402
from src.metrics import per_image  # noqa: E402
from src.runs import prediction_sets  # noqa: E402
from src.stats import paired_comparison  # noqa: E402


def main(dataset: str, tta: str, *recipes):
    index = load_index(Path("data") / dataset)
    groups = dict(zip(index["id"], index["group"])) if "group" in index else None
    print(f"| recipe | run | input | OOF Dice ({tta} TTA) | IoU | HD95 px (% diagonal) | s / epoch | s / image at "
          f"inference | Dice - first recipe's [95% CI] |\n|---|---|---|---|---|---|---|---|---|")
    first = {}
    for recipe in recipes:
        label, preds_dir = recipe.split("=", 1)
        for run, modes in prediction_sets(preds_dir, dataset).items():
            predictions = modes[tta]
            table = per_image(predictions.oof_scores()).set_index("id")
            run_dir = Path(predictions.provenance["run_dir"])
            folds = sorted(set(table["fold"]))
            cfg = load_run_config(run_dir / f"fold{folds[0]}")[0]
            window = predictions.windows("oof").get(folds[0])
            source = (f"{cfg.size} px, patches {cfg.patch}, overlap {window['overlap']:g}" if window
                      else f"{cfg.size} px, resized")
            epoch = pd.concat([pd.read_csv(run_dir / f"fold{f}" / "history.csv") for f in folds])["seconds"].median()
            inference = json.loads((predictions.folder / "inference.json").read_text())
            difference = ""
            if run in first:
                ids = first[run].index.intersection(table.index)
                c = paired_comparison(first[run].loc[ids, "dice"].to_numpy(), table.loc[ids, "dice"].to_numpy(),
                                      None if groups is None else [groups[i] for i in ids])
                difference = f"{c['mean_difference']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
            else:
                first[run] = table
            print(f"| {label} | {run} | {source} | {table['dice'].mean():.4f} | {table['iou'].mean():.4f} | "
                  f"{table['hd95'].mean():.1f} ({table['hd95_pct'].mean():.2f}%) | {epoch:.0f} | "
                  f"{1 / inference['images_per_s']:.3f} | {difference} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
