"""The scripts of docs/results/ that score runs the UNet++ reference's way."""
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "docs" / "results"))
import best_epoch  # noqa: E402
import reference_iou  # noqa: E402


def test_best_epoch_is_the_first_of_best_val_iou_and_early_stopping_ends_the_scan(tmp_path, capsys):
    history = pd.DataFrame({"epoch": range(1, 8), "val_iou": [0.5, 0.7, 0.6, 0.7, 0.65, 0.6, 0.9],
                            "val_dice": [0.6, 0.8, 0.7, 0.8, 0.75, 0.7, 0.95]})
    assert best_epoch.best_epoch(history)["epoch"] == 7
    assert best_epoch.best_epoch(history, patience=3)["epoch"] == 2  # epochs 3, 4, 5 bring no gain: stopped
    run = tmp_path / "runs" / "set" / "unet-x" / "fold0"
    run.mkdir(parents=True)
    history.to_csv(run / "history.csv", index=False)
    best_epoch.main("set", str(tmp_path / "runs"), "3")
    assert "| unet-x | 0 | 7 | 0.9000 / 0.9500 | 2 | 0.7000 / 0.8000 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no .*nothing/<run>/fold<k>/history.csv: train the runs first"):
        best_epoch.main("nothing", str(tmp_path / "runs"))


def test_reference_iou_is_one_iou_per_batch_of_16_weighted_by_the_batch_size():
    truth = np.zeros((20, 2, 2), bool)
    truth[:, 0, 0] = True
    pred = truth.copy()
    pred[16:, 1, 1] = True  # the last batch, of 4 images: IoU 1/2 each
    assert reference_iou.batch_iou(pred, truth) == pytest.approx((16 * 1 + 4 * 0.5) / 20, rel=1e-6)
