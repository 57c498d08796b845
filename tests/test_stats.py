"""Paired comparisons and a mean's interval per patient (Wilcoxon on patient means, cluster bootstrap), and Holm's
adjustment."""
import tracemalloc

import numpy as np
import pytest

from src.stats import holm, mean_interval, paired_comparison


def test_duplicated_films_count_once_per_patient():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.8, 0.95, 40)
    b = a + rng.normal(0.005, 0.02, 40)
    films = 4  # every patient's image appears four times
    patients = np.repeat(np.arange(40), films)
    unique = paired_comparison(a, b)
    grouped = paired_comparison(np.repeat(a, films), np.repeat(b, films), groups=patients)
    naive = paired_comparison(np.repeat(a, films), np.repeat(b, films))
    assert (unique["unit"], unique["units"]) == ("image", 40)
    assert (grouped["unit"], grouped["units"], grouped["images"]) == ("patient", 40, 160)
    assert grouped["wilcoxon_p"] == pytest.approx(unique["wilcoxon_p"], rel=1e-12)
    assert grouped["ci95"] == pytest.approx(unique["ci95"], rel=1e-9)  # the same patients drawn, the same means
    assert grouped["mean_difference"] == pytest.approx(unique["mean_difference"])
    width = lambda r: r["ci95"][1] - r["ci95"][0]  # noqa: E731
    assert width(naive) < 0.6 * width(grouped)  # counted per image, the copies fake a sqrt(4) = 2x narrower interval
    assert naive["wilcoxon_p"] < grouped["wilcoxon_p"] / 10


def test_the_best_models_interval_counts_patients_not_films():
    dice = np.random.default_rng(0).uniform(0.6, 0.95, 40)
    films = 4
    unique, grouped = mean_interval(dice), mean_interval(np.repeat(dice, films), groups=np.repeat(np.arange(40), films))
    naive = mean_interval(np.repeat(dice, films))
    assert (unique["unit"], unique["units"], grouped["unit"], grouped["units"]) == ("image", 40, "patient", 40)
    assert grouped["mean"] == pytest.approx(dice.mean()) and grouped["ci95"] == pytest.approx(unique["ci95"], rel=1e-9)
    low, high = grouped["ci95"]
    assert low < dice.mean() < high and naive["ci95"][1] - naive["ci95"][0] < 0.6 * (high - low)


def test_images_without_a_patient_label_are_their_own_unit():
    result = paired_comparison([0.5, 0.6, 0.7, 0.8], [0.6, 0.6, 0.9, 0.7], groups=["p1", "p1", "", None])
    assert (result["unit"], result["units"], result["images"]) == ("patient", 3, 4)
    with pytest.raises(ValueError, match="groups has 3 labels for 4 images"):
        paired_comparison([0.5, 0.6, 0.7, 0.8], [0.6, 0.6, 0.9, 0.7], groups=["p1", "p1", "p2"])


def test_holm_adjustment_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01; 2 x 0.03; max(0.06, 1 x 0.04)
    assert holm([0.02, 0.001, 0.04, 0.03]) == pytest.approx([0.06, 0.004, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_a_large_comparison_draws_its_bootstrap_in_chunks():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.7, 0.95, 200_000)
    b = a + rng.normal(0.002, 0.03, a.size)
    patients = rng.integers(0, 50_000, a.size)
    tracemalloc.start()
    result = paired_comparison(a, b, groups=patients, resamples=300)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100e6  # all 300 x 50,000 draws at once would take 120 MB (int64), then as much again gathered
    low, high = result["ci95"]
    assert low < result["mean_difference"] < high and high - low < 0.002 and result["verdict"] == "better"


def test_the_architecture_comparison_counts_an_unlabelled_image_apart_from_a_patient_of_its_name():
    """An image without a patient label is its own unit; its id may equal a real patient label (here 'b') without
    joining that patient (an old fold file's blanks, or one written before blank groups had their own names)."""
    import pandas as pd
    from src.ensembling.scores import compare_architectures
    ids = ["a", "b", "c", "d", "e", "f"]
    dice = {"unet-r18": {"none": pd.Series([0.5, 0.6, 0.7, 0.8, 0.6, 0.7], index=ids)},
            "unetpp-r18": {"none": pd.Series([0.6, 0.6, 0.9, 0.7, 0.8, 0.9], index=ids)}}
    groups = ["b", "", "b", "p2", "p3", "p3"]  # image b has no label
    [comparison] = compare_architectures(ids, dice, groups, "none")
    assert (comparison["unit"], comparison["units"]) == ("patient", 4)
