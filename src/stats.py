"""Is model B better than model A on the same images? Wilcoxon signed-rank plus a bootstrap interval, per patient;
and how sure is one model's mean Dice (the same bootstrap).

Films of one patient are not independent evidence: given groups (one patient label per image), both the test and the
interval count patients, not images, so that ten films of one patient do not narrow the interval tenfold.
"""
import numpy as np
import pandas as pd
from scipy import stats

from src.folds import group_labels

_DRAWS_PER_CHUNK = 2 ** 21  # bootstrap indices drawn at once (16 MB): memory stays flat for any number of images


def paired_comparison(a: np.ndarray, b: np.ndarray, groups=None, seed: int = 0, resamples: int = 10000,
                      alpha: float = 0.05, group_unit: str = "patient") -> dict:
    """a, b: per-image scores in the same image order; groups: the patient of each image, or None (each image its own
    unit; so is an image with an empty label, as in the split: src.folds.group_labels). Verdict says whether b beats a by more than chance.

    With groups, the Wilcoxon test takes each patient's mean difference and the bootstrap draws patients with
    replacement (a cluster bootstrap), its statistic the mean difference over the images of the drawn patients.
    Returns images, mean_difference, ci95, wilcoxon_p, verdict, unit (group_unit, "case" for slices of volumes, or
    "image") and units (their number).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = b - a
    unit, codes = _units(len(diff), groups, group_unit)
    sums, counts = np.bincount(codes, diff, minlength=codes.max(initial=-1) + 1), np.bincount(codes)
    mean = float(diff.mean()) if len(diff) else 0.0
    if len(counts) < 2 or not np.any(diff):
        p_value, low, high = 1.0, mean, mean
    else:
        unit_means = sums / counts
        p_value = float(stats.wilcoxon(unit_means).pvalue) if np.any(unit_means) else 1.0
        low, high = _bootstrap_interval(sums, counts, seed, resamples, alpha)
    if p_value < alpha and low > 0:
        verdict = "better"
    elif p_value < alpha and high < 0:
        verdict = "worse"
    else:
        verdict = "no significant difference"
    return {"images": int(len(diff)), "mean_difference": mean, "ci95": [low, high], "wilcoxon_p": p_value,
            "verdict": verdict, "unit": unit, "units": int(len(counts))}


def mean_interval(values: np.ndarray, groups=None, seed: int = 0, resamples: int = 10000,
                  alpha: float = 0.05, group_unit: str = "patient") -> dict:
    """The mean of per-image scores and its bootstrap 95% interval, drawing patients where groups are given (the
    cluster bootstrap of paired_comparison). Returns mean, ci95, unit ("patient" or "image") and units."""
    values = np.asarray(values, float)
    unit, codes = _units(len(values), groups, group_unit)
    sums, counts = np.bincount(codes, values), np.bincount(codes)
    return {"mean": float(values.mean()), "ci95": list(_bootstrap_interval(sums, counts, seed, resamples, alpha)),
            "unit": unit, "units": int(len(counts))}


def pooled_dice_interval(tp, fp, fn, groups=None, seed: int = 0, resamples: int = 10000, alpha: float = 0.05,
                         group_unit: str = "patient") -> dict:
    """A class's Dice with its pixels pooled over images, and its bootstrap 95% interval (images, or patients where
    groups are given, drawn with replacement; each draw's pooled 2TP / (2TP + FP + FN))."""
    tp, fp, fn = (np.asarray(a, float) for a in (tp, fp, fn))
    unit, codes = _units(len(tp), groups, group_unit)
    sums, counts = np.bincount(codes, 2 * tp), np.bincount(codes, 2 * tp + fp + fn)
    if not counts.sum():  # the class nowhere, in truth or prediction: Dice 1, as an empty image scores
        return {"dice": 1.0, "ci95": [1.0, 1.0], "unit": unit, "units": int(len(counts))}
    with np.errstate(invalid="ignore", divide="ignore"):  # a draw without the class: no pooled Dice, left out
        low, high = _bootstrap_interval(sums, counts, seed, resamples, alpha)
    return {"dice": float(sums.sum() / counts.sum()), "ci95": [low, high], "unit": unit, "units": int(len(counts))}


def _units(images: int, groups, group_unit: str = "patient") -> tuple:
    """("image", each image its own unit) or (group_unit, each image's group code) for a bootstrap's draws."""
    if groups is None:
        return "image", np.arange(images)
    if len(groups) != images:
        raise ValueError(f"groups has {len(groups)} labels for {images} images: give one patient per image")
    return group_unit, pd.factorize(group_labels(groups, [f"image {i}" for i in range(images)]))[0]


def _bootstrap_interval(sums: np.ndarray, counts: np.ndarray, seed: int, resamples: int, alpha: float) -> tuple:
    """Percentile interval of sum(drawn sums) / sum(drawn counts), units drawn with replacement, in chunks."""
    rng = np.random.default_rng(seed)
    n = len(sums)
    chunk = max(1, _DRAWS_PER_CHUNK // n)
    statistics = np.empty(resamples)
    for start in range(0, resamples, chunk):
        drawn = rng.integers(0, n, (min(chunk, resamples - start), n), dtype=np.int32)
        statistics[start:start + len(drawn)] = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    low, high = np.nanquantile(statistics, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def holm(p_values) -> list:
    """Holm-adjusted p-values in the input order: step-down, monotone, at most 1. Written out because scipy has
    none (statsmodels' multipletests would be a whole dependency for five lines)."""
    p = np.asarray(p_values, float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty_like(p)
    out[order] = adjusted
    return out.tolist()
