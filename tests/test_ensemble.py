"""ensemble.py and its pieces: averaging predictions, the paired test, cross-validated tuning, outputs, and the
predictions it refuses (older weights, temporary files, another selection's folder, weights that are not positive)."""
import argparse
import json
import shlex
import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

import ensemble
import infer
from conftest import infer_args, paths
from src import runs as ledger
from src.ensembling import choices, inputs, report, scores as scoring
from src.portable import postprocess
from src.portable.images import read_image, write_png
from src.metrics import image_dice, per_image
from src.portable.maps import mean_at, mean_maps, resize_prob
from src.runs import file_sha256, load_pred, read_maps, save_pred
from src.portable.rle import rle_decode
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
    weighted, size = read_maps([tmp_path / "a.npz", tmp_path / "b.npz"], [1.0, 1.0])
    np.testing.assert_allclose(mean_at(mean_maps(weighted), size), prob / 255, rtol=1e-6)


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
    weighted, original = read_maps(paths, weights)
    maps = mean_maps(weighted)
    assert original == size and len(maps) == 1 and maps[0][0].shape == (2, 48, 48)  # kept at the models' size
    assert np.abs(mean_at(maps, size) - each_first).max() <= 1 / 255


def test_runs_trained_at_different_sizes_ensemble_at_the_original_size(tmp_path):
    size = (150, 110)
    save_pred(tmp_path / "small.npz", smooth_prob(32), size)  # one image, predicted by a 32 px and a 64 px run
    save_pred(tmp_path / "large.npz", smooth_prob(64), size)
    weighted, original = read_maps([tmp_path / "small.npz", tmp_path / "large.npz"], [1.0, 3.0])
    probs = mean_at(mean_maps(weighted), original)
    expected = (resize_prob(smooth_prob(32), size) + 3 * resize_prob(smooth_prob(64), size)) / 4
    assert probs.shape == (2, 150, 110) and np.abs(probs - expected).max() <= 1 / 255


@pytest.fixture(scope="module")
def predicted(trained_dir):
    infer.main([*infer_args(trained_dir), "--tta", "none"])
    infer.main([*infer_args(trained_dir), "--tta", "flip"])
    return trained_dir


def ensemble_args(workdir, out, figures=0):
    """comparison.png (a second of matplotlib a call) only where a test looks at its panels."""
    return ["--dataset", "demo", *paths(workdir), "--preds-dir", str(workdir / "preds"), "--out-dir", str(out),
            "--figures", str(figures)]


def oof_dice(workdir, name: str, mode: str) -> pd.Series:
    table = pd.read_csv(workdir / "preds" / "demo" / name / f"tta-{mode}" / "oof_scores.csv", dtype={"id": str})
    return per_image(table).set_index("id")["dice"]


