"""The leaderboard's figure picks the images worth a look, and draws predictions as contours."""
import numpy as np
import pandas as pd

from src import report
from src.metrics import dice_by_group


def test_examples_are_where_the_two_models_disagree_most_then_the_worst_for_both():
    ids = list("abcdef")
    unet = pd.Series([0.90, 0.95, 0.50, 0.90, 0.20, 0.92], index=ids)
    unetpp = pd.Series([0.91, 0.60, 0.80, 0.90, 0.25, 0.93], index=ids)
    assert report.pick_examples({"unet": unet, "unetpp": unetpp}, 3) == ["b", "c", "e"]
    assert report.pick_examples({"unet": unet}, 2) == ["e", "c"]


def test_comparison_grid_draws_every_model_and_the_disagreement(tmp_path):
    image = np.tile(np.arange(300, dtype=np.uint8), (200, 1))
    truth = np.zeros((200, 300), np.uint8)
    truth[50:150, 60:240] = 1
    shifted = np.roll(truth, 20, axis=1)
    report.comparison_grid(tmp_path / "c.png", [("x", image, truth, {"unet": truth, "unetpp": shifted},
                                                 {"unet": 1.0, "unetpp": 0.9})], ["background", "lung"])
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_dice_by_group_averages_each_subgroup():
    table = dice_by_group({"m": pd.Series([1.0, 0.5, 0.0], index=["a", "b", "c"])},
                          pd.Series({"a": "PA", "b": "PA", "c": ""}))
    assert table.loc["PA", "m"] == 0.75 and table.loc["PA", "images"] == 2 and table.loc["(none)", "m"] == 0.0
