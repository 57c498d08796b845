"""IoU scored the way the UNet++ reference implementation (4uiiurz1/pytorch-nested-unet, val.py / metrics.py) scores
the 96 px Data Science Bowl set, on this project's OOF predictions (the pipeline itself reports per-image scores).

  python docs/results/reference_iou.py dsb96 flip                    # every run's selected weights, every level
  python docs/results/reference_iou.py dsb96 flip last               # infer.py --checkpoint last: the final epoch's
  python docs/results/reference_iou.py dsb96 flip selected preds-inner unet-mobilenet_v2 unetpp-mobilenet_v2

The reference: sigmoid > 0.5 and mask > 0.5, one IoU over all the pixels of each batch of 16 validation images
((intersection + 1e-5) / (union + 1e-5)), averaged over batches weighted by their size, on one 20% hold-out. Here each
fold the predictions hold is a hold-out, taken in the fold file's order (folds/dsb96ref.csv, from src.split
--holdout, lists fold 0 in the reference's own order, so its batches are the reference's); the figure is the mean
(and std) over those folds: all 5 of a 5-fold study, fold 0 alone of a one-fold study (no std). The
"mean" model averages the runs' probabilities (their L4 sets), at the same 0.5 threshold, without the ensemble's
tuned settings. Prediction sets are found through the run ledger (src.runs.level_sets), so each level of a unetpp_ds
run is its own row.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.folds import load_folds  # noqa: E402
from src.portable.images import read_image  # noqa: E402
from src.runs import load_pred  # noqa: E402
from src.runs import level_sets  # noqa: E402

BATCH, SMOOTH = 16, 1e-5


def batch_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """The reference's iou_score over a stack of images, then its AverageMeter over batches of BATCH."""
    ious = [((p & t).sum() + SMOOTH) / ((p | t).sum() + SMOOTH) for p, t in
            ((pred[i:i + BATCH], truth[i:i + BATCH]) for i in range(0, len(pred), BATCH))]
    sizes = [len(pred[i:i + BATCH]) for i in range(0, len(pred), BATCH)]
    return float(np.average(ious, weights=sizes))


def main(dataset: str, tta: str, checkpoint: str = "selected", preds_dir: str = "preds", *runs):
    found = {run: modes[tta] for run, modes in level_sets(preds_dir, dataset, checkpoint).items() if tta in modes}
    runs = runs or sorted(found)
    if missing := [run for run in runs if run not in found]:
        sys.exit(f"no {checkpoint} predictions with TTA {tta} in {preds_dir}/{dataset} for {', '.join(missing)}: "
                 f"run `python infer.py --dataset {dataset} --tta {tta} --checkpoint {checkpoint}` first")
    sets = {run + ("" if level is None else f" {level}"): predictions
            for run in runs for level, predictions in found[run].items()}
    models = {name: [name] for name in sets} | ({"mean of " + " and ".join(runs): list(runs)} if len(runs) > 1 else {})
    folds = load_folds("folds", dataset)
    predicted = sorted(set.intersection(*(set(predictions.weights("oof")) for predictions in sets.values())))
    if not predicted:
        sys.exit(f"the {checkpoint} predictions of {', '.join(runs)} share no fold: run infer.py on the same folds")
    table = {name: {"reference": [], "pooled": []} for name in models}
    for fold in predicted:
        ids = list(folds.loc[folds["fold"] == fold, "id"])
        truth = np.stack([read_image(Path("data") / dataset / "masks" / f"{i}.png") > 0 for i in ids])
        prob = {name: np.stack([load_pred(predictions.oof(i))[0][0] for i in ids]) for name, predictions in sets.items()}
        for name, members in models.items():
            pred = np.mean([prob[m].astype(np.float32) / 255 for m in members], axis=0) > 0.5
            if pred.shape != truth.shape:
                sys.exit(f"{name}: predictions are {pred.shape[1:]}, masks {truth.shape[1:]}: this script scores "
                         f"at the model's size, which must be the images' own (96 px here)")
            scores = table[name]
            scores["reference"].append(batch_iou(pred, truth))
            scores["pooled"].append((pred & truth).sum() / (pred | truth).sum())
    spread = (lambda v: f" +- {np.std(v, ddof=1):.4f}") if len(predicted) > 1 else (lambda v: "")
    print(f"| model ({tta} TTA, {checkpoint} weights, 0.5 threshold; fold {', '.join(map(str, predicted))} of "
          f"{folds['fold'].nunique()}) | IoU per batch of {BATCH} (the reference's) | IoU pooled over each fold |\n"
          f"|---|---|---|")
    for name, scores in table.items():
        print(f"| {name} | " + " | ".join(f"{np.mean(v):.4f}{spread(v)}" for v in scores.values()) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