def test_ensemble_writes_masks_submission_scores_and_leaderboard(predicted, tmp_path, monkeypatch, capsys):
    drawn, compared = [], []
    monkeypatch.setattr(report, "comparison_grid", lambda path, rows, classes: drawn.extend(rows))
    real_comparison = scoring.paired_comparison
    monkeypatch.setattr(scoring, "paired_comparison",
                        lambda a, b, groups, alpha, group_unit: compared.append(groups) or real_comparison(
                            a, b, groups=groups))
    index = pd.read_csv(predicted / "data" / "demo" / "index.csv").set_index("id")
    listed = [f"{i}.png" for i in sorted(index.index[index["split"] == "test"], reverse=True)] + ["ghost.png"]
    sample = tmp_path / "sample_submission.csv"  # another order, another spelling of the columns, an id unknown here
    sample.write_text("ImageId,EncodedPixels\n" + "".join(f"{i},1 1\n" for i in listed))
    ensemble.main(ensemble_args(predicted, tmp_path, figures=4) + ["--sample-submission", str(sample)])
    printed = capsys.readouterr().out.splitlines()
    out = tmp_path / "demo"
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["runs"]) == {"unet-tu-test_resnet", "unetpp-tu-test_resnet"}
    folds = pd.read_csv(predicted / "folds" / "demo.csv", dtype={"id": str, "group": str}).set_index("id")
    assert scores["images"] == {"scored": 36, "left_out": 0}
    for name, run in scores["runs"].items():
        dice = pd.DataFrame({m: oof_dice(predicted, name, m) for m in ("none", "flip")})
        fold = folds["fold"].reindex(dice.index)
        # Test masks take the TTA of higher OOF Dice on all images; each fold, the TTA of higher Dice on the others,
        # and the run's score takes each image at its fold's TTA.
        assert run["tta"] == dice.mean().idxmax()
        assert run["tta_by_fold"] == {str(f): dice[fold != f].mean().idxmax() for f in range(3)}
        per_fold = pd.Series([dice.loc[i, run["tta_by_fold"][str(fold[i])]] for i in dice.index])
        assert run["dice"] == pytest.approx(per_fold.mean()) and run["dice_image_std"] == pytest.approx(per_fold.std())
        gain = scores["tta_gain"][name]  # every mode predicted, each against none on the same images
        assert gain["images"] == 36 and gain["modes"]["flip"]["dice"] == pytest.approx(dice["flip"].mean())
        assert gain["modes"]["flip"]["gain"] == pytest.approx(dice["flip"].mean() - dice["none"].mean())
    assert len(scores["runs"]["unet-tu-test_resnet"]["folds"]) == 3
    ensemble_dice = per_image(pd.read_csv(out / "oof_scores.csv", dtype={"id": str}))
    assert scores["ensemble"]["dice"] == pytest.approx(ensemble_dice["dice"].mean()) and len(ensemble_dice) == 36
    assert set(scores["tuning_by_fold"]) == {"0", "1", "2"} and "dice_optimistic" in scores["ensemble"]
    # Unet++ vs Unet at the most augmented TTA both have, over the patients (the demo's folds are grouped).
    comparison = scores["comparisons"][0]
    assert comparison["tta"] == "flip" and comparison["verdict"] in ("better", "no significant difference", "worse")
    # Unet++ vs Unet, then the ensemble vs the best run: both over the patients.
    assert [list(g) for g in compared] == [list(folds.loc[ensemble_dice["id"], "group"])] * 2 and comparison[
        "p_holm"] >= comparison["wilcoxon_p"]
    best = scores["runs"][scores["best_single"]]["postprocessed"]
    interval = scores["best_interval"]
    assert interval["mean"] == pytest.approx(best["dice"]) and interval["unit"] == "patient"
    assert interval["ci95"][0] <= best["dice"] <= interval["ci95"][1]
    assert scores["ensemble_vs_best"]["mean_difference"] == pytest.approx(scores["ensemble_gain"])
    assert len(drawn) == 4  # --figures 4
    for image_id, _, truth, masks, dice in drawn:  # each panel labelled with the Dice of the mask it draws
        for name, mask in masks.items():
            expected = 1.0 if not (mask.any() or truth.any()) else 2 * (mask & (truth > 0)).sum() / (
                mask.sum() + (truth > 0).sum())
            assert dice[name] == pytest.approx(expected)
    # The sample submission's rows and columns exactly; its unknown id named and written empty.
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["ImageId", "EncodedPixels"] and list(submission["ImageId"]) == listed
    assert submission["EncodedPixels"].iloc[-1] == "" and f"ensemble: 1 of the {len(listed)} images " \
        "sample_submission.csv lists have no image here, their rows written empty: ghost" in printed
    for row in submission.iloc[:-1].itertuples():
        mask = read_image(out / "masks" / row.ImageId)
        assert mask.shape == tuple(index.loc[row.ImageId[:-4], ["height", "width"]])
        np.testing.assert_array_equal(rle_decode(row.EncodedPixels, mask.shape), mask // 255)
    board = (out / "leaderboard.md").read_text()
    assert "Unet++ vs Unet, both on the same images, on raw masks" in board
    # The answers first, and printed last: the best run and its interval, the ensemble, Unet++ vs Unet, the rules.
    answers = board.splitlines()[1:5]
    assert printed[-4:] == answers == report.headline(scores)
    assert answers[0].startswith(f"- Best model: {scores['best_single']}, Dice {best['dice']:.4f} per image")
    assert answers[2].startswith("- Unet++ vs Unet, tu-test_resnet: ") and "(TTA flip, " in answers[2]
    assert "(TTA flip, " in board and "Cross-validated" in board
    assert ("Optimistic (tuned and scored on the same images): the ensemble's post-processed Dice "
            f"{scores['ensemble']['dice_optimistic']:.4f}") in board
    for name, run in scores["runs"].items():  # training cost beside the scores, from the runs' history.csv
        history = pd.concat(pd.read_csv(h) for h in (predicted / "runs" / "demo" / name).glob("fold*/history.csv"))
        assert run["training"]["minutes"] == pytest.approx(history["seconds"].sum() / 60)
        assert f"{run['training']['minutes']:.1f} min, 2 epochs/fold" in board
    assert (out / "scores.png").stat().st_size > 0
    # The study's table: one encoder, both architectures, their size, training and prediction speed, the difference.
    row, = scores["by_encoder"]
    assert row["encoder"] == "tu-test_resnet" and row["unetpp-unet_difference"] == comparison["mean_difference"]
    assert 0 < row["unet_parameters_m"] < row["unetpp_parameters_m"]  # Unet++'s nested decoder
    assert row["unet_seconds_per_epoch"] > 0 and row["unetpp_images_per_s"] > 0
    assert "| tu-test_resnet | " in board and (out / "study.png").stat().st_size > 0


def test_fixed_tta_and_compare_tta(predicted, tmp_path):
    ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "flip", "--compare-tta", "none"])
    scores = json.loads((tmp_path / "demo" / "scores.json").read_text())
    for name, run in scores["runs"].items():
        assert run["tta"] == "flip" and set(run["tta_by_fold"].values()) == {"flip"}
        assert run["dice"] == pytest.approx(oof_dice(predicted, name, "flip").mean())
        assert set(scores["tta_gain"][name]["modes"]) == {"none", "flip"}  # still every mode predicted
    assert scores["comparisons"][0]["tta"] == "none"
    unet, unetpp = (oof_dice(predicted, f"{arch}-tu-test_resnet", "none") for arch in ("unet", "unetpp"))
    assert scores["comparisons"][0]["mean_difference"] == pytest.approx((unetpp - unet).mean())


