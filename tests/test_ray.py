"""The Ray engine: a local Ray trains a study's runs, a signal stops them saved, a wrong address ends in one line.

One module, so that one test process runs them one after the other: a Ray started by one test would answer another's
`--address auto` (the suite runs modules side by side, pytest.ini)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY, paths
from src import engine, study
from test_study import epochs_in, start_study, states, study_args, with_data

RAY = "ray is not installed (pip install -r requirements.txt installs it)"


def test_a_wrong_ray_address_ends_within_a_minute_with_one_line(demo_dir, tmp_path):
    pytest.importorskip("ray", reason=RAY)
    i = TINY.index("--encoder")
    flags = [*paths(demo_dir), "--runs-dir", str(tmp_path / "runs"), *TINY[:i], *TINY[i + 2:], "--epochs", "1"]
    for address, said in (("127.0.0.1:9", "no Ray cluster answers at --address 127.0.0.1:9: start one there with "
                                           "`ray start --head`"),
                          ("auto", "no Ray cluster found for --address auto: start one with `ray start --head`")):
        done = subprocess.run([sys.executable, "study.py", *flags, "--archs", "unet", "--encoders", "tu-test_resnet",
                               "--folds", "0", "--engine", "ray", "--address", address], cwd=ROOT, timeout=60,
                              capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
        assert done.returncode == 1 and done.stderr.startswith(f"study: {said}"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr + done.stdout


def test_ray_engine_runs_two_tiny_trainings_on_a_local_ray(demo_dir, tmp_path):
    ray = pytest.importorskip("ray", reason=RAY)
    i = TINY.index("--encoder")  # the plan names the encoder
    flags = [*paths(demo_dir), "--runs-dir", str(tmp_path / "runs"), *TINY[:i], *TINY[i + 2:], "--epochs", "1"]
    runs = study.plan(study.train_config(flags), ["unet"], ["tu-test_resnet"], [0, 1], flags)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = engine.run_on_ray([engine.Job(r.name, r.command, r.log) for r in runs], None, runs_per_gpu=1)
    finally:
        ray.shutdown()
    assert [r.ok for r in results] == [True, True], [r.tail() for r in results]
    again = study.plan(study.train_config(flags), ["unet"], ["tu-test_resnet"], [0, 1], flags)
    assert [r.state for r in again] == ["done", "done"]
    assert all("last.pt (epoch 1, --select-on final)" in r.log.read_text() for r in again)


def test_under_ray_a_signal_stops_the_study_its_runs_save_and_a_rerun_resumes_them(demo_dir, tmp_path):
    pytest.importorskip("ray", reason=RAY)
    workdir = with_data(demo_dir, tmp_path)
    args = study_args(workdir, "--archs", "unet", "--encoders", "tu-test_resnet", "--folds", "0,1", "--engine", "ray")
    args[args.index("--epochs") + 1] = "8"
    runs = [workdir / "runs" / "demo" / "unet-tu-test_resnet" / f"fold{k}" for k in (0, 1)]
    process = start_study(args)  # a local Ray of 2 CPUs: both runs at once
    while not all(epochs_in(run) >= 1 for run in runs):
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGINT)  # Ctrl-C to the driver
    out, err = process.communicate(timeout=180)
    assert process.returncode == 128 + signal.SIGINT and "Traceback" not in out + err, out + err
    assert "unet-tu-test_resnet fold0: stopped (resumable)" in out and "study: stopped by SIGINT" in out
    for run in runs:  # each finished its epoch, saved it, and is planned to go on from there
        assert json.loads((run / "state" / "trainer.json").read_text())["epoch"] == epochs_in(run) < 8
        assert "train: stopped by SIGINT after epoch" in (run / "train.log").read_text()
    assert set(states(workdir, ["unet"], ["tu-test_resnet"], [0, 1]).values()) == {"resumable"}
