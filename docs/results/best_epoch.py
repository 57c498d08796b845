"""The UNet++ reference's own epoch rule, read from this project's runs at no extra cost: OPTIMISTIC.

  python docs/results/best_epoch.py dsb96ref                    # runs/dsb96ref/*/fold*/history.csv
  python docs/results/best_epoch.py dsb96ref runs-ref20 10      # another runs folder; stop after 10 epochs without gain

train.py validates on the held-out fold after every epoch under every --select-on rule and writes its per-image mean
IoU and Dice (val_iou, val_dice: at the training size, the model's own forward, no TTA) to history.csv; under
--select-on final nothing reads them. The reference (4uiiurz1/pytorch-nested-unet, train.py) keeps the weights of the
epoch of best validation IoU on its hold-out, and stops after --early_stopping epochs without a gain (default -1:
never); so its figures choose the epoch on the very images they are scored on, which is optimistic, as this
project's --select-on fold is (docs/train.md). Here the epoch is chosen by val_iou, per image (the reference's is per
batch of 16); each row also gives the final epoch, what --select-on final scores. PATIENCE (default 0: none) stops
the scan as the reference's --early_stopping N would: the best epoch is then the best before the first run of
PATIENCE epochs without a gain.
"""
import sys
from pathlib import Path

import pandas as pd


def best_epoch(history: pd.DataFrame, patience: int = 0) -> pd.Series:
    """The row of best val_iou (the first on a tie, as the reference's strict '>'), scanning until `patience` epochs
    pass without a gain (0: every epoch)."""
    best, since = None, 0
    for _, row in history.iterrows():
        if best is None or row["val_iou"] > best["val_iou"]:
            best, since = row, 0
        else:
            since += 1
            if patience and since >= patience:
                break
    return best


def main(dataset: str, runs_dir: str = "runs", patience: str = "0"):
    histories = sorted((Path(runs_dir) / dataset).glob("*/fold*/history.csv"))
    if not histories:
        sys.exit(f"no {Path(runs_dir) / dataset}/<run>/fold<k>/history.csv: train the runs first (study.py)")
    stop = f", stopped after {patience} epochs without a gain" if int(patience) else ""
    print(f"| run | fold | epochs | final epoch: val IoU / Dice (--select-on final) | best epoch{stop} (the "
          f"reference's rule, OPTIMISTIC: chosen on the scored fold) | its val IoU / Dice |\n|---|---|---|---|---|---|")
    for path in histories:
        history = pd.read_csv(path)
        if "val_iou" not in history:
            sys.exit(f"{path}: no val_iou column; train.py writes one after every epoch")
        final, best = history.iloc[-1], best_epoch(history, int(patience))
        print(f"| {path.parent.parent.name} | {path.parent.name.removeprefix('fold')} | {len(history)} "
              f"| {final['val_iou']:.4f} / {final['val_dice']:.4f} | {int(best['epoch'])} "
              f"| {best['val_iou']:.4f} / {best['val_dice']:.4f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