def doctored_copy(predicted, tmp_path, flip_dice: dict, fold0_masks_inverted=False):
    """The demo's data, folds and predictions, with the unet run's OOF Dice set per fold (none 0.5, flip from flip_dice)
    and one image's none scores removed; optionally fold 0's masks inverted and its OOF scores scrambled."""
    workdir = tmp_path / "work"
    for part in ("data", "folds", "preds"):
        shutil.copytree(predicted / part, workdir / part)
    folds = pd.read_csv(workdir / "folds" / "demo.csv", dtype={"id": str}).set_index("id")["fold"]
    for mode in ("none", "flip"):
        path = workdir / "preds" / "demo" / "unet-tu-test_resnet" / f"tta-{mode}" / "oof_scores.csv"
        table = pd.read_csv(path, dtype={"id": str})
        table["dice"] = 0.5 if mode == "none" else table["id"].map(folds).map(flip_dice)
        if fold0_masks_inverted:
            in_fold0 = table["id"].map(folds) == 0
            table.loc[in_fold0, "dice"] = np.random.default_rng(1).random(in_fold0.sum())
        (table.iloc[1:] if mode == "none" else table).to_csv(path, index=False)
    if fold0_masks_inverted:
        for image_id in folds.index[folds == 0]:
            mask_path = workdir / "data" / "demo" / "masks" / f"{image_id}.png"
            write_png(mask_path, 1 - read_image(mask_path))
    return workdir


def test_each_fold_is_tuned_on_the_other_folds_only(predicted, tmp_path):
    flip_dice = {0: 1.0, 1: 0.1, 2: 0.3}  # unet with flip: great on fold 0, poor elsewhere; 0.5 everywhere without
    workdir = doctored_copy(predicted, tmp_path / "a", flip_dice)
    ensemble.main(ensemble_args(workdir, tmp_path / "a"))
    scores = json.loads((tmp_path / "a" / "demo" / "scores.json").read_text())
    unet = scores["runs"]["unet-tu-test_resnet"]
    # Fold 0 never sees its own flip scores: folds 1 and 2 favour none; folds 1 and 2 see fold 0's and take flip.
    assert unet["tta_by_fold"] == {"0": "none", "1": "flip", "2": "flip"} and unet["tta"] == "none"
    assert {f: t["tta"]["unet-tu-test_resnet"] for f, t in scores["tuning_by_fold"].items()} == unet["tta_by_fold"]
    # One image lacks a prediction from one run: every model is scored on the other 35, and the leaderboard says so.
    assert scores["images"] == {"scored": 35, "left_out": 1}
    assert scores["tta_gain"]["unetpp-tu-test_resnet"]["images"] == 35
    assert len(pd.read_csv(tmp_path / "a" / "demo" / "oof_scores.csv")) == 35
    assert "(1 more lack an OOF prediction" in (tmp_path / "a" / "demo" / "leaderboard.md").read_text()
    # Fold 0's truth changed (masks inverted, its OOF scores scrambled): its scores change, never its choices.
    workdir = doctored_copy(predicted, tmp_path / "b", flip_dice, fold0_masks_inverted=True)
    ensemble.main(ensemble_args(workdir, tmp_path / "b"))
    changed = json.loads((tmp_path / "b" / "demo" / "scores.json").read_text())
    assert changed["tuning_by_fold"]["0"] == scores["tuning_by_fold"]["0"]
    assert changed["ensemble"]["folds"]["0"] < scores["ensemble"]["folds"]["0"] - 0.3


