"""The estimated wall time: train.py's after its first epoch, study.py's once one of its runs has timed an epoch."""
import re
import time

import pandas as pd
from conftest import TINY, paths

import train
from src import estimate


def test_train_says_how_long_the_run_will_take_after_its_first_epoch(demo_dir, tmp_path, capsys):
    train.main([*TINY, *paths(demo_dir), "--runs-dir", str(tmp_path / "runs"), "--epochs", "3"])
    printed = capsys.readouterr().out
    row = pd.read_csv(tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold0" / "history.csv").iloc[0]
    first = row["train_seconds"] + row["val_seconds"] + row["save_seconds"]  # the loader's start-up left out
    said = re.search(r"~ (\d+) s for 3 epochs on this CPU \(epoch 1 took (\d+) s besides its start-up\); --epochs to "
                     r"shorten", printed)
    assert said and int(said[2]) == round(first) and abs(int(said[1]) - 3 * first) <= 1
    assert printed.index("epoch 1:") < said.start() < printed.index("epoch 2:")  # once, as soon as it is known
    assert printed.count("--epochs to shorten") == 1


def test_a_study_says_how_long_all_its_runs_will_take_once_one_has_timed_an_epoch(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(estimate, "POLL_SECONDS", 0.05)
    run_dirs = [tmp_path / "runs" / "demo" / f"unet-resnet34/fold{k}" for k in range(10)]
    with estimate.StudyEstimate(run_dirs, 56, 560, 1, "CPU") as timed:
        run_dirs[3].mkdir(parents=True)
        pd.DataFrame({"epoch": [1], "seconds": [65.0], "other_seconds": [8.0]}).to_csv(run_dirs[3] / "history.csv",
                                                                                      index=False)
        timed.thread.join(5)
    assert capsys.readouterr().out == ("~ 8.9 h for 10 runs x 56 epochs on the CPU (unet-resnet34 fold3's epoch 1 "
                                       "took 57 s; other archs and encoders take their own); --epochs to shorten\n")
    assert estimate.StudyEstimate(run_dirs[:2], 56, 60, 2, "GPU 0,1").line(run_dirs[3], 1, 60.0) == (
        "~ 30 min for 2 runs, 60 epochs left on the GPU 0,1, 2 at a time (unet-resnet34 fold3's epoch 1 took "
        "60 s; other archs and encoders take their own); --epochs to shorten")


def test_a_resumed_study_times_an_epoch_of_its_own_not_one_from_before(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(estimate, "POLL_SECONDS", 0.05)
    run_dirs = [tmp_path / f"unet-resnet34/fold{k}" for k in range(2)]
    for run_dir in run_dirs:  # epoch 1 of each, timed in an earlier session beside other work
        run_dir.mkdir(parents=True)
        pd.DataFrame({"epoch": [1], "seconds": [1280.0], "other_seconds": [4.0]}).to_csv(run_dir / "history.csv",
                                                                                       index=False)
    with estimate.StudyEstimate(run_dirs, 20, 38, 1, "CPU") as timed:
        time.sleep(0.2)  # polled: nothing new, nothing said
        pd.DataFrame({"epoch": [1, 2], "seconds": [1280.0, 265.0], "other_seconds": [4.0, 0.0]}).to_csv(  # resumed
            run_dirs[1] / "history.csv", index=False)
        timed.thread.join(5)
    assert "~ 2.8 h for 2 runs, 38 epochs left on the CPU (unet-resnet34 fold1's epoch 2 took 265 s" in (
        capsys.readouterr().out)
    with estimate.StudyEstimate(run_dirs[:1], 20, 20, 1, "CPU") as timed:
        pd.DataFrame({"epoch": [1], "seconds": [300.0], "other_seconds": [20.0]}).to_csv(  # trained again from scratch
            run_dirs[0] / "history.csv", index=False)
        timed.thread.join(5)
    assert "fold0's epoch 1 took 280 s" in capsys.readouterr().out
