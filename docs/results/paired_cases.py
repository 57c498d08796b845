"""OOF predictions of a volume dataset compared case by case in 3D, as nnU-Net scores cases: each folder's slices
stacked back into their cases (raw: threshold or argmax, no post-processing), Dice per case (the mean over labels)
and per label, HD95 in mm; every later folder against the first, over the cases all of them predicted, with a
bootstrap 95% interval over cases and a Wilcoxon signed-rank p. For questions one leaderboard does not ask, such as
2D slices against --context 3 (two runs dirs of one dataset).

  python docs/results/paired_cases.py hippo preds/hippo/unet-resnet34/tta-flip preds-c3/hippo/unet-resnet34/tta-flip
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.canonical import load_index, load_meta  # noqa: E402
from src.oof_scores import volume_table  # noqa: E402
from src.runs import prediction_files  # noqa: E402
from src.stats import paired_comparison  # noqa: E402


def main(dataset: str, *folders: str):
    dataset_dir = Path("data") / dataset
    meta, index = load_meta(dataset_dir), load_index(dataset_dir)
    scored = set.intersection(*(set(prediction_files(Path(f) / "oof")) for f in folders))
    tables = [volume_table(Path(f) / "oof", dataset_dir, meta, index, scored) for f in folders]
    per_case = [t.groupby("case")["dice"].mean() for t in tables]
    for folder, table, dice in zip(folders, tables, per_case):
        labels = ", ".join(f"{name} {rows['dice'].mean():.4f} (HD95 {rows['hd95_mm'].mean():.2f} mm)"
                           for name, rows in table.groupby("class", sort=False))
        print(f"{folder}: {len(dice)} cases, Dice {dice.mean():.4f} per case; {labels}")
    for folder, dice in zip(folders[1:], per_case[1:]):
        c = paired_comparison(per_case[0].to_numpy(), dice.loc[per_case[0].index].to_numpy())
        print(f"{folder} - {folders[0]}: {c['mean_difference']:+.4f} Dice per case, 95% CI [{c['ci95'][0]:+.4f}, "
              f"{c['ci95'][1]:+.4f}] over {c['units']} cases, Wilcoxon p = {c['wilcoxon_p']:.2g}")


if __name__ == "__main__":
    main(*sys.argv[1:])
