"""--lr auto's range test: a rate inside its sweep, its curve, its cache, and nothing read from the scored fold."""
import hashlib
import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, paths

import train
from src import lr_find, study
from src.cache import open_cache
from src.canonical import load_index, load_meta
from src.config import Config
from src.folds import fold_rows, load_folds

STEPS = 12  # a sweep of a few steps: the tests check the machinery, not the curve's shape


def tiny_config(data_dir, fold=0) -> Config:
    return Config(dataset="demo", fold=fold, size=64, encoder="tu-test_resnet", encoder_weights="none",
                  decoder_channels="32,16,16,8,8", batch_size=4, aug="light", workers=0, data_dir=str(data_dir))


@pytest.fixture(scope="module")
def demo_arrays(demo_dir):
    dataset_dir = demo_dir / "data" / "demo"
    images, masks = open_cache(dataset_dir, 64)
    folds = load_folds(demo_dir / "folds", "demo")
    return load_meta(dataset_dir), load_index(dataset_dir), folds, np.array(images), np.array(masks)


def sweep(data_dir, arrays, fold=0, curve=None, images=None, masks=None):
    meta, index, folds, cached_images, cached_masks = arrays
    train_rows, valid_rows = fold_rows(index, folds, fold)
    images = cached_images if images is None else images
    masks = cached_masks if masks is None else masks
    return lr_find.find_lr(tiny_config(data_dir, fold), meta, train_rows, images, masks, "cpu", curve, steps=STEPS)


def test_lr_auto_chooses_a_rate_in_its_sweep_draws_it_and_reuses_it(demo_arrays, tmp_path, monkeypatch):
    lr, record = sweep(tmp_path, demo_arrays, curve=tmp_path / "run" / "lr_find.png")
    assert lr_find.START <= lr <= lr_find.END and not record["cached"]
    assert lr == max(lr_find.START, record["min_loss_lr"] / 10) and record["train_images"] == 24
    assert (tmp_path / "run" / "lr_find.png").stat().st_size > 10_000
    cached = tmp_path / "demo" / "lr" / f"{record['key']}.json"
    assert cached.exists() and record["key"].startswith("unet-tu-test_resnet-fold0-64px-b4-")

    def no_sweep(*args):
        raise AssertionError("the cached rate should have been reused")
    monkeypatch.setattr(lr_find, "range_test", no_sweep)
    again, record = sweep(tmp_path, demo_arrays, curve=tmp_path / "run2" / "lr_find.png")
    assert again == lr and record["cached"] and (tmp_path / "run2" / "lr_find.png").exists()
    with pytest.raises(AssertionError, match="reused"):  # another fold trains on other images: a sweep of its own
        sweep(tmp_path, demo_arrays, fold=1)


def test_lr_auto_reads_nothing_of_the_scored_fold(demo_arrays, tmp_path):
    _, index, folds, images, masks = demo_arrays
    _, valid_rows = fold_rows(index, folds, 0)
    lr, record = sweep(tmp_path / "a", demo_arrays)
    images, masks = images.copy(), masks.copy()
    images[valid_rows], masks[valid_rows] = 255 - images[valid_rows], 1 - masks[valid_rows]
    perturbed_lr, perturbed = sweep(tmp_path / "b", demo_arrays, images=images, masks=masks)
    assert (perturbed_lr, perturbed["losses"]) == (lr, record["losses"])


def test_train_lr_auto_trains_at_the_chosen_rate_reuses_it_and_resumes_at_it(demo_dir, tmp_path, monkeypatch):
    shutil.copytree(demo_dir / "data" / "demo", tmp_path / "data" / "demo")  # the sweep's cache goes into data/demo/lr
    shutil.copytree(demo_dir / "folds", tmp_path / "folds")
    monkeypatch.setattr(lr_find, "STEPS", STEPS)
    flags = [*TINY[:TINY.index("--lr")], "--lr", "auto", *TINY[TINY.index("--lr") + 2:], *paths(tmp_path),
             "--runs-dir", str(tmp_path / "runs"), "--epochs", "1"]
    run_dir = tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold0"
    train.main(flags)
    saved = json.loads((run_dir / "config.json").read_text())
    found = saved["lr_find"]
    assert lr_find.START <= saved["lr"] == found["lr"] <= lr_find.END and saved["sources"]["lr"] == "user"
    assert not found["cached"] and found["train_images"] == 24 and found["sweep"]["steps"] == STEPS
    assert (run_dir / lr_find.CURVE).stat().st_size > 10_000
    assert pd.read_csv(run_dir / "history.csv")["lr"][0] == pytest.approx(saved["lr"] / 2)  # warm-up's first epoch

    def no_sweep(*args):
        raise AssertionError("the cached rate should have been reused")
    monkeypatch.setattr(lr_find, "range_test", no_sweep)
    train.main([*flags, "--overwrite"])  # the same key: the cache's rate, its curve drawn again in the new folder
    again = json.loads((run_dir / "config.json").read_text())
    assert again["lr"] == saved["lr"] and again["lr_find"]["cached"] and (run_dir / lr_find.CURVE).exists()
    train.main([*flags[:flags.index("--epochs")], "--epochs", "2", "--resume"])  # not "lr 0.0x -> auto": its rate
    resumed = json.loads((run_dir / "config.json").read_text())
    assert (resumed["lr"], resumed["epochs"], resumed["lr_find"]["key"]) == (saved["lr"], 2, found["key"])
    study_flags = [*flags[:flags.index("--encoder")], *flags[flags.index("--encoder") + 2:flags.index("--epochs")],
                   "--epochs", "2"]  # a study asking --lr auto of the finished run: the rate it chose, not stale
    [run] = study.plan(study.train_config(study_flags), ["unet"], ["tu-test_resnet"], [0], study_flags)
    assert (run.run_dir, run.state) == (run_dir, "done")


