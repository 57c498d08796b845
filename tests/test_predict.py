"""infer.py: TTA, maps at the model's size with the original size, OOF coverage, clear errors, skipping finished work."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import infer
from conftest import infer_args
from src.canonical import load_index
from src.folds import load_folds
from src.models import create_model
from src.predict import load_pred, resize_prob, to_uint8, with_tta


def uint8_images(n=2, channels=1, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (n, channels, size, size), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["flip", "d4"])
def test_tta_of_a_flip_and_rotation_invariant_model_is_the_plain_prediction(mode):
    pointwise = torch.nn.Conv2d(1, 1, kernel_size=1).eval()  # commutes with every flip and rotation
    x = uint8_images()
    with torch.no_grad():
        torch.testing.assert_close(with_tta(pointwise, "binary", mode)(x), with_tta(pointwise, "binary", "none")(x))


def test_flip_tta_equals_the_mean_of_manually_flipped_predictions():
    model = create_model("unet", "tu-resnet10t", 1, 1, "none", "16,16,8,8,8").eval()
    x = uint8_images()
    with torch.no_grad():
        plain = with_tta(model, "binary", "none")
        manual = (plain(x) + plain(x.flip(-1)).flip(-1)) / 2
        torch.testing.assert_close(with_tta(model, "binary", "flip")(x), manual)


def test_multiclass_probabilities_sum_to_one_before_and_after_resizing():
    model = create_model("unet", "tu-resnet10t", 3, 6, "none", "16,16,8,8,8").eval()
    with torch.no_grad():
        probs = with_tta(model, "multiclass", "d4")(uint8_images(channels=3))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 32, 32))
    resized = [resize_prob(m, size) for m, size in zip(to_uint8(probs), [(45, 23), (10, 70)])]
    assert [r.shape for r in resized] == [(6, 45, 23), (6, 10, 70)]
    assert np.abs(resized[0].sum(axis=0) - 1).max() <= 3 / 255  # uint8 rounding of 6 channels


@pytest.mark.parametrize("size", [(200, 120), (45, 23), (32, 32)])
def test_resizing_on_the_host_is_torch_bilinear_without_corner_alignment(size):
    prob = uint8_images(channels=3)[0].numpy()
    expected = F.interpolate(torch.from_numpy(prob[None] / 255).float(), size=size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(resize_prob(prob, size), expected[0].numpy(), atol=1e-5)
    assert resize_prob(prob[:1], size).shape == (1, *size)


def test_oof_and_test_predictions_cover_every_image_once_at_original_size(trained_dir):
    infer.main([*infer_args(trained_dir), "--tta", "flip"])
    index = load_index(trained_dir / "data" / "demo").set_index("id")
    folds = load_folds(trained_dir / "folds", "demo")
    for run in ("unet-tu-resnet10t", "unetpp-tu-resnet10t"):
        out = trained_dir / "preds" / "demo" / run / "tta-flip"
        assert sorted(p.stem for p in (out / "oof").glob("*.npz")) == sorted(folds["id"])
        for image_id in folds["id"][:5]:  # maps at the 64 px training size, with the image's original size
            prob, size = load_pred(out / "oof" / f"{image_id}.npz")
            assert prob.shape == (1, 64, 64) and prob.dtype == np.uint8
            assert size == tuple(index.loc[image_id, ["height", "width"]])
        test_ids = sorted(index.index[index["split"] == "test"])
        for fold in range(3):
            assert sorted(p.stem for p in (out / "test" / f"fold{fold}").glob("*.npz")) == test_ids
        scores = __import__("pandas").read_csv(out / "oof_scores.csv")
        assert len(scores) == len(folds) and scores["dice"].between(0, 1).all() and (scores["hd95"] >= 0).all()


def test_rerun_skips_finished_images_unless_overwrite(trained_dir):
    args = [*infer_args(trained_dir), "--tta", "none", "--runs", "unet-*", "--folds", "0"]
    infer.main(args)
    oof = trained_dir / "preds" / "demo" / "unet-tu-resnet10t" / "tta-none" / "oof"
    folds = load_folds(trained_dir / "folds", "demo")
    fold0 = [oof / f"{i}.npz" for i in folds.loc[folds["fold"] == 0, "id"]]
    before = [p.stat().st_mtime_ns for p in fold0]
    scored = (oof.parent / "oof_scores.csv").stat().st_mtime_ns
    infer.main(args)
    assert [p.stat().st_mtime_ns for p in fold0] == before
    assert (oof.parent / "oof_scores.csv").stat().st_mtime_ns == scored  # nothing new: the scores are reused
    infer.main([*args, "--overwrite"])
    assert all(p.stat().st_mtime_ns != t for p, t in zip(fold0, before))
    overwritten = [p.stat().st_mtime_ns for p in fold0]
    weights = trained_dir / "runs" / "demo" / "unet-tu-resnet10t" / "fold0" / "best.pt"
    os.utime(weights, ns=(max(overwritten) + 10**9, max(overwritten) + 10**9))  # as if retrained since
    infer.main(args)
    assert all(p.stat().st_mtime_ns != t for p, t in zip(fold0, overwritten))


def test_folder_of_new_images_is_predicted_at_their_size(trained_dir, tmp_path):
    from src.images import write_png
    (tmp_path / "new").mkdir()
    write_png(tmp_path / "new" / "odd.png", np.full((37, 81), 90, np.uint8))
    args = infer_args(trained_dir)
    args[args.index("--preds-dir") + 1] = str(tmp_path / "preds")
    infer.main([*args, "--runs", "unet-*", "--folds", "1", "--images", str(tmp_path / "new")])
    prob, size = load_pred(tmp_path / "preds/demo/unet-tu-resnet10t/tta-none/test/fold1/odd.npz")
    assert prob.shape == (1, 64, 64) and size == (37, 81)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty holds no images"):
        infer.main([*args, "--images", str(tmp_path / "empty")])


def test_new_images_in_any_mode_or_dicom_are_read_as_in_prepare(trained_dir, tmp_path):
    import cv2
    from pydicom.data import get_testdata_file
    new = tmp_path / "new"
    new.mkdir()
    cv2.imwrite(str(new / "colour.jpg"), np.dstack([np.full((40, 50), v, np.uint8) for v in (10, 90, 200)]))
    cv2.imwrite(str(new / "alpha.png"), np.full((30, 20, 4), 120, np.uint8))
    cv2.imwrite(str(new / "twelve_bit.png"), np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 3)
    shutil.copy(get_testdata_file("CT_small.dcm"), new / "ct.dcm")
    args = infer_args(trained_dir)
    args[args.index("--preds-dir") + 1] = str(tmp_path / "preds")
    infer.main([*args, "--runs", "unet-*", "--folds", "1", "--images", str(new)])  # a grey model
    out = tmp_path / "preds/demo/unet-tu-resnet10t/tta-none/test/fold1"
    assert sorted(p.name for p in out.glob("*.npz")) == ["alpha.npz", "colour.npz", "ct.npz", "twelve_bit.npz"]
    (new / "broken.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match=r"^infer: .*broken.png: cannot be read as an image"):
        infer.main([*args, "--runs", "unet-*", "--folds", "1", "--images", str(new)])


def test_missing_weights_and_unknown_arch_are_clear_errors(trained_dir, tmp_path):
    runs = tmp_path / "runs" / "demo"
    shutil.copytree(trained_dir / "runs" / "demo" / "unet-tu-resnet10t" / "fold0", runs / "unet-tu-resnet10t" / "fold0")
    (runs / "unet-tu-resnet10t" / "fold0" / "best.pt").unlink()
    args = infer_args(trained_dir)
    args[args.index("--runs-dir") + 1] = str(tmp_path / "runs")
    with pytest.raises(SystemExit, match="best.pt not found: the run has no finished epoch"):
        infer.main(args)
    config = runs / "unet-tu-resnet10t" / "fold0" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "arch": "hypernet"}))
    shutil.copy(trained_dir / "runs/demo/unet-tu-resnet10t/fold0/best.pt", config.parent / "best.pt")
    with pytest.raises(SystemExit, match="config.json: unknown architecture 'hypernet'"):
        infer.main(args)


def test_old_full_size_predictions_are_predicted_again_or_refused_clearly(trained_dir, tmp_path):
    args = infer_args(trained_dir)
    args[args.index("--preds-dir") + 1] = str(tmp_path / "preds")
    args += ["--runs", "unet-*", "--folds", "0"]
    infer.main(args)
    oof = tmp_path / "preds" / "demo" / "unet-tu-resnet10t" / "tta-none" / "oof"
    folds = load_folds(trained_dir / "folds", "demo")
    fold0, fold1 = (oof / f"{folds.loc[folds['fold'] == k, 'id'].iloc[0]}.npz" for k in (0, 1))
    for path in (fold0, fold1):  # the previous format: only `prob`, at full size, newer than the weights
        np.savez_compressed(path, prob=np.zeros((1, 250, 300), np.uint8))
    with pytest.raises(SystemExit, match=r"old full-size format; predict again with .*--overwrite"):
        infer.main(args)  # fold 1 is not predicted by this call, so it cannot be scored
    assert load_pred(fold0)[0].shape == (1, 64, 64)  # fold 0 was predicted again, without --overwrite
    fold1.unlink()
    infer.main(args)
