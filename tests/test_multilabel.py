"""Labels that overlap (--task multilabel): every class of a pixel kept, one bit each, from each form such data comes
in: a binary mask folder per class, an RLE CSV's class rows, nnU-Net-style regions of label maps."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import ensemble
import export
import infer
import train
from conftest import TINY, paths, prepare
from src.canonical import load_index, load_meta
from src.losses import SegmentationLoss, class_weights
from src.metrics import confusion, predicted_classes
from src.portable.images import read_image, write_png
from src.portable.labels import label_mask, pack, unpack
from src.portable.rle import rle_encode
from src.portable.submission import mask_codes, submission_text


def lungs_and_heart(k: int) -> tuple:
    """Two lungs and a heart over the left one (the overlap), shifted by k."""
    lungs, heart = np.zeros((16, 12), bool), np.zeros((16, 12), bool)
    lungs[2:13, 1:5], lungs[2:13, 7:11] = True, True
    heart[8 + k % 3:14, 3:8] = True
    return lungs, heart


def images_folder(tmp_path, count: int):
    (tmp_path / "images").mkdir()
    for k in range(count):
        write_png(tmp_path / "images" / f"x{k}.png", np.full((16, 12), 40 * k % 255, np.uint8))
    return tmp_path / "images"


def test_bits_hold_every_class_of_a_pixel():
    lungs, heart = lungs_and_heart(0)
    mask = pack(np.stack([lungs, heart]))
    assert mask.dtype == np.uint8 and mask[10, 3] == 3  # both: the heart over the left lung
    assert np.array_equal(unpack(mask, 2), np.stack([lungs, heart]))
    assert np.array_equal(label_mask(mask, 2, "multilabel"), heart)
    assert np.array_equal(label_mask(np.where(heart, 2, 0), 2, "multiclass"), heart)


def test_per_class_folders_and_rle_rows_keep_overlapping_classes_and_folds_spread_their_combinations(tmp_path):
    images = images_folder(tmp_path, 8)
    rows = []
    for k in range(8):
        lungs, heart = lungs_and_heart(k)
        heart = heart if k % 2 else np.zeros_like(heart)  # half the images without a heart
        for name, mask in (("lung", lungs), ("heart", heart)):
            (tmp_path / "masks" / name).mkdir(parents=True, exist_ok=True)
            write_png(tmp_path / "masks" / name / f"x{k}.png", mask.astype(np.uint8) * 255)
            rows.append((f"x{k}", rle_encode(mask.astype(np.uint8)) if mask.any() else "", name))
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "ClassId"]).to_csv(tmp_path / "train.csv", index=False)
    prepare(tmp_path / "a", "folder", "--images", str(images), "--masks", str(tmp_path / "masks"), "--task",
            "multilabel", "--classes", "lung,heart", "--name", "folders", "--size", "16", "--k", "2")
    prepare(tmp_path / "b", "rle", "--images", str(images), "--csv", str(tmp_path / "train.csv"), "--task",
            "multilabel", "--classes", "lung,heart", "--size", "16", "--k", "2")
    for data in (tmp_path / "a" / "data" / "folders", tmp_path / "b" / "data" / "rle"):
        meta, index = load_meta(data), load_index(data)
        assert meta["task"] == "multilabel" and meta["classes"] == ["background", "lung", "heart"]
        for k in range(8):
            lungs, heart = lungs_and_heart(k)
            mask = read_image(data / "masks" / f"x{k}.png")
            assert np.array_equal(unpack(mask, 2), np.stack([lungs, heart if k % 2 else heart & False]))
        assert index.set_index("id")["labels"].to_dict() == {f"x{k}": 3 if k % 2 else 1 for k in range(8)}
    meta = load_meta(tmp_path / "b" / "data" / "rle")  # the CSV's rows come back as its submission writes them
    codes = {f"x{k}": mask_codes(f"x{k}", read_image(tmp_path / "b" / "data" / "rle" / "masks" / f"x{k}.png"),
                                 meta["classes"], meta["submission"], None, "multilabel") for k in range(8)}
    assert submission_text(codes, meta["classes"], meta["submission"])[0] == (tmp_path / "train.csv").read_text()
    folds = pd.read_csv(tmp_path / "a" / "folds" / "folders.csv").merge(index[["id", "labels"]], on="id")
    assert (folds.groupby("fold")["labels"].apply(lambda v: (v == 3).sum()) == 2).all()  # the overlaps: 2 a fold


def test_a_file_of_a_channel_per_class_gives_the_same_bits_in_numpy_or_tiff(tmp_path):
    import tifffile
    images = images_folder(tmp_path, 4)
    for form in ("npy", "tif"):
        (tmp_path / f"masks-{form}").mkdir()
        for k in range(4):
            lungs, heart = lungs_and_heart(k)
            if form == "npy":
                np.save(tmp_path / f"masks-{form}" / f"x{k}.npy", np.stack([lungs, heart], axis=-1).astype(np.uint8))  # last
            else:
                tifffile.imwrite(tmp_path / f"masks-{form}" / f"x{k}.tif", np.stack([lungs, heart]).astype(np.uint8) * 255)  # pages
        prepare(tmp_path / form, "folder", "--images", str(images), "--masks", str(tmp_path / f"masks-{form}"), "--task",
                "multilabel", "--classes", "lung,heart", "--name", "ml", "--size", "16", "--k", "2")
        for k in range(4):
            assert np.array_equal(unpack(read_image(tmp_path / form / "data" / "ml" / "masks" / f"x{k}.png"), 2),
                                  np.stack(lungs_and_heart(k)))
    np.save(tmp_path / "masks-npy" / "x0.npy", np.zeros((16, 12, 3), np.uint8))
    with pytest.raises(SystemExit, match=r"x0.npy: mask is not a channel per class \(2\) \(16x12x3\)"):
        prepare(tmp_path / "bad", "folder", "--images", str(images), "--masks", str(tmp_path / "masks-npy"), "--task",
                "multilabel", "--classes", "lung,heart", "--size", "16", "--k", "2")


def test_regions_of_label_maps_are_their_nested_unions(tmp_path):
    images = images_folder(tmp_path, 4)
    (tmp_path / "labels").mkdir()
    for k in range(4):
        label_map = np.zeros((16, 12), np.uint8)
        label_map[2:14, 2:10], label_map[5:10, 4:8] = 1, 2  # an edema (1) around a core (2)
        write_png(tmp_path / "labels" / f"x{k}.png", label_map)
    for wrong in ("whole=1,x", "whole=0"):
        with pytest.raises(SystemExit, match="give name=value"):
            prepare(tmp_path / "bad", "folder", "--images", str(images), "--masks", str(tmp_path / "labels"), "--task",
                    "multilabel", "--regions", wrong)
    prepare(tmp_path, "folder", "--images", str(images), "--masks", str(tmp_path / "labels"), "--task", "multilabel",
            "--regions", "whole=1,2 core=2", "--name", "tumour", "--size", "16", "--k", "2")
    assert load_meta(tmp_path / "data" / "tumour")["classes"] == ["background", "whole", "core"]
    assert load_meta(tmp_path / "data" / "tumour")["regions"] == {"whole": [1, 2], "core": [2]}
    whole, core = unpack(read_image(tmp_path / "data" / "tumour" / "masks" / "x0.png"), 2)
    assert whole[2:14, 2:10].all() and whole.sum() == 12 * 8 and core[5:10, 4:8].all() and core.sum() == 20


def test_a_sigmoid_per_class_is_scored_per_class_where_the_classes_overlap():
    lungs, heart = (torch.from_numpy(m) for m in lungs_and_heart(0))
    target = torch.from_numpy(pack(np.stack([lungs.numpy(), heart.numpy()])))[None]
    logits = torch.stack([lungs.float() * 8 - 4, torch.full(heart.shape, -4.0)])[None]  # the lungs alone predicted
    pred = predicted_classes(logits, "multilabel")
    assert torch.equal(pred, lungs.long()[None])  # bit 1 where the lungs are, no heart
    tp, fp, fn = confusion(pred, target, 3, "multilabel")
    assert tp.tolist() == [[lungs.sum().item(), 0]] and fp.tolist() == [[0, 0]] and fn.tolist() == [[0, heart.sum().item()]]
    loss = SegmentationLoss("multilabel")
    assert loss(logits, target) > loss(torch.stack([lungs.float() * 8 - 4, heart.float() * 8 - 4])[None], target)
    weights = class_weights("auto", target.numpy(), 3, "multilabel")  # a BCE weight per channel: the rarer heart more
    assert weights.shape == (2,) and weights[1] > weights[0] and weights.mean().item() == pytest.approx(1)
    weighted = SegmentationLoss("multilabel", weights=weights)
    assert "ce.weight" in dict(weighted.named_buffers()) and weighted(logits, target) > loss(logits, target)  # heart missed


def test_the_multilabel_demo_through_training_infer_the_ensemble_and_the_package(tmp_path, capsys):
    prepare(tmp_path, "demo", "--multilabel", "--count", "12", "--test-count", "2", "--size", "32", "--k", "2")
    data = tmp_path / "data" / "demo-multilabel"
    masks = np.load(data / "cache" / "32" / "masks.npy")
    assert load_meta(data)["classes"] == ["background", "lung", "heart"] and (masks == 3).any()  # heart over lung
    flags = [*TINY[:TINY.index("--size")], *TINY[TINY.index("--size") + 2:], "--size", "32", "--epochs", "2",
             "--dataset", "demo-multilabel", *paths(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    for fold in (0, 1):
        train.main([*flags, "--fold", str(fold)])
    metrics = json.loads((tmp_path / "runs" / "demo-multilabel" / "unet-tu-test_resnet" / "fold0" /
                          "metrics.json").read_text())
    assert {"dice_lung", "dice_heart"} <= set(metrics) and metrics["dice_lung"] > 0.3  # Dice per class
    infer.main(["--dataset", "demo-multilabel", *paths(tmp_path), "--runs-dir", str(tmp_path / "runs"),
                "--preds-dir", str(tmp_path / "preds"), "--tta", "flip"])  # a sigmoid per class, flipped and back
    predicted = tmp_path / "preds" / "demo-multilabel" / "unet-tu-test_resnet" / "tta-flip"
    scores = pd.read_csv(predicted / "oof_scores.csv")
    assert set(scores["class"]) == {"lung", "heart"} and len(scores) == 2 * 12  # each class of every image
    for row in scores.rename(columns={"class": "label"}).itertuples():  # each class against its own pixels
        truth = unpack(read_image(data / "masks" / f"{row.id}.png"), 2)[["lung", "heart"].index(row.label)]
        assert row.tp + row.fn == truth.sum()  # the heart's pixels over the lung counted in both
    out = tmp_path / "ensemble"
    ensemble.main(["--dataset", "demo-multilabel", *paths(tmp_path), "--preds-dir", str(tmp_path / "preds"),
                   "--out-dir", str(out), "--figures", "0"])
    board = json.loads((out / "demo-multilabel" / "scores.json").read_text())
    assert all(len(t["postprocess"]["by_class"]) == 2 for t in board["tuning_by_fold"].values())  # each class its own
    for name, (low, high) in board["per_class_interval"].items():  # every class's Dice with its interval
        assert low <= board["per_class"][name]["ensemble"] <= high and name in ("lung", "heart")
    submission = pd.read_csv(out / "demo-multilabel" / "submission.csv", keep_default_na=False)
    assert len(submission) == 2 * 2 and set(submission["class"]) == {"lung", "heart"}  # a row per image and class
    for image_id in submission["id"].unique():
        written = read_image(out / "demo-multilabel" / "masks" / f"{image_id}.png")
        rows = submission[submission["id"] == image_id].set_index("class")["rle"]
        for c, name in enumerate(["lung", "heart"], start=1):  # an overlapping pixel in both rows
            assert rows[name] == rle_encode(label_mask(written, c, "multilabel"))
    export.main(["--dataset", "demo-multilabel", *paths(tmp_path), "--ensemble-dir", str(out), "--out-dir",
                 str(tmp_path / "export")])
    assert "parity: 2 of 2 test masks identical" in capsys.readouterr().out
    test_images = tmp_path / "test-images"
    test_images.mkdir()
    for image_id in submission["id"].unique():
        (test_images / f"{image_id}.png").symlink_to(data / "images" / f"{image_id}.png")
    done = subprocess.run([sys.executable, "-I", str(tmp_path / "export" / "demo-multilabel" / "predict.py"), "--images",
                           str(test_images), "--out", str(tmp_path / "run" / "submission.csv")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "submission.csv").read_text() == (out / "demo-multilabel" / "submission.csv").read_text()


def test_each_class_is_tuned_on_the_other_folds_alone():
    from src.portable.postprocess import MIN_TOTALS, THRESHOLDS, binary_candidates, choose_by_fold
    candidates = binary_candidates(tuple(MIN_TOTALS))
    wanted = {0: 0.3, 1: 0.7}  # fold 0's images favour a low threshold for class 1, fold 1's a high one
    scores = np.zeros((4, 2, len(candidates)))
    for image, fold in enumerate([0, 0, 1, 1]):
        for j, c in enumerate(candidates):
            cost = 0.01 * (c.fill_holes + c.keep_largest) + c.min_area + c.min_total
            scores[image, 0, j] = 1 - abs(c.threshold - wanted[fold]) - cost
            scores[image, 1, j] = 1 - abs(c.threshold - 0.5) - cost
    counts = np.stack([10 * scores, np.full_like(scores, 10), np.full_like(scores, 10)], axis=-1)  # Dice = scores
    chosen = choose_by_fold("multilabel", counts, [0, 0, 1, 1])
    assert [chosen[f]["by_class"][0]["threshold"] for f in (0, 1)] == [0.7, 0.3]  # each fold's from the other's
    assert {chosen[f]["by_class"][1]["threshold"] for f in (0, 1)} == {0.5} and 0.3 in THRESHOLDS


def test_a_class_predicted_on_less_than_its_tuned_minimum_is_emptied_there_alone():
    from src.portable.postprocess import apply, binary_candidate_counts, binary_candidates
    probs = np.zeros((2, 40, 40), np.float32)
    probs[0, 1:3, 1:3] = probs[1, 1:3, 1:3] = 0.9  # 4 pixels of each class: 0.25% of the image
    settings = {"task": "multilabel", "by_class": [{"min_total": 0.005}, {"min_total": 0.0}]}
    assert np.array_equal(unpack(apply(probs, settings), 2).sum(axis=(1, 2)), [0, 4])  # the first class alone emptied
    candidates = binary_candidates((0.0, 0.005))  # tuning scores the rule: a false positive emptied scores 1
    counts = binary_candidate_counts(probs[0], np.zeros((40, 40), bool), candidates)
    assert counts[:2].tolist() == [[0, 4, 0], [0, 0, 0]] and candidates[1].min_total == 0.005
