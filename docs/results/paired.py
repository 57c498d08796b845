"""Two sets of OOF predictions of the same images compared image by image, as ensemble.py compares Unet++ with Unet:
for questions the leaderboard does not ask, such as grey against RGB input (two prepared copies of one dataset).

  python docs/results/paired.py preds/dsb96/unet-mobilenet_v2/tta-flip preds/dsb96rgb/unet-mobilenet_v2/tta-flip

Each folder's oof_scores.csv (infer.py: per image, threshold 0.5, no post-processing); the difference is second
minus first, with a bootstrap 95% interval and a Wilcoxon signed-rank p over the images both scored.
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.metrics import per_image  # noqa: E402
from src.stats import paired_comparison  # noqa: E402


def main(first: str, second: str):
    a, b = (per_image(pd.read_csv(Path(p) / "oof_scores.csv", dtype={"id": str})).set_index("id") for p in (first, second))
    common = a.index.intersection(b.index)
    for metric in ("dice", "iou"):
        c = paired_comparison(a.loc[common, metric].to_numpy(), b.loc[common, metric].to_numpy())
        print(f"{metric}: {a.loc[common, metric].mean():.4f} -> {b.loc[common, metric].mean():.4f} over "
              f"{c['units']} images: {c['mean_difference']:+.4f}, 95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], "
              f"Wilcoxon p = {c['wilcoxon_p']:.2g}")


if __name__ == "__main__":
    main(*sys.argv[1:])