def test_the_sweep_trains_the_runs_loss_and_effective_batch(demo_arrays, tmp_path):
    """--ds-weights, processes and --grad-accum change what the run's steps average, so they change the sweep and its
    cache key; each step of the sweep then accumulates the run's effective batch."""
    meta, index, folds, images, masks = demo_arrays
    train_rows, _ = fold_rows(index, folds, 0)
    ds = replace(tiny_config(tmp_path), arch="unetpp_ds", decoder_channels="16,16,8,8,8")

    def run(cfg, processes=1):
        by = {"processes": processes} if processes > 1 else {}
        return lr_find.find_lr(cfg, meta, train_rows, images, masks, "cpu", steps=3, **by)[1]
    first, last = (run(replace(ds, ds_weights=w)) for w in ("1,0,0,0", "0,0,0,1"))
    assert first["key"] != last["key"] and first["losses"] != last["losses"]  # L1's loss is not L4's
    plain, accumulated, two = run(tiny_config(tmp_path)), run(replace(tiny_config(tmp_path), grad_accum=2)), \
        run(tiny_config(tmp_path), processes=2)
    assert plain["batch"]["a_step"] == 4 and accumulated["batch"]["a_step"] == two["batch"]["a_step"] == 8
    assert accumulated["losses"] != plain["losses"] and accumulated["losses"] == two["losses"]  # 8 images a step
    assert len({plain["key"], accumulated["key"], two["key"]}) == 3 and two["key"].split("-")[-2] == "b4x2"


@pytest.mark.parametrize("constant, value", [("SMOOTHING", 0.8), ("DIVERGED", 3.0), ("BELOW_MINIMUM", 5)])
def test_a_changed_rule_constant_is_a_new_cache_key(demo_arrays, monkeypatch, constant, value):
    _, index, folds, _, _ = demo_arrays
    train_rows, _ = fold_rows(index, folds, 0)
    before = lr_find.cache_key(tiny_config("data"), train_rows, STEPS, lr_find.START, lr_find.END)
    monkeypatch.setattr(lr_find, constant, value)
    assert lr_find.cache_key(tiny_config("data"), train_rows, STEPS, lr_find.START, lr_find.END) != before


def test_the_sweep_trains_the_runs_loss_and_keys_it(demo_arrays, tmp_path):
    """--loss lovasz sweeps the Lovász hinge under a key of its own; the default loss keeps the keys cached before
    --loss existed (no loss in their digest)."""
    meta, index, folds, images, masks = demo_arrays
    train_rows, _ = fold_rows(index, folds, 0)
    default, lovasz = (lr_find.find_lr(replace(tiny_config(tmp_path), loss=loss), meta, train_rows, images, masks,
                                       "cpu", steps=3)[1] for loss in ("auto", "lovasz"))
    assert default["key"] != lovasz["key"] and default["losses"] != lovasz["losses"]
    settings = {k: getattr(tiny_config(tmp_path), k) for k in lr_find.CURVE_SETTINGS}
    rule = {"smoothing": lr_find.SMOOTHING, "diverged": lr_find.DIVERGED, "below_minimum": lr_find.BELOW_MINIMUM}
    blob = json.dumps([settings, 1, 3, lr_find.START, lr_find.END, rule, sorted(train_rows.tolist())], sort_keys=True)
    assert default["key"].endswith(hashlib.sha256(blob.encode()).hexdigest()[:10])  # the digest as before --loss
