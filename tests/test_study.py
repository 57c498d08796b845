"""study.py end to end on tiny runs: the plan from the run folders, training, infer and ensemble, a rerun, a kill."""
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import study
from conftest import ROOT, TINY, paths
from src import study as plan_module

_i = TINY.index("--encoder")  # the study names the encoders
FLAGS = [*TINY[:_i], *TINY[_i + 2:], "--epochs", "1"]


def study_args(workdir, *args) -> list:
    return [*FLAGS, *paths(workdir), "--runs-dir", str(workdir / "runs"), "--preds-dir", str(workdir / "preds"),
            "--out-dir", str(workdir / "ensemble"), *args]


def with_data(demo_dir, tmp_path):
    """A workdir with its own runs/, preds/ and ensemble/ beside the shared demo data and folds."""
    for name in ("data", "folds"):
        (tmp_path / name).symlink_to(demo_dir / name)
    return tmp_path


def states(workdir, archs, encoders, folds) -> dict:
    flags = [*FLAGS, *paths(workdir), "--runs-dir", str(workdir / "runs")]
    cfg = plan_module.train_config(flags)
    return {(r.name, r.fold): r.state for r in plan_module.plan(cfg, archs, encoders, folds, flags)}


def test_dry_run_prints_each_runs_state_and_the_command_that_moves_it_on(demo_dir, tmp_path, capsys):
    workdir = with_data(demo_dir, tmp_path)
    runs = workdir / "runs" / "demo"
    done, resumable, failed, died = (runs / "unet-a" / "fold0", runs / "unet-a" / "fold1", runs / "unet-a" / "fold2",
                                     runs / "unet-b" / "fold0")
    for folder in (done, resumable / "state", failed, died):
        folder.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"dice": 0.9, "epochs_run": 3}))
    (resumable / "config.json").write_text("{}")
    (resumable / "state" / "trainer.json").write_text(json.dumps({"epoch": 2}))
    (failed / "config.json").write_text("{}")  # died in its first epoch
    (died / "train.log").write_text("train: unknown encoder\n")  # died before it started
    study.main(study_args(workdir, "--archs", "unet", "--encoders", "a,b", "--folds", "all", "--dry-run"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# demo: 1 archs x 2 encoders x 3 folds = 6 runs, 1 done, 1 resumable, 1 failed, 3 new"
    assert lines[1] == f"# done: {done}"
    train = f"python {plan_module.script('train.py')} {' '.join(FLAGS)} {' '.join(paths(workdir))} --runs-dir {workdir / 'runs'} --arch unet"
    assert lines[2] == f"{train} --encoder a --fold 1 --resume  # resumable"
    assert lines[3] == f"{train} --encoder a --fold 2 --overwrite  # failed"
    assert lines[4:7] == [f"{train} --encoder b --fold {k}  # new" for k in range(3)]
    infer, ensemble = plan_module.script("infer.py"), plan_module.script("ensemble.py")
    assert lines[7].startswith(f"# then: python {infer} --dataset demo --runs unet-a --folds 0,1,2 --tta none")
    assert lines[9].startswith(f"# then: python {ensemble} --dataset demo")
    assert not (workdir / "preds").exists() and not (runs / "unet-b" / "fold1").exists()  # nothing ran


def test_with_wandb_every_run_is_tagged_with_the_studys_name(demo_dir, tmp_path, capsys):
    workdir = with_data(demo_dir, tmp_path)
    study.main(study_args(workdir, "--archs", "unet", "--encoders", "a", "--folds", "0", "--dry-run", "--tracker",
                          "wandb", "--name", "encoders-v1"))
    assert "--tracker wandb --tags encoders-v1 --arch unet --encoder a --fold 0  # new" in capsys.readouterr().out
    study.main(study_args(workdir, "--archs", "unet", "--encoders", "a", "--folds", "0", "--dry-run", "--tracker",
                          "wandb", "--tags", "mine"))
    assert "--tags mine,demo-study --arch unet" in capsys.readouterr().out


def test_train_flags_the_study_sets_itself_are_refused(demo_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main(study_args(with_data(demo_dir, tmp_path), "--encoder", "resnet18", "--dry-run"))
    assert "--encoder is set by the study: use --encoders" in capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_study(demo_dir, tmp_path_factory):
    """Unet and Unet++ on folds 0 and 1 (ensemble.py tunes each fold on the others, so it needs two) with a good
    encoder and a misspelt one, two runs side by side: (workdir, output, exit code)."""
    workdir = with_data(demo_dir, tmp_path_factory.mktemp("study"))
    output, code = io.StringIO(), 0
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            study.main(study_args(workdir, "--archs", "unet,unetpp", "--encoders", "tu-resnet10t,tu-resnet10x",
                                  "--folds", "0,1", "--parallel", "2"))
        except SystemExit as stop:
            print(stop.code)
            code = exit_status(stop)
    return workdir, output.getvalue(), code


def exit_status(stop: SystemExit) -> int:
    """The status the interpreter gives a SystemExit: None is 0, a number itself, a message 1."""
    return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1


def started_and_ended(log) -> tuple:
    """(start, end) in seconds of a run's last attempt: its train.log's header line, and its last write."""
    header = re.findall(r"^== (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ", log.read_text(), re.MULTILINE)[-1]
    return time.mktime(time.strptime(header, "%Y-%m-%d %H:%M:%S")), log.stat().st_mtime


def test_a_failing_run_is_reported_with_its_log_and_the_others_are_trained_inferred_and_ensembled(finished_study):
    workdir, output, code = finished_study
    assert code == 1 and "study: 4 of 8 runs failed" in output  # sys.exit with the message: status 1
    assert "failed: unet-tu-resnet10x fold0 (new), exit code 1" in output
    assert "  | train: unknown timm encoder 'tu-resnet10x'" in output  # the end of its train.log
    assert "trained 4 of 8 runs in" in output and "training images/s over all runs" in output
    for name in ("unet-tu-resnet10t", "unetpp-tu-resnet10t"):
        assert (workdir / "preds" / "demo" / name / "tta-none" / "oof_scores.csv").exists()
    assert not (workdir / "preds" / "demo" / "unet-tu-resnet10x").exists()
    leaderboard = (workdir / "ensemble" / "demo" / "leaderboard.md").read_text()
    assert "unet-tu-resnet10t" in leaderboard and "unetpp-tu-resnet10t" in leaderboard
    assert f"leaderboard: {workdir / 'ensemble' / 'demo' / 'leaderboard.md'}" in output


def test_parallel_2_trains_two_runs_side_by_side(finished_study):
    workdir = finished_study[0]
    spans = [started_and_ended(log) for log in sorted(workdir.glob("runs/demo/*-tu-resnet10t/fold*/train.log"))]
    assert len(spans) == 4
    overlapping = [(a, b) for a in spans for b in spans if a < b and a[0] < b[1] and b[0] < a[1]]
    assert overlapping, spans  # one after another, no run would start before the one before it ended


def test_only_a_stage_that_exits_non_zero_is_a_problem_of_the_study():
    assert study.call(lambda argv: sys.exit(0), [], "infer.py") == []
    assert study.call(lambda argv: sys.exit(), [], "infer.py") == []
    assert study.call(lambda argv: sys.exit(2), [], "infer.py") == ["infer.py stopped"]
    assert study.call(lambda argv: sys.exit("infer: no runs"), [], "infer.py") == ["infer.py stopped"]


def test_a_failed_run_is_trained_again_with_overwrite(demo_dir, tmp_path):
    """A run that died before its first save (config.json, no state/) is started again with --overwrite."""
    workdir = with_data(demo_dir, tmp_path)
    run = workdir / "runs" / "demo" / "unet-tu-resnet10t" / "fold0"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "leftover.txt").write_text("from the attempt that died")
    assert states(workdir, ["unet"], ["tu-resnet10t"], [0]) == {("unet-tu-resnet10t", 0): "failed"}
    with contextlib.suppress(SystemExit):  # ensemble.py needs two folds; the training is what is tested here
        study.main(study_args(workdir, "--archs", "unet", "--encoders", "tu-resnet10t", "--folds", "0"))
    assert states(workdir, ["unet"], ["tu-resnet10t"], [0]) == {("unet-tu-resnet10t", 0): "done"}
    assert re.search(r"^== .* --overwrite$", (run / "train.log").read_text(), re.MULTILINE)
    assert not (run / "leftover.txt").exists()


def test_a_rerun_of_a_finished_study_trains_nothing_and_reaches_the_table(finished_study, capsys):
    workdir = finished_study[0]
    watched = [*workdir.glob("runs/demo/*/fold0/*"), *workdir.glob("preds/demo/*/tta-none/oof/*.npz")]
    before = {path: path.stat().st_mtime_ns for path in watched}
    start = time.time()
    study.main(study_args(workdir, "--archs", "unet,unetpp", "--encoders", "tu-resnet10t", "--folds", "0,1"))
    print(f"rerun of the finished study: {time.time() - start:.1f}s", file=sys.stderr)
    output = capsys.readouterr().out
    assert output.startswith("# demo: 2 archs x 1 encoders x 2 folds = 4 runs, 4 done\n")
    assert "local engine" not in output and "trained" not in output
    assert {path: path.stat().st_mtime_ns for path in watched} == before  # train.log, weights and predictions
    assert "leaderboard: " in output


def test_a_killed_study_continues_where_it_stopped(demo_dir, tmp_path):
    workdir = with_data(demo_dir, tmp_path)
    args = study_args(workdir, "--archs", "unet", "--encoders", "tu-resnet10t", "--folds", "0,1")
    args[args.index("--epochs") + 1] = "3"
    first, second = (workdir / "runs" / "demo" / "unet-tu-resnet10t" / f"fold{k}" for k in (0, 1))
    process = subprocess.Popen([sys.executable, "study.py", *args], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill it, and the training it started, once the first run is done and the second has a saved epoch
        while not (states(workdir, ["unet"], ["tu-resnet10t"], [0, 1]) == {
                ("unet-tu-resnet10t", 0): "done", ("unet-tu-resnet10t", 1): "resumable"}):
            assert process.poll() is None, "the study ended before it could be killed mid-run"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    first_weights = (first / "best.pt").stat().st_mtime_ns
    saved = json.loads((second / "state" / "trainer.json").read_text())["epoch"]
    kept = pd.read_csv(second / "history.csv").iloc[:saved]

    study.main(args)
    assert (first / "best.pt").stat().st_mtime_ns == first_weights  # the finished run was not trained again
    assert f"resuming {second} after epoch {saved}" in (second / "train.log").read_text()
    history = pd.read_csv(second / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(history.iloc[:saved], kept)  # the saved epochs were not trained again
    assert (workdir / "ensemble" / "demo" / "leaderboard.md").exists()
