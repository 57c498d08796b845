"""Figures for docs/results.md that the pipeline no longer prints: the same OOF predictions scored by the former
rules beside the current ones.

  python docs/results/before_after.py cxr flip

- HD95: the former definition (95th percentile of both directions' boundary distances pooled, MedPy's) against
  the current one (the larger of the two directed 95th percentiles, MONAI's), on each run's OOF predictions.
- Unet++ vs Unet: the former image-level interval (films resampled as if independent) against the patient-level one.
"""
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.contrib.concurrent import thread_map

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.portable import postprocess  # noqa: E402
from src.folds import load_folds  # noqa: E402
from src.portable.images import HOST_THREADS, read_image  # noqa: E402
from src.metrics import _CROSS, hd95, per_image  # noqa: E402
from src.portable.maps import resize_prob  # noqa: E402
from src.runs import load_pred  # noqa: E402
from src.stats import paired_comparison  # noqa: E402


def pooled_hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """The former definition, kept here only to show what it missed."""
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float(np.hypot(*pred.shape))
    pred, target = pred.astype(np.uint8), target.astype(np.uint8)
    pred_edge, target_edge = pred - cv2.erode(pred, _CROSS), target - cv2.erode(target, _CROSS)
    to_target = cv2.distanceTransform(1 - target_edge, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[pred_edge > 0]
    to_pred = cv2.distanceTransform(1 - pred_edge, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[target_edge > 0]
    return float(np.percentile(np.concatenate([to_target, to_pred]), 95))


def main(dataset: str, tta: str):
    masks, preds = Path("data") / dataset / "masks", Path("preds") / dataset
    folds = load_folds("folds", dataset)
    runs = sorted(p.parent.parent.name for p in preds.glob(f"*/tta-{tta}/oof_scores.csv"))
    for run in runs:
        oof = preds / run / f"tta-{tta}" / "oof"

        def both(image_id):
            truth = read_image(masks / f"{image_id}.png") > 0
            pred = postprocess.apply(resize_prob(*load_pred(oof / f"{image_id}.npz")), postprocess.PLAIN["binary"]) > 0
            return pooled_hd95(pred, truth), hd95(pred, truth), 100 / np.hypot(*truth.shape)

        values = np.array(thread_map(both, list(folds["id"]), max_workers=HOST_THREADS, desc=f"HD95 {run}"))
        print(f"{run} (tta {tta}), mean over {len(values)} images: HD95 pooled {values[:, 0].mean():.1f} px "
              f"({(values[:, 0] * values[:, 2]).mean():.2f}% of the diagonal), max of directed "
              f"{values[:, 1].mean():.1f} px ({(values[:, 1] * values[:, 2]).mean():.2f}%)")
    for encoder in sorted({r.split("-", 1)[1] for r in runs}):
        a, b = (per_image(pd.read_csv(preds / f"{arch}-{encoder}" / f"tta-{tta}" / "oof_scores.csv", dtype={"id": str}))
                .set_index("id")["dice"] for arch in ("unet", "unetpp"))
        common = a.index.intersection(b.index)
        groups = folds.set_index("id").loc[common, "group"].to_numpy()
        for label, g in (("images", None), ("patients", groups)):
            c = paired_comparison(a[common].to_numpy(), b[common].to_numpy(), groups=g)
            print(f"Unet++ - Unet ({encoder}, tta {tta}) over {c['units']} {label}: {c['mean_difference']:+.4f}, "
                  f"95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], Wilcoxon p = {c['wilcoxon_p']:.2g}")


if __name__ == "__main__":
    main(*sys.argv[1:])