def test_scores_by_any_index_column(predicted, tmp_path):
    ensemble.main([*ensemble_args(predicted, tmp_path), "--by", "group"])
    scores = json.loads((tmp_path / "demo" / "scores.json").read_text())
    by = pd.DataFrame(scores["by"]["table"]).set_index("group")
    oof = per_image(pd.read_csv(tmp_path / "demo" / "oof_scores.csv", dtype={"id": str}))
    groups = pd.read_csv(predicted / "data" / "demo" / "index.csv", dtype=str).set_index("id")["group"]
    expected = oof.groupby(oof["id"].map(groups))["dice"].mean()
    assert scores["by"]["column"] == "group" and by["images"].sum() == len(oof)
    np.testing.assert_allclose(by.loc[expected.index, "ensemble"], expected)
    assert "Mean post-processed Dice per image by `group`" in (tmp_path / "demo" / "leaderboard.md").read_text()
    with pytest.raises(SystemExit, match="--by colour: no such column"):
        ensemble.main([*ensemble_args(predicted, tmp_path), "--by", "colour"])


def test_tuning_never_reads_test_predictions(predicted, tmp_path, monkeypatch):
    events = []
    real_load, real_choose = ledger.load_pred, postprocess.choose
    monkeypatch.setattr(ledger, "load_pred", lambda path: events.append(("read", str(path))) or real_load(path))
    monkeypatch.setattr(postprocess, "choose", lambda *a: events.append(("tuned", "")) or real_choose(*a))
    ensemble.main(ensemble_args(predicted, tmp_path / "a"))
    tuned_at = events.index(("tuned", ""))
    assert not any("/test/" in path for _, path in events[:tuned_at])
    assert any("/test/" in path for _, path in events[tuned_at:])
    # Test predictions turned upside down (in a copy: the fixture is shared) change the test masks, never the settings.
    copy = tmp_path / "copy"
    shutil.copytree(predicted / "preds", copy / "preds")
    for path in (copy / "preds").glob("demo/*/tta-*/test/*/*.npz"):
        prob, size = real_load(path)
        save_pred(path, 255 - prob, size)
    ensemble.main([*ensemble_args(predicted, tmp_path / "b"), "--preds-dir", str(copy / "preds")])
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


def test_ensemble_of_a_prediction_set_writes_only_that_sets_masks(predicted, tmp_path, capsys):
    (tmp_path / "ward").mkdir()
    write_png(tmp_path / "ward" / "scan_001.png", np.full((70, 45), 120, np.uint8))
    infer.main([*infer_args(predicted), "--tta", "none", "--images", str(tmp_path / "ward")])
    said = capsys.readouterr().out  # where the predictions went, and the command that makes them masks
    for run in ("unet-tu-test_resnet", "unetpp-tu-test_resnet"):
        assert str(predicted / "preds" / "demo" / run / "tta-none" / "sets" / "ward") in said
    hint = shlex.split(re.search(r"its masks: `(.*)`", said)[1])
    assert hint[:2] == ["python", "ensemble.py"]
    ensemble.main([*hint[2:], "--out-dir", str(tmp_path)])
    out = tmp_path / "demo" / "sets" / "ward"
    assert list(pd.read_csv(out / "submission.csv", keep_default_na=False)["id"]) == ["scan_001"]
    assert [p.name for p in (out / "masks").iterdir()] == ["scan_001.png"]
    assert read_image(out / "masks" / "scan_001.png").shape == (70, 45)
    assert not (tmp_path / "demo" / "masks").exists() and not (tmp_path / "demo" / "submission.csv").exists()
    with pytest.raises(SystemExit, match="did not predict set 'elsewhere'"):
        ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "none", "--set", "elsewhere"])
    (tmp_path / "ward_again").mkdir()
    write_png(tmp_path / "ward_again" / "scan_001.png", np.full((70, 45), 120, np.uint8))
    infer.main([*infer_args(predicted), "--tta", "none", "--images", str(tmp_path / "ward_again"), "--name", "ward2",
                "--runs", RUN])
    with pytest.raises(SystemExit) as stop:  # one run lacks the set: the hint predicts it, as it stands
        ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "none", "--set", "ward2"])
    hint = shlex.split(str(stop.value.code).split("`")[1])
    assert hint[:2] == ["python", "infer.py"] and "unetpp-tu-test_resnet" in hint
    infer.main(hint[2:])
    ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "none", "--set", "ward2"])
    assert (tmp_path / "demo" / "sets" / "ward2" / "masks" / "scan_001.png").exists()
    # a named ensemble (a study's) writes a set's masks with its own runs and TTA when the flags are left out
    ensemble.main([*ensemble_args(predicted, tmp_path), "--runs", RUN, "--tta", "none", "--name", "one"])
    ensemble.main([*ensemble_args(predicted, tmp_path), "--set", "ward2", "--name", "one"])
    selection = json.loads((tmp_path / "demo" / "one" / "selection.json").read_text())
    assert (selection["runs"], selection["tta"], selection["found"]) == (RUN, "none", [RUN])
    assert (tmp_path / "demo" / "one" / "sets" / "ward2" / "masks" / "scan_001.png").exists()


