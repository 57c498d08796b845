"""ensemble.py and its pieces: averaging predictions, the paired test, cross-validated tuning, outputs."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest

import ensemble
import infer
from conftest import infer_args, paths
from src import postprocess, predict
from src.images import read_image
from src.metrics import per_image
from src.predict import load_pred, mean_at, read_mean, resize_prob, save_pred
from src.rle import rle_decode
from src.stats import paired_comparison


def test_paired_comparison_verdicts():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.7, 0.9, 60)
    assert paired_comparison(a, a)["verdict"] == "no significant difference"
    better = paired_comparison(a, a + rng.uniform(0.02, 0.06, 60))
    assert better["verdict"] == "better" and better["ci95"][0] > 0 and better["wilcoxon_p"] < 0.01
    assert paired_comparison(a, a - 0.05)["verdict"] == "worse"
    noisy = paired_comparison(a, a + rng.normal(0, 0.05, 60))
    assert noisy["verdict"] == "no significant difference"


def test_averaging_identical_predictions_changes_nothing(tmp_path):
    prob = np.random.default_rng(0).integers(0, 256, (2, 9, 7), dtype=np.uint8)
    save_pred(tmp_path / "a.npz", prob, (9, 7))
    save_pred(tmp_path / "b.npz", prob, (9, 7))
    np.testing.assert_allclose(mean_at(*read_mean([tmp_path / "a.npz", tmp_path / "b.npz"], [1.0, 1.0])), prob / 255,
                               rtol=1e-6)


def smooth_prob(side: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A uint8 C x side x side probability map: blurred blobs, as a model at that size would predict them."""
    blobs = np.random.default_rng(seed).random((channels, 8, 8)).astype(np.float32)
    return np.stack([np.round(255 * cv2.resize(b, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 1))
                     for b in blobs]).astype(np.uint8)


def test_averaging_at_the_models_size_then_resizing_equals_resizing_each_then_averaging(tmp_path):
    size, weights = (301, 187), [1.0, 2.0, 0.5]
    paths = [tmp_path / f"{k}.npz" for k in range(3)]
    for k, path in enumerate(paths):
        save_pred(path, smooth_prob(48, seed=k), size)
    each_first = sum(w * resize_prob(load_pred(p)[0], size) for p, w in zip(paths, weights)) / sum(weights)
    maps, original = read_mean(paths, weights)
    assert original == size and len(maps) == 1 and maps[0][0].shape == (2, 48, 48)  # kept at the models' size
    assert np.abs(mean_at(maps, size) - each_first).max() <= 1 / 255


def test_runs_trained_at_different_sizes_ensemble_at_the_original_size(tmp_path):
    size = (150, 110)
    save_pred(tmp_path / "small.npz", smooth_prob(32), size)  # one image, predicted by a 32 px and a 64 px run
    save_pred(tmp_path / "large.npz", smooth_prob(64), size)
    maps, original = read_mean([tmp_path / "small.npz", tmp_path / "large.npz"], [1.0, 3.0])
    probs = mean_at(maps, original)
    expected = (resize_prob(smooth_prob(32), size) + 3 * resize_prob(smooth_prob(64), size)) / 4
    assert probs.shape == (2, 150, 110) and np.abs(probs - expected).max() <= 1 / 255


@pytest.fixture(scope="module")
def predicted(trained_dir):
    infer.main([*infer_args(trained_dir), "--tta", "none"])
    infer.main([*infer_args(trained_dir), "--tta", "d4"])
    return trained_dir


def ensemble_args(workdir, out):
    return ["--dataset", "demo", *paths(workdir), "--preds-dir", str(workdir / "preds"), "--out-dir", str(out)]


