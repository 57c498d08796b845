"""Is model B better than model A on the same images? Wilcoxon signed-rank plus a bootstrap interval."""
import numpy as np
from scipy import stats


def paired_comparison(a: np.ndarray, b: np.ndarray, groups=None, seed: int = 0, resamples: int = 10000,
                      alpha: float = 0.05) -> dict:
    """a, b: per-image scores in the same image order. Verdict says whether b beats a by more than chance."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = b - a
    if len(diff) < 2 or not np.any(diff):
        p_value, low, high = 1.0, float(diff.mean()) if len(diff) else 0.0, float(diff.mean()) if len(diff) else 0.0
    else:
        p_value = float(stats.wilcoxon(b, a).pvalue)
        rng = np.random.default_rng(seed)
        means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
        low, high = (float(q) for q in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    if p_value < alpha and low > 0:
        verdict = "better"
    elif p_value < alpha and high < 0:
        verdict = "worse"
    else:
        verdict = "no significant difference"
    return {"images": int(len(diff)), "mean_difference": float(diff.mean()) if len(diff) else 0.0,
            "ci95": [low, high], "wilcoxon_p": p_value, "verdict": verdict, "unit": "image", "units": int(len(diff))}


def holm(p_values) -> list:
    p = np.asarray(p_values, float)
    order = np.argsort(p)
    adjusted = np.minimum(1, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty(len(p))
    out[order] = adjusted
    return out.tolist()