def test_the_hint_to_predict_first_is_a_command_to_copy_as_is(multiclass_dir, tmp_path):
    with pytest.raises(SystemExit) as stop:
        ensemble.main(["--dataset", "demo-multiclass", *paths(multiclass_dir), "--preds-dir", str(tmp_path / "preds"),
                       "--checkpoint", "last", "--runs", "unet*"])
    hint = shlex.split(str(stop.value.code).split("`")[1])
    assert hint[:2] == ["python", "infer.py"]
    asked = infer.parse_args(hint[2:])
    assert (asked.dataset, asked.runs, asked.tta, asked.checkpoint) == ("demo-multiclass", "unet*", "flip", "last")
    assert [str(d) for d in (asked.data_dir, asked.folds_dir, asked.preds_dir)] == [
        str(multiclass_dir / "data"), str(multiclass_dir / "folds"), str(tmp_path / "preds")]


def scored_predictions(folder, dice, split=None):
    """A tta-* folder as infer.py leaves it, as far as finding predictions, choosing them and checking their split
    read it: two images, of folds 0 and 1."""
    folder.mkdir(parents=True)
    pd.DataFrame({"id": ["a", "b"], "fold": [0, 1], "class": ["lung"] * 2, "tp": [1] * 2, "fp": [0] * 2, "fn": [0] * 2,
                  "dice": [dice] * 2, "iou": [dice] * 2, "hd95": [0.0] * 2}).to_csv(folder / "oof_scores.csv", index=False)
    split = split or {"file": "folds/demo.csv", "sha256": "0" * 64, "k": 2}
    (folder / "prediction.json").write_text(json.dumps({"run_dir": "runs/demo/x", "split": split, "level": None}))


def test_the_checkpoint_picks_the_predictions_of_best_or_last(tmp_path):
    run = tmp_path / "demo" / "unet-r34"
    scored_predictions(run / "tta-none", 0.8)  # the selected weights' (each run's --select-on rule)
    scored_predictions(run / "tta-flip", 0.9)
    scored_predictions(run / "best" / "tta-none", 0.7)
    scored_predictions(run / "last" / "tta-none", 0.85)

    def chosen(tta, checkpoint):
        """The set the test masks read: found for the checkpoint, the TTA of highest OOF Dice under best."""
        found = inputs.find(inputs.Selection("demo", None, checkpoint, tta, str(tmp_path), None, {}))
        options = {mode: choices.Choice({0: s, 1: s}, s) for mode, levels in found["unet-r34"].items()
                   for s in levels.values() if tta in ("best", mode)}
        dice = lambda s: image_dice(s.oof_scores()).reindex(["a", "b"])  # noqa: E731
        return choices.best_by_fold(options, dice, np.array([0, 1])).for_test.folder
    assert chosen("best", "selected") == run / "tta-flip"
    assert chosen("none", "selected") == run / "tta-none"
    assert chosen("best", "best") == run / "best" / "tta-none"
    assert chosen("best", "last") == run / "last" / "tta-none"
    with pytest.raises(SystemExit, match="no scored predictions of last.pt"):
        chosen("flip", "last")


def test_a_prediction_set_of_an_older_infer_is_refused_with_the_command_that_predicts_it_again(demo_dir, tmp_path):
    scored_predictions(tmp_path / "preds" / "demo" / "unet-r34" / "tta-none", 0.8)
    record = tmp_path / "preds" / "demo" / "unet-r34" / "tta-none" / "prediction.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "level"}))
    with pytest.raises(SystemExit) as stop:
        ensemble.main(["--dataset", "demo", *paths(demo_dir), "--preds-dir", str(tmp_path / "preds"), "--out-dir",
                       str(tmp_path / "out")])
    assert re.match(rf"^ensemble: {re.escape(str(record))} lacks level \(an older infer.py's\); predict the set "
                    rf"again: `python infer.py --dataset demo --runs unet-r34 --tta none --checkpoint selected "
                    rf"--overwrite --preds-dir {re.escape(str(tmp_path / 'preds'))}`$", str(stop.value.code))
    assert not (tmp_path / "out").exists()


