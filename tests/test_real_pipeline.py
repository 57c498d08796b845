"""The whole pipeline on a few real chest X-rays (skipped without ../shared/data/cxr-covid-lungs): about a minute."""
import json

import numpy as np
import pandas as pd
import pytest

import ensemble
import infer
import train
from conftest import SHARED_DATA, TINY, prepare

REAL = SHARED_DATA / "cxr-covid-lungs"


@pytest.mark.skipif(not REAL.exists(), reason="no real chest X-rays in ../shared/data")
def test_real_chest_x_rays_through_prepare_train_infer_ensemble(tmp_path):
    meta = pd.read_csv(REAL / "metadata.csv", dtype=str)
    chosen = meta.groupby("patient").head(1).sort_values("id").iloc[::8].head(28)  # mixed sizes, modes and views
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, row in enumerate(chosen.itertuples()):
        (tmp_path / row.image).symlink_to(REAL / row.image)
        if i >= 4:  # the first four become unlabelled test images
            (tmp_path / row.mask).symlink_to(REAL / row.mask)
    chosen.to_csv(tmp_path / "metadata.csv", index=False)
    prepare(tmp_path, "folder", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
            "--allow-unmasked", "--meta", str(tmp_path / "metadata.csv"), "--group-column", "patient", "--name", "cxr",
            "--size", "64", "--k", "2")
    where = ["--data-dir", str(tmp_path / "data"), "--folds-dir", str(tmp_path / "folds")]
    for arch in ("unet", "unetpp"):
        for fold in (0, 1):
            train.main([*TINY, *where, "--dataset", "cxr", "--runs-dir", str(tmp_path / "runs"), "--arch", arch,
                        "--fold", str(fold), "--epochs", "2"])
    infer.main(["--dataset", "cxr", "--runs-dir", str(tmp_path / "runs"), *where, "--preds-dir",
                str(tmp_path / "preds"), "--tta", "flip"])
    ensemble.main(["--dataset", "cxr", *where, "--preds-dir", str(tmp_path / "preds"), "--out-dir",
                   str(tmp_path / "ensemble"), "--by", "view", "--tracker", "none"])
    out = tmp_path / "ensemble" / "cxr"
    scores = json.loads((out / "scores.json").read_text())
    test_ids = sorted(chosen["id"].iloc[:4])
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == test_ids
    assert sorted(pd.read_csv(out / "submission.csv", dtype=str)["id"]) == test_ids
    for name in ("unet-tu-test_resnet", "unetpp-tu-test_resnet", "ensemble"):
        result = scores["runs"].get(name, scores["ensemble"])
        assert np.isfinite([result["dice"], result["iou"], result["hd95"]]).all()
        assert result["dice"] > 0.2  # an empty mask scores 0 on every one of these lungs
    assert {r["group"] for r in scores["by"]["table"]} <= {"PA", "AP", "AP Supine"}
    assert (out / "comparison.png").stat().st_size > 0
