"""The leaderboard answers first, labels every Dice raw or post-processed, and its figures show what they say."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.ensembling import report
from src.ensembling.scores import by_encoder
from src.metrics import dice_by_group


def test_examples_are_where_the_two_models_disagree_most_then_the_worst_for_both():
    ids = list("abcdef")
    unet = pd.Series([0.90, 0.95, 0.50, 0.90, 0.20, 0.92], index=ids)
    unetpp = pd.Series([0.91, 0.60, 0.80, 0.90, 0.25, 0.93], index=ids)
    assert report.pick_examples({"unet": unet, "unetpp": unetpp}, 3) == ["b", "c", "e"]
    assert report.pick_examples({"unet": unet}, 2) == ["e", "c"]


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures report draws, kept when it closes them."""
    plt = report.pyplot()
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig) or close(fig))
    return figures


def test_comparison_grid_draws_every_model_and_the_disagreement(tmp_path, drawn):
    image = np.tile(np.arange(300, dtype=np.uint8), (200, 1))
    truth = np.zeros((200, 300), np.uint8)
    truth[50:150, 60:240] = 1
    shifted = np.roll(truth, 20, axis=1)
    report.comparison_grid(tmp_path / "c.png", [("x", image, truth, {"unet": truth, "unetpp": shifted},
                                                 {"unet": 1.0, "unetpp": 0.9})], ["background", "lung"])
    axes = drawn[0].axes
    assert [axis.get_title() for axis in axes] == ["x\ntruth", "unet\npost-processed Dice 1.000",
                                                   "unetpp\npost-processed Dice 0.900",
                                                   "disagreement (magenta):\nunet\nvs unetpp"]
    assert all(len(axis.collections) >= 1 for axis in axes[:3])  # each mask drawn as a contour
    overlay = np.asarray(axes[3].images[0].get_array())
    magenta = (overlay == (255, 0, 255)).all(axis=-1)
    np.testing.assert_array_equal(magenta, truth != shifted)  # 2 x 20 columns x 100 rows where the masks differ
    assert Image.open(tmp_path / "c.png").size == (4 * 3 * 110, 3 * 110)  # four 3-inch panels at 110 dpi


def test_dice_by_group_averages_each_subgroup():
    table = dice_by_group({"m": pd.Series([1.0, 0.5, 0.0], index=["a", "b", "c"])},
                          pd.Series({"a": "PA", "b": "PA", "c": ""}))
    assert table.loc["PA", "m"] == 0.75 and table.loc["PA", "images"] == 2 and table.loc["(none)", "m"] == 0.0


def board_scores() -> dict:
    """scores.json as ensemble.py writes it, for two runs on a patient-grouped split with 3 images left out."""
    def summary(dice, **extra):
        return {"dice": dice, "dice_image_std": 0.05, "dice_fold_mean": dice, "dice_fold_std": 0.01, "iou": dice - 0.1,
                "hd95": 40.0, "hd95_pct": 1.25, "per_class": {}, **extra}
    def run(dice, tta_by_fold):  # raw scores, and post-processed as the ensemble is
        return summary(dice, tta="flip", tta_by_fold=tta_by_fold, training=None, inference=None, accepted_stale={},
                       postprocessed=summary(dice + 0.002, dice_raw=dice, dice_optimistic=dice + 0.003),
                       epoch_rule=rule)
    binary = {"task": "binary", "threshold": 0.5, "fill_holes": False, "min_area": 0.0, "keep_largest": 0}
    rule = {"select_on": "final", "checkpoint": "selected", "epochs": {0: 12, 1: 12}, "optimistic": False}
    return {"dataset": "cxr", "selection": {"runs": "*", "checkpoint": "selected", "tta": "best",
                                           "found": ["unet-r18", "unetpp-r18"], "preds_dir": "/x/preds"},
            "checkpoint": "selected", "images": {"scored": 341, "left_out": 3},
            "runs": {"unet-r18": run(0.90, {0: "flip", 1: "none"}), "unetpp-r18": run(0.92, {0: "flip", 1: "flip"})},
            "ensemble": summary(0.925, dice_raw=0.918, dice_optimistic=0.931), "best_single": "unetpp-r18",
            "ensemble_gain": 0.003, "best_single_raw": "unetpp-r18", "ensemble_gain_raw": -0.002, "per_class": {},
            "best_interval": {"mean": 0.922, "ci95": [0.91, 0.93], "unit": "patient", "units": 207},
            "ensemble_vs_best": {"images": 341, "mean_difference": 0.003, "ci95": [-0.001, 0.007], "wilcoxon_p": 0.2,
                                 "verdict": "no significant difference", "unit": "patient", "units": 207},
            "by": None,
            "tta_gain": {"unet-r18": {"images": 341, "modes": {"none": {"dice": 0.89, "gain": 0.0},
                                                                "flip": {"dice": 0.90, "gain": 0.01}}}},
            "comparisons": [{"encoder": "r18", "baseline": "unet", "challenger": "unetpp", "tta": "flip",
                             "images": 341, "unit": "patient", "units": 207,
                             "mean_difference": 0.02, "ci95": [0.01, 0.03], "wilcoxon_p": 0.001, "p_holm": 0.002,
                             "verdict": "better"}],
            "tuning_by_fold": {0: {"images": 170, "tta": {"unet-r18": "flip", "unetpp-r18": "flip"},
                                   "postprocess": {**binary, "threshold": 0.6, "fill_holes": True, "keep_largest": 2}},
                               1: {"images": 171, "tta": {"unet-r18": "none", "unetpp-r18": "flip"},
                                   "postprocess": binary}},
            "postprocess": {**binary, "threshold": 0.55}, "weights": {"unet-r18": 1.0, "unetpp-r18": 1.0},
            "test_images": 12, "by_encoder": []}