def test_runs_predicted_on_different_splits_are_not_ensembled(demo_dir, tmp_path):
    split = {"file": str(demo_dir / "folds" / "demo.csv"), "sha256": file_sha256(demo_dir / "folds" / "demo.csv")}
    scored_predictions(tmp_path / "preds" / "demo" / "unet-r34" / "tta-none", 0.8, split)
    scored_predictions(tmp_path / "preds" / "demo" / "unetpp-r34" / "tta-none", 0.8,
                       {"file": str(tmp_path / "other.csv"), "sha256": "0" * 64})
    with pytest.raises(SystemExit, match=r"^ensemble: unet-r34 was trained on .*demo.csv but unetpp-r34 on another "
                                         r"split \(.*other.csv\); ensemble runs of one split \(--runs\)$"):
        ensemble.main(["--dataset", "demo", *paths(demo_dir), "--preds-dir", str(tmp_path / "preds"),
                       "--out-dir", str(tmp_path / "out")])


def test_weights_must_be_positive_numbers_naming_runs(predicted, tmp_path, capsys):
    for weights, error in (("unet-tu-test_resnet=0,unetpp-tu-test_resnet=0", "unet-tu-test_resnet=0: a weight must be a "
                                                                          "positive number; leave a run out with --runs"),
                           ("unet-tu-test_resnet=-1", "unet-tu-test_resnet=-1: a weight must be a positive number"),
                           ("fpn-x=2", "names 'fpn-x', which has no predictions")):
        with pytest.raises(SystemExit, match=f"^ensemble: (--weights )?{re.escape(error)}"):
            ensemble.main([*ensemble_args(predicted, tmp_path), "--weights", weights])
    assert not (tmp_path / "demo" / "scores.json").exists()


RUN = "unet-tu-test_resnet"


def renewable_copy(predicted, tmp_path):
    """The Unet's run folders copied (a test may retrain them) and its predictions without TTA, in tmp_path."""
    shutil.copytree(predicted / "runs" / "demo" / RUN, tmp_path / "runs" / "demo" / RUN,
                    ignore=shutil.ignore_patterns("state*"))
    argv = [*infer_args(predicted), "--runs", RUN, "--tta", "none"]
    for flag, value in (("--runs-dir", tmp_path / "runs"), ("--preds-dir", tmp_path / "preds")):
        argv[argv.index(flag) + 1] = str(value)
    infer.main(argv)
    return [*ensemble_args(predicted, tmp_path / "ensemble"), "--preds-dir", str(tmp_path / "preds"), "--tta", "none"]


def test_predictions_of_older_weights_never_enter_a_leaderboard(predicted, tmp_path):
    args = renewable_copy(predicted, tmp_path)
    fold1 = tmp_path / "runs" / "demo" / RUN / "fold1" / "best.pt"
    shutil.copy(fold1.with_name("last.pt"), fold1)  # retrained since its predictions were made
    with pytest.raises(SystemExit) as stop:
        ensemble.main(args)
    message = str(stop.value.code)
    assert re.match(rf"^ensemble: .*/tta-none/oof/\S+\.npz \({RUN}, fold 1\) was not made by the current weights of "
                    rf"{re.escape(str(fold1.resolve()))} \(retrained or deleted since\); renew it: `python infer.py "
                    rf"--dataset demo --runs {RUN} --folds 1 --tta none --checkpoint selected .*`$", message)
    assert not (tmp_path / "ensemble").exists()  # no leaderboard, no masks
    with pytest.raises(SystemExit, match=rf"^infer: the OOF predictions of fold 1 .* not made by the current weights "
                                         rf"of {RUN}; renew them: `python infer.py .* --folds 1 "):
        infer.main(shlex.split(message.split("`")[1])[2:] + ["--folds", "0"])  # fold 0 alone
    infer.main(shlex.split(message.split("`")[1])[2:])  # the command it names, as it stands
    ensemble.main(args)
    scores = json.loads((tmp_path / "ensemble" / "demo" / "scores.json").read_text())
    assert set(scores["runs"]) == {RUN} and scores["checkpoint"] == "selected"


