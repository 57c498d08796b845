"""infer.py: TTA, maps at the model's size with the original size, OOF coverage, clear errors, skipping finished work,
the run's own fold file, each file's model, prediction sets, best or last checkpoint, unfinished runs skipped."""
import json
import re
import shlex
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ensemble
import infer
import train
from conftest import infer_args, paths
from src.canonical import load_index
from src.config import Config, config_from_args
from src.folds import load_folds
from src.portable.images import write_png
from src.models import create_model
from src.portable.maps import resize_prob
from src.portable.torch_model import to_uint8, with_tta
from src.runs import file_sha256, load_pred, made_by, save_pred

RUN = "unet-tu-test_resnet"


def uint8_images(n=2, channels=1, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (n, channels, size, size), dtype=np.uint8))


def tmp_args(trained_dir, tmp_path, runs_dir=None) -> list:
    """infer's arguments on the trained fixture, with predictions (and runs_dir's runs) under tmp_path."""
    args = infer_args(trained_dir)
    args[args.index("--preds-dir") + 1] = str(tmp_path / "preds")
    if runs_dir:
        args[args.index("--runs-dir") + 1] = str(runs_dir)
    return args


def copy_run(trained_dir, runs_dir, fold=0):
    """A copy of one trained fold of the Unet (without its training state) that a test may change."""
    target = runs_dir / "demo" / RUN / f"fold{fold}"
    shutil.copytree(trained_dir / "runs" / "demo" / RUN / f"fold{fold}", target, ignore=shutil.ignore_patterns("state"))
    return target


@pytest.mark.parametrize("mode", ["flip", "d4"])
def test_tta_of_a_flip_and_rotation_invariant_model_is_the_plain_prediction(mode):
    pointwise = torch.nn.Conv2d(1, 1, kernel_size=1).eval()  # commutes with every flip and rotation
    x = uint8_images()
    with torch.no_grad():
        torch.testing.assert_close(with_tta(pointwise, "binary", mode)(x), with_tta(pointwise, "binary", "none")(x))


def test_flip_tta_equals_the_mean_of_manually_flipped_predictions():
    model = create_model("unet", "tu-test_resnet", 1, 1, "none", "16,16,8,8,8").eval()
    x = uint8_images()
    with torch.no_grad():
        plain = with_tta(model, "binary", "none")
        manual = (plain(x) + plain(x.flip(-1)).flip(-1)) / 2
        torch.testing.assert_close(with_tta(model, "binary", "flip")(x), manual)


def test_multiclass_probabilities_sum_to_one_before_and_after_resizing():
    model = create_model("unet", "tu-test_resnet", 3, 6, "none", "16,16,8,8,8").eval()
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
    for run in ("unet-tu-test_resnet", "unetpp-tu-test_resnet"):
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
    oof = trained_dir / "preds" / "demo" / RUN / "tta-none" / "oof"
    folds = load_folds(trained_dir / "folds", "demo")
    fold0 = [oof / f"{i}.npz" for i in folds.loc[folds["fold"] == 0, "id"]]
    before = [p.stat().st_mtime_ns for p in fold0]
    scored = (oof.parent / "oof_scores.csv").stat().st_mtime_ns
    infer.main(args)
    assert [p.stat().st_mtime_ns for p in fold0] == before
    assert (oof.parent / "oof_scores.csv").stat().st_mtime_ns == scored  # nothing new: the scores are reused
    infer.main([*args, "--overwrite"])
    assert all(p.stat().st_mtime_ns != t for p, t in zip(fold0, before))