def test_leaderboard_heads_with_cross_validated_scores_and_labels_the_optimistic_one():
    board = report.leaderboard_markdown(board_scores())
    assert "same 341 training images (3 more lack an OOF prediction" in board and "Cross-validated" in board
    ensemble_row = next(line for line in board.splitlines() if line.startswith("| **ensemble**"))
    assert "0.9250 +- 0.0100" in ensemble_row and "40.0 (1.25%)" in ensemble_row
    assert "Optimistic (tuned and scored on the same images): the ensemble's post-processed Dice 0.9310" in board
    assert "| unet-r18 | flip/none (by fold) |" in board and "| unetpp-r18 | flip |" in board
    assert "| unet-r18 | 341 | 0.8900 | 0.9000 (+0.0100) |" in board  # Dice of each TTA mode, gain over none
    assert "- r18, Unet++ vs Unet (TTA flip, 207 patients, 341 images): Unet++ better" in board and "Holm-adjusted p = 0.002" in board
    assert "| 0 | 170 | unet-r18 flip, unetpp-r18 flip | threshold 0.6, fill holes, keep 2 largest |" in board
    assert "| 1 | 171 | unet-r18 none, unetpp-r18 flip | threshold 0.5 |" in board
    assert "Test masks: chosen on all OOF images: TTA unet-r18 flip, unetpp-r18 flip; threshold 0.55." in board


def test_leaderboard_without_hd95_percent_or_patient_groups():
    scores = board_scores()
    for summary in (*scores["runs"].values(), *(r["postprocessed"] for r in scores["runs"].values()),
                    scores["ensemble"]):
        del summary["hd95_pct"]
    scores["images"]["left_out"] = 0
    scores["comparisons"][0].update(unit="image", units=341)
    board = report.leaderboard_markdown(scores)
    assert "(TTA flip, 341 images)" in board and "more lack" not in board and "%)" not in board
    multiclass = {"task": "multiclass", "min_areas": [0.0, 0.002]}
    assert report.settings_text(multiclass) == "argmax, min area per class 0, 0.002"


def encoder_scores() -> dict:
    """board_scores() with six runs: Unet and Unet++ on r18 and r34, an FPN and a Unet of their own encoders."""
    scores = board_scores()

    def run(dice, parameters_m, minutes, images_per_s):
        training = {"folds": 5, "minutes": minutes, "epochs_per_fold": 40, "images_per_s": 100.0}
        return {**scores["runs"]["unet-r18"], "dice_fold_mean": dice, "iou_fold_mean": dice - 0.1, "iou_fold_std": 0.02,
                "folds": {f: dice for f in range(5)}, "parameters_m": parameters_m, "training": training,
                "inference": None if images_per_s is None else {"images_per_s": images_per_s}}
    scores["runs"] = {"unet-r18": run(0.90, 14.3, 20, 600.0), "unetpp-r18": run(0.92, 15.9, 40, 300.0),
                      "unet-r34": run(0.95, 24.4, 30, 500.0), "unetpp-r34": run(0.93, 26.1, 60, None),
                      "fpn-r34": run(0.99, 23.2, 10, 900.0), "unet-b0": run(0.97, 6.3, 10, 800.0)}
    scores["comparisons"].append({**scores["comparisons"][0], "encoder": "r34", "mean_difference": -0.02,
                                  "ci95": [-0.03, -0.01], "wilcoxon_p": 0.01, "p_holm": 0.01, "verdict": "worse"})
    scores["by_encoder"] = by_encoder(scores)
    return scores