def test_ensemble_writes_masks_submission_scores_and_leaderboard(predicted, tmp_path):
    ensemble.main(ensemble_args(predicted, tmp_path))
    out = tmp_path / "demo"
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["runs"]) == {"unet-tu-resnet10t", "unetpp-tu-resnet10t"}
    for name, run in scores["runs"].items():  # each run's TTA is the one with the higher OOF Dice
        oof = {m: per_image(pd.read_csv(predicted / "preds" / "demo" / name / f"tta-{m}" / "oof_scores.csv"))["dice"]
               .mean() for m in ("none", "d4")}
        assert run["tta"] == max(oof, key=oof.get) and run["dice"] == pytest.approx(max(oof.values()))
        assert (name in scores["tta_gain"]) == (run["tta"] != "none")
    ensemble.main([*ensemble_args(predicted, tmp_path / "d4"), "--tta", "d4"])
    forced = json.loads((tmp_path / "d4" / "demo" / "scores.json").read_text())
    assert {r["tta"] for r in forced["runs"].values()} == {"d4"} and set(forced["tta_gain"]) == set(forced["runs"])
    assert scores["comparisons"][0]["verdict"] in ("better", "no significant difference", "worse")
    assert len(scores["runs"]["unet-tu-resnet10t"]["folds"]) == 3
    index = pd.read_csv(predicted / "data" / "demo" / "index.csv").set_index("id")
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert sorted(submission["id"]) == sorted(index.index[index["split"] == "test"])
    for row in submission.itertuples():
        mask = read_image(out / "masks" / f"{row.id}.png")
        assert mask.shape == tuple(index.loc[row.id, ["height", "width"]])
        np.testing.assert_array_equal(rle_decode(row.rle, mask.shape), mask // 255)
    board = (out / "leaderboard.md").read_text()
    assert "Unet++ vs Unet" in board and "ensemble" in board
    for name, run in scores["runs"].items():  # training cost beside the scores, from the runs' history.csv
        history = pd.concat(pd.read_csv(h) for h in (predicted / "runs" / "demo" / name).glob("fold*/history.csv"))
        assert run["training"]["minutes"] == pytest.approx(history["seconds"].sum() / 60)
        assert f"{run['training']['minutes']:.1f} min, 2 epochs/fold" in board
    assert (out / "comparison.png").stat().st_size > 0 and (out / "scores.png").stat().st_size > 0


def test_scores_by_any_index_column(predicted, tmp_path):
    ensemble.main([*ensemble_args(predicted, tmp_path), "--by", "group"])
    scores = json.loads((tmp_path / "demo" / "scores.json").read_text())
    by = pd.DataFrame(scores["by"]["table"]).set_index("group")
    oof = per_image(pd.read_csv(tmp_path / "demo" / "oof_scores.csv", dtype={"id": str}))
    groups = pd.read_csv(predicted / "data" / "demo" / "index.csv", dtype=str).set_index("id")["group"]
    expected = oof.groupby(oof["id"].map(groups))["dice"].mean()
    assert scores["by"]["column"] == "group" and by["images"].sum() == len(oof)
    np.testing.assert_allclose(by.loc[expected.index, "ensemble"], expected)
    assert "Mean Dice per image by `group`" in (tmp_path / "demo" / "leaderboard.md").read_text()
    with pytest.raises(SystemExit, match="--by colour: no such column"):
        ensemble.main([*ensemble_args(predicted, tmp_path), "--by", "colour"])


def test_tuning_never_reads_test_predictions(predicted, tmp_path, monkeypatch):
    events = []
    real_load, real_choose = predict.load_pred, postprocess.choose
    monkeypatch.setattr(predict, "load_pred", lambda path: events.append(("read", str(path))) or real_load(path))
    monkeypatch.setattr(postprocess, "choose", lambda *a: events.append(("tuned", "")) or real_choose(*a))
    ensemble.main(ensemble_args(predicted, tmp_path / "a"))
    tuned_at = events.index(("tuned", ""))
    assert not any("/test/" in path for _, path in events[:tuned_at])
    assert any("/test/" in path for _, path in events[tuned_at:])
    # Test predictions turned upside down change the test masks, never the chosen settings.
    for path in (predicted / "preds").glob("demo/*/tta-*/test/*/*.npz"):
        prob, size = real_load(path)
        save_pred(path, 255 - prob, size)
    ensemble.main(ensemble_args(predicted, tmp_path / "b"))
    first, second = (json.loads((tmp_path / d / "demo" / "scores.json").read_text()) for d in ("a", "b"))
    assert first["postprocess"] == second["postprocess"] and first["ensemble"] == second["ensemble"]


def test_multiclass_pipeline_scores_every_class(trained_dir, multiclass_dir, tmp_path):
    workdir = multiclass_dir  # trained_dir also trained the multiclass runs
    infer.main([*infer_args(workdir, "demo-multiclass"), "--tta", "flip"])
    ensemble.main(["--dataset", "demo-multiclass", *paths(workdir), "--preds-dir", str(workdir / "preds"),
                   "--out-dir", str(tmp_path)])
    scores = json.loads((tmp_path / "demo-multiclass" / "scores.json").read_text())
    assert set(scores["per_class"]) == {"neoplastic", "inflammatory", "connective", "dead", "epithelial"}
    assert len(scores["postprocess"]["min_areas"]) == 5
    submission = pd.read_csv(tmp_path / "demo-multiclass" / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["id", "class", "rle"] and len(submission) == 4 * 5
    assert scores["by"]["column"] == "tissue"  # the default where the dataset has tissues (PanNuke)
    assert {r["group"] for r in scores["by"]["table"]} <= {"breast", "colon", "lung"}