def test_each_file_records_its_model_and_files_of_another_model_are_predicted_again(trained_dir, tmp_path):
    args = [*tmp_args(trained_dir, tmp_path), "--runs", "unet-*", "--folds", "0"]
    infer.main(args)
    folds = load_folds(trained_dir / "folds", "demo")
    oof = tmp_path / "preds" / "demo" / RUN / "tta-none" / "oof"
    fold0 = [oof / f"{i}.npz" for i in folds.loc[folds["fold"] == 0, "id"]]
    model = {"fold": 0, "weights": file_sha256(trained_dir / "runs" / "demo" / RUN / "fold0" / "best.pt"),
             "split": file_sha256(trained_dir / "folds" / "demo.csv"), "tta": "none"}
    assert all(made_by(p) == model for p in fold0)
    other_fold, retrained, old_format, kept = fold0[:4]
    prob, size = load_pred(kept)
    save_pred(other_fold, prob, size, fold=1, weights=model["weights"])  # as before the split changed
    save_pred(retrained, prob, size, fold=0, weights="0" * 64)  # weights since retrained
    np.savez_compressed(old_format, prob=np.zeros((1, 250, 300), np.uint8))  # the earlier full-size format
    fold1 = oof / f"{folds.loc[folds['fold'] == 1, 'id'].iloc[0]}.npz"
    save_pred(fold1, prob, size)  # written before files recorded their model, by a fold this call does not predict
    kept_time = kept.stat().st_mtime_ns
    with pytest.raises(SystemExit, match=rf"^infer: .*{fold1.name} was not made by the model of fold 1, .*--folds 1"):
        infer.main(args)
    assert all(made_by(p) == model for p in (other_fold, retrained, old_format))
    assert load_pred(old_format)[0].shape == (1, 64, 64)
    assert kept.stat().st_mtime_ns == kept_time
    fold1.unlink()
    infer.main(args)


def test_a_run_reads_the_fold_file_it_was_trained_on_and_refuses_a_changed_one(trained_dir, tmp_path, capsys):
    run = copy_run(trained_dir, tmp_path / "runs")
    config = json.loads((run / "config.json").read_text())
    assert config["folds"]["file"] == str(trained_dir / "folds" / "demo.csv")  # recorded by train.py
    split = tmp_path / "split" / "demo.csv"  # as if the run had been trained on this file
    split.parent.mkdir()
    shutil.copy(config["folds"]["file"], split)
    config["folds"]["file"] = str(split)
    (run / "config.json").write_text(json.dumps(config))
    args = [*tmp_args(trained_dir, tmp_path, tmp_path / "runs"), "--folds-dir", str(tmp_path / "elsewhere")]
    infer.main(args)  # --folds-dir is not read
    preds = tmp_path / "preds" / "demo" / RUN
    assert json.loads((preds / "config.json").read_text())["folds"] == config["folds"]
    folds = load_folds(split.parent, "demo")
    folds.loc[0, "fold"] = (folds.loc[0, "fold"] + 1) % 3  # re-prepared: one image moved to another fold
    folds.to_csv(split, index=False)
    changed = f"{split} changed since {run} was trained (re-prepared?); retrain the run or restore the file"
    with pytest.raises(SystemExit, match="^" + re.escape(f"infer: {changed}") + "$"):
        infer.main(args)
    with pytest.raises(SystemExit, match="^ensemble: " + re.escape(f"{split} changed since {preds / 'tta-none'}")):
        ensemble.main(["--dataset", "demo", *paths(trained_dir), "--preds-dir", str(tmp_path / "preds"),
                       "--out-dir", str(tmp_path / "ensemble")])
    del config["folds"]  # a run of a train.py that recorded no fold file: refused, with the command that retrains it
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as stop:
        infer.main(tmp_args(trained_dir, tmp_path, tmp_path / "runs"))
    message = str(stop.value.code)
    assert re.match(rf"^infer: {re.escape(str(run / 'config.json'))} was written by an older train.py \(it has no "
                    rf"folds\); train the run again: `accelerate launch train.py .* --overwrite`$", message)
    retrain = train.parse_args(shlex.split(message.split("`")[1])[3:])  # every setting it recorded, as it was
    assert asdict(config_from_args(retrain)) == {k: v for k, v in config.items() if k in asdict(Config())}