def test_per_encoder_table_sets_unet_beside_unetpp_best_dice_first(tmp_path, drawn):
    scores = encoder_scores()
    # Only encoders both architectures ran with; sorted by the better of the two Dice (0.95 before 0.92).
    assert [row["encoder"] for row in scores["by_encoder"]] == ["r34", "r18"]
    board = report.leaderboard_markdown(scores).splitlines()
    header = board.index("| encoder | params M (Unet / Unet++) | Unet raw Dice | Unet raw IoU | Unet++ raw Dice | "
                         "Unet++ raw IoU | Unet++ - Unet [95% CI] | Wilcoxon p (Holm) | s/epoch (Unet / Unet++) | "
                         "images/s (Unet / Unet++) |")
    assert board[header + 2:header + 4] == [  # s/epoch: 30 minutes over 5 folds x 40 epochs
        "| r34 | 24.4 / 26.1 | 0.9500 +- 0.0100 | 0.8500 +- 0.0200 | 0.9300 +- 0.0100 | 0.8300 +- 0.0200 | "
        "-0.0200 [-0.0300, -0.0100] (TTA flip) | 0.01 (0.01) | 9.0 / 18.0 | 500 / n/a |",
        "| r18 | 14.3 / 15.9 | 0.9000 +- 0.0100 | 0.8000 +- 0.0200 | 0.9200 +- 0.0100 | 0.8200 +- 0.0200 | "
        "+0.0200 [+0.0100, +0.0300] (TTA flip) | 0.001 (0.002) | 6.0 / 12.0 | 600 / 300 |"]
    report.study_figure(tmp_path / "study.png", scores["by_encoder"])
    axis = drawn[0].axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["r34", "r18"]
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["Unet", "Unet++"]
    assert axis.get_ylabel().startswith("raw OOF Dice")  # as the per-encoder table's, beside the raw differences
    points = [line.get_ydata().tolist() for line in axis.get_lines() if line.get_marker() == "o"]
    assert points == [[0.95, 0.90], [0.93, 0.92]]  # Unet's Dice per encoder, then Unet++'s
    assert Image.open(tmp_path / "study.png").size == (int((1.1 * 2 + 2.5) * 110), 3.5 * 110)


def test_leaderboard_answers_first_and_ensemble_and_study_print_the_same_lines():
    scores = board_scores()
    expected = [
        "- Best model: unetpp-r18, Dice 0.9220 per image, post-processed, 95% CI [0.9100, 0.9300] (bootstrap over 207 "
        "patients); raw 0.9200.",
        "- Ensemble of 2 runs does not beat it significantly, like with like: post-processed 0.9250 vs 0.9220, "
        "+0.0030, 95% CI [-0.0010, +0.0070]; raw 0.9180 vs 0.9200 (unetpp-r18 raw), -0.0020.",
        "- Unet++ vs Unet, r18: Unet++ better, raw Dice +0.0200, 95% CI [+0.0100, +0.0300] (TTA flip, Holm-adjusted p "
        "0.002).",
        "- Epoch rule --select-on final; TTA chosen for each fold on the other folds: unet-r18 flip/none (by fold), "
        "unetpp-r18 flip."]
    assert report.headline(scores) == expected
    assert report.leaderboard_markdown(scores).splitlines()[:6] == ["# Leaderboard: cxr", *expected, ""]
    # One run under a fixed TTA and an optimistic rule, with no architecture to compare: each answer says so.
    scores["runs"] = {"unetpp-r18": scores["runs"]["unetpp-r18"]}
    scores["runs"]["unetpp-r18"]["epoch_rule"] = {"select_on": "fold", "checkpoint": "selected",
                                                  "epochs": {0: 9, 1: 12}, "optimistic": True}
    scores.update(comparisons=[], selection={"runs": "*", "checkpoint": "last", "tta": "flip", "found": ["unetpp-r18"]})
    assert report.headline(scores)[1:] == [
        "- Ensemble: of one run, the best model itself (gain 0).",
        "- Unet++ vs Unet: not compared (no encoder has both, scored at one TTA mode).",
        "- Epoch rule --select-on fold, scored with last.pt (optimistic for unetpp-r18: epoch chosen on the scored "
        "fold); TTA flip."]