def test_a_leftover_temporary_file_never_becomes_an_image(predicted, tmp_path):
    args = renewable_copy(predicted, tmp_path)
    test_fold = tmp_path / "preds" / "demo" / RUN / "tta-none" / "test" / "fold0"
    real = next(test_fold.glob("*.npz"))
    shutil.copy(real, test_fold / f"{real.name}.tmp")  # what a killed save_pred leaves
    (tmp_path / "ensemble" / "demo" / "masks").mkdir(parents=True)
    write_png(tmp_path / "ensemble" / "demo" / "masks" / "gone.png", np.zeros((4, 4), np.uint8))  # no longer a test id
    ensemble.main(args)
    index = pd.read_csv(predicted / "data" / "demo" / "index.csv", dtype={"id": str})
    test_ids = sorted(index.loc[index["split"] == "test", "id"])
    out = tmp_path / "ensemble" / "demo"
    assert sorted(pd.read_csv(out / "submission.csv", dtype={"id": str})["id"]) == test_ids
    assert sorted(p.stem for p in (out / "masks").iterdir()) == test_ids


def test_another_checkpoint_or_a_subset_never_replaces_the_default_leaderboard(predicted, tmp_path):
    out = tmp_path / "demo"
    ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "none"])
    infer.main([*infer_args(predicted), "--tta", "none", "--checkpoint", "last"])
    board = (out / "leaderboard.md").read_text()
    for other in (["--checkpoint", "last"], ["--runs", "unet-*"]):
        with pytest.raises(SystemExit, match=rf"^ensemble: {re.escape(str(out))} holds the ensemble of runs \*, "
                                             r"the selected weights, TTA none, from .*; write this one \(.*\) to its own folder with --name "
                                             r"NAME, or pass --overwrite to replace it$"):
            ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "none", *other])
    assert (out / "leaderboard.md").read_text() == board
    assert "Made from the predictions of the weights each run's --select-on rule scores" in board
    ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "none", "--checkpoint", "last", "--name", "last"])
    last = json.loads((out / "last" / "scores.json").read_text())
    assert last["checkpoint"] == "last" and json.loads((out / "scores.json").read_text())["checkpoint"] == "selected"
    assert "Made from the predictions of last.pt, the final epoch" in (out / "last" / "leaderboard.md").read_text()
    assert (out / "leaderboard.md").read_text() == board
    (out / "last" / "selection.json").unlink()  # a folder that does not say what made it is not taken either
    with pytest.raises(SystemExit, match=r"holds an ensemble without a selection.json .* --overwrite to replace it$"):
        ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "none", "--checkpoint", "last", "--name", "last"])


def test_an_ensemble_of_one_run_gains_exactly_nothing(predicted, tmp_path):
    ensemble.main(renewable_copy(predicted, tmp_path))
    scores = json.loads((tmp_path / "ensemble" / "demo" / "scores.json").read_text())
    alone = scores["runs"][RUN]["postprocessed"]  # post-processed as the ensemble is, fold by fold
    assert scores["ensemble_gain"] == 0.0 and scores["ensemble_gain_raw"] == 0.0
    assert alone["dice"] == scores["ensemble"]["dice"] and alone["dice_raw"] == scores["ensemble"]["dice_raw"]
    assert "\n- Ensemble: of one run, the best model itself (gain 0).\n" in (
        tmp_path / "ensemble" / "demo" / "leaderboard.md").read_text()


def test_single_runs_are_post_processed_fold_by_fold_and_the_gain_is_like_with_like(predicted, tmp_path, monkeypatch):
    tuned_for, real_tune = [], choices.tune_postprocessing
    monkeypatch.setattr(choices, "tune_postprocessing",
                        lambda runs, *a: tuned_for.append(list(runs)) or real_tune(runs, *a))
    ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "none"])
    scores = json.loads((tmp_path / "demo" / "scores.json").read_text())
    runs = scores["runs"]
    # Each run is tuned alone, by the same cross-validated code as the ensemble, then the ensemble of both.
    assert tuned_for == [[name] for name in runs] + [list(runs)]
    for name, run in runs.items():
        assert run["postprocessed"]["dice_raw"] == pytest.approx(oof_dice(predicted, name, "none").mean())
    best = max(runs, key=lambda n: runs[n]["postprocessed"]["dice"])
    best_raw = max(runs, key=lambda n: runs[n]["postprocessed"]["dice_raw"])
    assert scores["ensemble_gain"] == pytest.approx(scores["ensemble"]["dice"] - runs[best]["postprocessed"]["dice"])
    assert scores["ensemble_gain_raw"] == pytest.approx(
        scores["ensemble"]["dice_raw"] - runs[best_raw]["postprocessed"]["dice_raw"])
    board = (tmp_path / "demo" / "leaderboard.md").read_text()
    row = next(line for line in board.splitlines() if line.startswith(f"| {best} |"))
    assert f"| {runs[best]['postprocessed']['dice_fold_mean']:.4f} +- " in row  # the table's runs post-processed
    assert f"| {runs[best]['postprocessed']['dice_raw']:.4f} |" in row  # beside their raw Dice
    assert "on raw masks (the models' own: threshold 0.5 or argmax, no post-processing) at one TTA fixed in advance" \
        in board
    # The epoch rule of each run: the fixture's runs chose best.pt on their scored fold, so they are optimistic.
    for name, run in runs.items():
        epochs = {str(f): json.loads((predicted / "runs" / "demo" / name / f"fold{f}" / "metrics.json").read_text())[
            "selected_epoch"] for f in range(3)}
        assert run["epoch_rule"] == {"select_on": "fold", "checkpoint": "selected", "epochs": epochs,
                                     "optimistic": True}
        assert f"| {name} | none | fold, epoch" in board
    assert "trained under `--select-on fold`" in board and "epoch rule --select-on fold." in board