def test_folders_of_new_images_are_prediction_sets_of_their_own(trained_dir, tmp_path):
    for folder, shape in (("a", (37, 81)), ("b", (90, 50))):  # one file name, two different images
        (tmp_path / folder).mkdir()
        write_png(tmp_path / folder / "scan_001.png", np.full(shape, 90, np.uint8))
    args = [*tmp_args(trained_dir, tmp_path), "--runs", "unet-*", "--folds", "1"]
    infer.main([*args, "--images", str(tmp_path / "a")])
    infer.main([*args, "--images", str(tmp_path / "b"), "--name", "ward_b"])
    out = tmp_path / "preds" / "demo" / RUN / "tta-none"
    prob, size = load_pred(out / "sets" / "a" / "fold1" / "scan_001.npz")
    assert prob.shape == (1, 64, 64) and size == (37, 81)
    assert load_pred(out / "sets" / "ward_b" / "fold1" / "scan_001.npz")[1] == (90, 50)
    assert not (out / "test").exists()  # never the dataset's test split
    for ward in ("a", "b"):  # two folders of one name, another image under one file name: never one set
        (tmp_path / ward / "imgs").mkdir()
        write_png(tmp_path / ward / "imgs" / "scan_001.png", np.full((30, 30) if ward == "a" else (80, 50), 9, np.uint8))
    infer.main([*args, "--images", str(tmp_path / "a" / "imgs")])
    with pytest.raises(SystemExit, match=rf"^infer: prediction set 'imgs' of {RUN} in .*sets/imgs holds the images of "
                                         rf".*a/imgs, not .*b/imgs; name this one with --name NAME, or pass "
                                         rf"--overwrite to replace it$"):
        infer.main([*args, "--images", str(tmp_path / "b" / "imgs")])
    infer.main([*args, "--images", str(tmp_path / "b" / "imgs"), "--name", "imgs_b"])
    assert load_pred(out / "sets" / "imgs" / "fold1" / "scan_001.npz")[1] == (30, 30)
    assert load_pred(out / "sets" / "imgs_b" / "fold1" / "scan_001.npz")[1] == (80, 50)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty holds no images"):
        infer.main([*args, "--images", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="'../up' cannot name a prediction set"):
        infer.main([*args, "--images", str(tmp_path / "a" / "imgs"), "--name", "../up"])


def test_two_images_of_one_name_in_a_folder_are_refused_before_predicting(trained_dir, tmp_path):
    """A folder is walked at any depth, as downloaded; two images of one name, wherever they lie, would share an id."""
    (tmp_path / "new" / "deep").mkdir(parents=True)
    write_png(tmp_path / "new" / "x.png", np.full((30, 40), 90, np.uint8))
    shutil.copy(tmp_path / "new" / "x.png", tmp_path / "new" / "deep" / "x.tif")
    with pytest.raises(SystemExit, match=r"^infer: --images .*new holds deep/x.tif and x.png, which would share one id; "
                                         r"rename one$"):
        infer.main([*tmp_args(trained_dir, tmp_path), "--images", str(tmp_path / "new")])
    assert not (tmp_path / "preds").exists()


def test_new_images_in_any_mode_or_dicom_are_read_as_in_prepare(trained_dir, tmp_path):
    import cv2
    from pydicom.data import get_testdata_file
    new = tmp_path / "new"
    new.mkdir()
    cv2.imwrite(str(new / "colour.jpg"), np.dstack([np.full((40, 50), v, np.uint8) for v in (10, 90, 200)]))
    cv2.imwrite(str(new / "alpha.png"), np.full((30, 20, 4), 120, np.uint8))
    cv2.imwrite(str(new / "twelve_bit.png"), np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 3)
    shutil.copy(get_testdata_file("CT_small.dcm"), new / "ct.dcm")
    args = tmp_args(trained_dir, tmp_path)
    infer.main([*args, "--runs", "unet-*", "--folds", "1", "--images", str(new)])  # a grey model
    out = tmp_path / "preds" / "demo" / RUN / "tta-none" / "sets" / "new" / "fold1"
    assert sorted(p.name for p in out.glob("*.npz")) == ["alpha.npz", "colour.npz", "ct.npz", "twelve_bit.npz"]
    (new / "broken.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match=r"^infer: .*broken.png: cannot be read as an image"):
        infer.main([*args, "--runs", "unet-*", "--folds", "1", "--images", str(new)])


def test_last_and_best_checkpoints_predict_into_their_own_folders(trained_dir, tmp_path):
    args = [*tmp_args(trained_dir, tmp_path), "--runs", "unet-*", "--folds", "0"]
    infer.main(args)
    infer.main([*args, "--checkpoint", "last"])
    preds, trained = tmp_path / "preds" / "demo" / RUN, trained_dir / "runs" / "demo" / RUN / "fold0"
    folds = load_folds(trained_dir / "folds", "demo")
    for out, weights in ((preds / "tta-none", "best.pt"), (preds / "last" / "tta-none", "last.pt")):
        files = sorted((out / "oof").glob("*.npz"))
        assert len(files) == (folds["fold"] == 0).sum() and (out / "oof_scores.csv").exists()
        assert {made_by(f)["weights"] for f in files} == {file_sha256(trained / weights)}
        assert sorted((out / "test" / "fold0").glob("*.npz")) and (out.parent / "config.json").exists()
    old = copy_run(trained_dir, tmp_path / "runs")
    (old / "last.pt").unlink()  # deleted since the run finished
    with pytest.raises(SystemExit, match=r"^infer: .*last.pt not found, though the run finished \(deleted\?\); train "
                                         r"it again with train.py --overwrite$"):
        infer.main([*tmp_args(trained_dir, tmp_path, tmp_path / "runs"), "--checkpoint", "last"])


def test_run_folders_without_the_weights_asked_for_are_skipped_and_reported(trained_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    copy_run(trained_dir, runs, fold=0)
    no_epoch, training = copy_run(trained_dir, runs, fold=1), copy_run(trained_dir, runs, fold=2)
    for name in ("best.pt", "last.pt", "metrics.json"):  # killed before its first epoch ended
        (no_epoch / name).unlink()
    (training / "last.pt").unlink()  # still training: best.pt, but neither last.pt nor the final metrics
    metrics = json.loads((training / "metrics.json").read_text())
    (training / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "epochs_run"}))
    with pytest.raises(SystemExit, match=r"^infer: skipped 2 run folder\(s\)"):
        infer.main([*tmp_args(trained_dir, tmp_path, runs), "--checkpoint", "last"])
    printed = capsys.readouterr().out
    assert f"infer: skipping {no_epoch}: no finished epoch (no best.pt)" in printed
    assert f"infer: skipping {training}: training not finished (no last.pt yet)" in printed
    folds = load_folds(trained_dir / "folds", "demo")
    oof = tmp_path / "preds" / "demo" / RUN / "last" / "tta-none" / "oof"
    assert sorted(p.stem for p in oof.glob("*.npz")) == sorted(folds.loc[folds["fold"] == 0, "id"])
    assert (oof.parent / "oof_scores.csv").exists()  # the finished run was predicted and scored


def test_unknown_arch_is_a_clear_error(trained_dir, tmp_path):
    run = copy_run(trained_dir, tmp_path / "runs")
    config = run / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "arch": "hypernet"}))
    with pytest.raises(SystemExit, match="config.json: unknown architecture 'hypernet'"):
        infer.main(tmp_args(trained_dir, tmp_path, tmp_path / "runs"))


def test_filters_say_what_exists_and_each_folder_left_out(trained_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    copy_run(trained_dir, runs, fold=0)
    (runs / "demo" / RUN / "fold1").mkdir()
    (runs / "demo" / RUN / "fold1" / "train.log").write_text("killed before it saved its config\n")
    args = tmp_args(trained_dir, tmp_path, runs)
    for flags, error in ((["--folds", "5"], "--folds 5: no fold 5 among the runs asked in .* \\(folds there: 0, 1\\)"),
                         (["--arch", "unett"], "--arch unett: no such run in .* \\(there are: unet\\)"),
                         (["--encoder", "resnet"], "--encoder resnet: no such run in .* \\(there are: tu-test_resnet\\)"),
                         (["--runs", "fpn-*"], f"--runs fpn-\\* matches no run in .* \\(there are: {RUN}\\)")):
        with pytest.raises(SystemExit, match=f"^infer: {error}$"):
            infer.main([*args, *flags])
    infer.main(args)
    printed = capsys.readouterr().out
    assert f"infer: leaving out {runs / 'demo' / RUN / 'fold1'}: no config.json (training never started there; " \
           f"holds train.log)" in printed
    assert "fold   0: Dice" in printed and "fold all" not in printed  # one fold of three: never "all"