def test_every_dice_figure_on_the_leaderboard_says_raw_or_post_processed(tmp_path, drawn):
    scores = encoder_scores()
    scores["by"] = {"column": "view", "table": [{"group": "PA", "images": 341, "unet-r18": 0.9, "ensemble": 0.92}]}
    for line in report.leaderboard_markdown(scores).splitlines():
        cells = line.strip("|").split("|") if line.startswith("|") else [line]  # a table's header: each column
        assert all("raw" in cell.lower() or "post-processed" in cell for cell in cells if "Dice" in cell), line
    report.score_bars(tmp_path / "scores.png", scores)  # like with like: each run post-processed, as the ensemble
    axis = drawn[0].axes[0]
    assert [bar.get_height() for bar in axis.patches] == [0.902] * 6 + [0.925]
    assert axis.get_ylabel().startswith("post-processed OOF Dice")


def test_leaderboard_says_which_checkpoint_runs_and_weights_made_it():
    scores = {**board_scores(), "weights": {"unet-r18": 1.0, "unetpp-r18": 2.5},
              "selection": {"runs": "unet*", "checkpoint": "last", "tta": "best", "found": ["unet-r18", "unetpp-r18"]}}
    board = report.leaderboard_markdown(scores)
    assert "Made from the predictions of last.pt, the final epoch of unet-r18, unetpp-r18 (--runs unet*); TTA best; " \
           "epoch rule --select-on final." in board
    assert "Weighted mean over the runs: unet-r18 1, unetpp-r18 2.5." in board


def test_leaderboard_states_each_runs_epoch_rule_labels_fold_optimistic_and_marks_a_stale_run():
    scores = board_scores()
    scores["runs"]["unet-r18"]["epoch_rule"] = {"select_on": "fold", "checkpoint": "selected",
                                                "epochs": {0: 9, 1: 12}, "optimistic": True}
    scores["runs"]["unetpp-r18"]["accepted_stale"] = {1: {"study": "cxr-r18", "differs": "epochs 12 -> 40"}}
    scores["selection"] = {"runs": "*", "checkpoint": "selected", "tta": "best", "found": list(scores["runs"])}
    board = report.leaderboard_markdown(scores)
    assert "| unet-r18 | flip/none (by fold) | fold, epochs 9/12 (optimistic) | 0.9020 +- 0.0100 |" in board
    assert "| unetpp-r18 (stale, kept) | flip | final, epoch 12 | 0.9220 +- 0.0100 |" in board
    assert "epoch rule --select-on final, --select-on fold." in board
    assert "`final`: the final weights of a fixed schedule" in board and "`fold`: the epoch chosen on the scored fold" \
        in board and "`inner`:" not in board
    assert "Optimistic epoch rule: unet-r18 trained under `--select-on fold`" in board
    assert ("Stale, kept: unetpp-r18 fold 1 was kept by study cxr-r18 with `--accept-stale`, though it asked other "
            "settings (epochs 12 -> 40).") in board


def test_multiclass_leaderboard_leads_with_pooled_class_dice_and_announces_a_class_post_processing_lowered():
    scores = board_scores()
    classes = {"inflammatory": (0.475, 0.480), "epithelial": (0.280, 0.002)}  # (raw, post-processed)
    scores["per_class"] = {c: {"unet-r18": pp, "unetpp-r18": pp, "ensemble": pp} for c, (_, pp) in classes.items()}
    scores["per_class_raw"] = {c: {"unet-r18": raw, "unetpp-r18": raw, "ensemble": raw}
                               for c, (raw, _) in classes.items()}
    scores["macro"] = {m: {"postprocessed": 0.241, "raw": 0.3775} for m in ("unet-r18", "unetpp-r18", "ensemble")}
    scores["lowered_classes"] = [{"model": "ensemble", "class": "epithelial", "raw": 0.28, "postprocessed": 0.002}]
    scores["per_class_interval"] = {"inflammatory": [0.45, 0.51], "epithelial": [0.0, 0.01]}
    board = report.leaderboard_markdown(scores).splitlines()
    assert ("The ensemble's pooled Dice per class with its bootstrap 95% interval: inflammatory 0.4800 [0.4500, "
            "0.5100], epithelial 0.0020 [0.0000, 0.0100].") in board
    first_table = next(i for i, line in enumerate(board) if line.startswith("|"))
    assert board[first_table] == "| model | macro mean | inflammatory | epithelial | Dice per image |"
    assert board[first_table + 4] == ("| ensemble | 0.2410 (0.3775) | 0.4800 (0.4750) | 0.0020 (0.2800) | "
                                      "0.9250 (0.9180) |")
    assert any(line.startswith("Post-processing lowered a class's pooled Dice") and
               "epithelial in ensemble 0.2800 -> 0.0020" in line for line in board)
