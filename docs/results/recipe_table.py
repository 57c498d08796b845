"""One row per (recipe or epoch rule, run): out-of-fold Dice and IoU at original size (infer.py's own oof_scores.csv,
threshold 0.5, no post-processing), the run's training time and epochs, and under each recipe the Unet++ - Unet
difference on the same images (patients as units where the dataset has groups, as the leaderboard compares them).

  python docs/results/recipe_table.py cxr flip former=preds-former planned=preds-planned "hand (fold)=preds-hand"
  python docs/results/recipe_table.py dsb96 flip final=preds "best on inner=preds-inner" "last, inner=preds-inner:last"

  python docs/results/recipe_table.py dsb96 flip --folds=0 --runs=unet-*,unetpp-* hand=preds planned=preds-planned

Each argument is label=preds_dir[:checkpoint] (checkpoint: selected, the default, best or last); its runs are found
through the run ledger (src.runs.level_sets: each level of a
unetpp_ds run is a row), the run folder from each set's prediction.json. Only the folds
scored by every run of a recipe are compared; --folds=0,1 keeps only those, --runs=<names or globs> only those runs.
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.canonical import load_index  # noqa: E402
from src.metrics import per_image  # noqa: E402
from src.stats import paired_comparison  # noqa: E402
from src.runs import epoch_of, level_sets, select  # noqa: E402


def training(run_dir: Path, folds) -> tuple:
    """(minutes of training summed over the folds, epochs run per fold) from each fold's history.csv."""
    histories = [pd.read_csv(run_dir / f"fold{f}" / "history.csv") for f in folds]
    return sum(h["seconds"].sum() for h in histories) / 60, [len(h) for h in histories]


def main(dataset: str, tta: str, *recipes):
    options = dict(r[2:].split("=", 1) for r in recipes if r.startswith("--"))
    recipes = [r for r in recipes if not r.startswith("--")]
    only = [int(f) for f in options["folds"].split(",")] if "folds" in options else None
    index = load_index(Path("data") / dataset)
    groups = dict(zip(index["id"], index["group"])) if "group" in index else None
    print(f"| recipe | run | folds | OOF Dice ({tta} TTA) | IoU | scored epoch | training min (epochs) | Unet++ - Unet "
          f"[95% CI] |\n|---|---|---|---|---|---|---|---|")
    for recipe in recipes:
        label, where = recipe.split("=", 1)
        preds_dir, _, checkpoint = where.partition(":")
        sets = {run + ("" if level is None else f" {level}"): predictions
                for run, modes in level_sets(preds_dir, dataset, checkpoint or "selected").items()
                for level, predictions in modes.get(tta, {}).items()}  # each level of a unetpp_ds run its own row
        sets = {name: sets[name] for name in select(list(sets), options.get("runs"))}
        images = {run: per_image(s.oof_scores()).set_index("id") for run, s in sets.items()}
        folds = sorted(set.intersection(*(set(t["fold"]) for t in images.values()))) if images else []
        folds = [f for f in folds if only is None or f in only]
        for run, table in images.items():
            images[run] = table[table["fold"].isin(folds)]
        for run, table in images.items():
            run_dir = Path(sets[run].provenance["run_dir"])
            minutes, epochs = training(run_dir, folds)
            scored = sorted({epoch_of(run_dir / f"fold{f}", checkpoint or "selected")[1] for f in folds})
            difference = ""
            unet = "unet-" + run.split("-", 1)[1]  # the same encoder's Unet
            if run.startswith("unetpp-") and unet in images:
                a = images[unet]
                ids = a.index.intersection(table.index)
                c = paired_comparison(a.loc[ids, "dice"].to_numpy(), table.loc[ids, "dice"].to_numpy(),
                                      None if groups is None else [groups[i] for i in ids])
                difference = f"{c['mean_difference']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
            print(f"| {label} | {run} | {','.join(map(str, folds))} | {table['dice'].mean():.4f} | "
                  f"{table['iou'].mean():.4f} | {'/'.join(map(str, scored))} | {minutes:.1f} "
                  f"({'/'.join(map(str, epochs))}) | {difference} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