def test_a_multiclass_leaderboard_leads_with_pooled_per_class_dice(trained_dir, multiclass_dir, tmp_path):
    infer.main([*infer_args(multiclass_dir, "demo-multiclass"), "--tta", "flip"])
    ensemble.main(["--dataset", "demo-multiclass", *paths(multiclass_dir), "--preds-dir",
                   str(multiclass_dir / "preds"), "--out-dir", str(tmp_path)])
    out = tmp_path / "demo-multiclass"
    scores = json.loads((out / "scores.json").read_text())
    classes = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
    models = ["unet-tu-test_resnet", "ensemble"]
    for model in models:
        assert scores["macro"][model]["postprocessed"] == pytest.approx(
            np.mean([scores["per_class"][c][model] for c in classes]))
        assert scores["macro"][model]["raw"] == pytest.approx(
            np.mean([scores["per_class_raw"][c][model] for c in classes]))
    assert scores["lowered_classes"] == [
        {"model": m, "class": c, "raw": scores["per_class_raw"][c][m], "postprocessed": scores["per_class"][c][m]}
        for m in models for c in classes if scores["per_class"][c][m] < scores["per_class_raw"][c][m]]
    board = (out / "leaderboard.md").read_text().splitlines()
    first_table = next(line for line in board if line.startswith("|"))
    assert first_table == "| model | macro mean | " + " | ".join(classes) + " | Dice per image |"
    assert board[board.index(first_table) + 2].startswith(
        f"| unet-tu-test_resnet | {scores['macro']['unet-tu-test_resnet']['postprocessed']:.4f} (")
    rule = scores["runs"]["unet-tu-test_resnet"]["epoch_rule"]  # the default rule: the final weights, not optimistic
    assert rule["select_on"] == "final" and rule["epochs"] == {"0": 1, "1": 1, "2": 1} and not rule["optimistic"]
    assert any("| final, epoch 1 |" in line for line in board) and "optimistic" not in " ".join(
        line for line in board if line.startswith("| unet-tu-test_resnet"))


def test_a_run_kept_stale_is_marked_in_the_leaderboard(predicted, tmp_path):
    args = renewable_copy(predicted, tmp_path)
    ledger.accept_stale(tmp_path / "runs" / "demo" / RUN / "fold1", "size 64 -> 96", "demo-study")
    ensemble.main(args)
    scores = json.loads((tmp_path / "ensemble" / "demo" / "scores.json").read_text())
    assert scores["runs"][RUN]["accepted_stale"] == {"1": {"study": "demo-study", "differs": "size 64 -> 96"}}
    board = (tmp_path / "ensemble" / "demo" / "leaderboard.md").read_text()
    assert f"| {RUN} (stale, kept) |" in board
    assert (f"Stale, kept: {RUN} fold 1 was kept by study demo-study with `--accept-stale`, though it asked other "
            "settings (size 64 -> 96).") in board


def test_the_trackers_leaderboard_table_is_post_processed_beside_raw_as_the_markdown_one(predicted, tmp_path,
                                                                                          monkeypatch):
    logged = {}
    monkeypatch.setattr(report.tracking, "log_tables", lambda *args, **kwargs: logged.update(args[5]))
    ensemble.main([*ensemble_args(predicted, tmp_path), "--tta", "none", "--tracker", "wandb"])
    scores = json.loads((tmp_path / "demo" / "scores.json").read_text())
    table = logged["leaderboard"].set_index("model")
    models = {**{n: r["postprocessed"] for n, r in scores["runs"].items()}, "ensemble": scores["ensemble"]}
    for name, run in models.items():
        assert table.loc[name, "dice"] == pytest.approx(run["dice"])  # not a run's raw Dice beside a post-processed one
        assert table.loc[name, "dice_raw"] == pytest.approx(run["dice_raw"])
