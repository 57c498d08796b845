"""study.py end to end on tiny runs: the plan from the run folders, training, infer and ensemble, a rerun, a kill."""
import contextlib
import dataclasses
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
from conftest import ROOT, TINY, paths, wandb_records
from src import estimate
from src import study as plan_module
from src.canonical import load_meta
from src.folds import fingerprint

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


@pytest.fixture
def encoders_known(monkeypatch):
    """The encoder check (a child process that loads torch) left out where a test is about something else."""
    monkeypatch.setattr(plan_module, "encoder_problems", lambda *args: [])


def test_dry_run_prints_each_runs_state_and_the_command_that_moves_it_on(demo_dir, tmp_path, capsys, encoders_known):
    workdir = with_data(demo_dir, tmp_path)
    runs = workdir / "runs" / "demo"
    a, b = "tu-test_resnet", "tu-resnet14t"
    done, resumable, failed, died = (runs / f"unet-{a}" / "fold0", runs / f"unet-{a}" / "fold1",
                                     runs / f"unet-{a}" / "fold2", runs / f"unet-{b}" / "fold0")
    for folder in (resumable / "state", failed, died):
        folder.mkdir(parents=True)
    cfg = dataclasses.replace(plan_module.train_config([*FLAGS, *paths(workdir), "--runs-dir", str(workdir / "runs")]),
                              arch="unet", encoder=a, fold=0)
    done.mkdir(parents=True)
    cfg.save(done / "config.json", meta=load_meta(cfg.dataset_dir), folds=fingerprint(cfg.folds_dir, cfg.dataset))
    (done / "metrics.json").write_text(json.dumps({"dice": 0.9, "epochs_run": 3}))
    (resumable / "config.json").write_text("{}")
    (resumable / "state" / "trainer.json").write_text(json.dumps({"epoch": 2}))
    (failed / "config.json").write_text("{}")  # died in its first epoch
    (died / "train.log").write_text("train: unknown encoder\n")  # died before it started
    study.main(study_args(workdir, "--archs", "unet", "--encoders", f"{a},{b}", "--folds", "all", "--dry-run"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# demo: 1 archs x 2 encoders x 3 folds = 6 runs, 1 done, 1 resumable, 1 failed, 3 new"
    assert lines[1] == f"# done: {done}"
    train = f"python {plan_module.script('train.py')} {' '.join(FLAGS)} {' '.join(paths(workdir))} --runs-dir {workdir / 'runs'} --arch unet"
    assert lines[2] == f"{train} --encoder {a} --fold 1 --resume  # resumable"
    assert lines[3] == f"{train} --encoder {a} --fold 2 --overwrite  # failed"
    assert lines[4:7] == [f"{train} --encoder {b} --fold {k}  # new" for k in range(3)]
    infer, ensemble = plan_module.script("infer.py"), plan_module.script("ensemble.py")
    assert lines[7].startswith(f"# then: python {infer} --dataset demo --runs unet-{a} --folds 0,1,2 --tta none "
                               f"--checkpoint selected")
    assert lines[9].startswith(f"# then: python {ensemble} --dataset demo --runs unet-{a},unet-{b} --tta none "
                               f"--checkpoint selected --name demo-unet-{a}+{b}")
    assert not (workdir / "preds").exists() and not (runs / f"unet-{b}" / "fold1").exists()  # nothing ran


def test_several_tta_modes_are_each_inferred_and_the_ensemble_chooses_among_them(demo_dir, tmp_path, capsys,
                                                                                 encoders_known):
    workdir = with_data(demo_dir, tmp_path)
    study.main(study_args(workdir, "--archs", "unet", "--encoders", "tu-test_resnet", "--folds", "all", "--dry-run",
                          "--tta", "none,flip"))
    then = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# then:")]
    assert [re.search(r"--tta (\S+)", line)[1] for line in then] == ["none", "flip", "best"]
    with pytest.raises(SystemExit):
        study.main(study_args(workdir, "--tta", "none,flips", "--dry-run"))
    assert "--tta none,flips: give none, flip or d4, or several comma-separated" in capsys.readouterr().err


def test_both_architectures_of_an_encoder_and_fold_are_planned_side_by_side(demo_dir, tmp_path):
    flags = [*FLAGS, *paths(with_data(demo_dir, tmp_path)), "--runs-dir", str(tmp_path / "runs")]
    runs = plan_module.plan(plan_module.train_config(flags), ["unet", "unetpp"], ["a", "b"], [0, 1], flags)
    assert [(r.encoder, r.fold, r.arch) for r in runs[:4]] == [("a", 0, "unet"), ("a", 0, "unetpp"), ("a", 1, "unet"),
                                                              ("a", 1, "unetpp")]


def test_with_wandb_every_run_is_tagged_with_the_studys_name(demo_dir, tmp_path, capsys, encoders_known):
    workdir = with_data(demo_dir, tmp_path)
    study.main(study_args(workdir, "--archs", "unet", "--encoders", "tu-test_resnet", "--folds", "0", "--dry-run",
                          "--tracker", "wandb", "--name", "encoders-v1"))
    assert "--tracker wandb --tags encoders-v1 --arch unet --encoder tu-test_resnet --fold 0  # new" in \
        capsys.readouterr().out
    study.main(study_args(workdir, "--archs", "unet", "--encoders", "tu-test_resnet", "--folds", "0", "--dry-run",
                          "--tracker", "wandb", "--tags", "mine"))
    assert "--tags mine,demo-unet-tu-test_resnet --arch unet" in capsys.readouterr().out  # each study its own name


def test_train_flags_the_study_sets_itself_are_refused(demo_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main(study_args(workdir := with_data(demo_dir, tmp_path), "--encoder", "resnet18", "--dry-run"))
    assert "--encoder is set by the study: use --encoders" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # before any run starts: every one would fail on it
        study.main(study_args(workdir, "--patch", "96", "--dry-run"))
    assert "--patch 96 is not between 0 and --size 64" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^study: --folds 0,x: give all, or fold numbers separated by commas, e\.g\. "
                                         r"0,2 \(the file has \[0, 1, 2\]\)$"):
        study.main(study_args(tmp_path, "--folds", "0,x", "--dry-run"))


@pytest.fixture(scope="module")
def finished_study(demo_dir, tmp_path_factory):
    """Unet and Unet++ on folds 0 and 1 (ensemble.py tunes each fold on the others, so it needs two), two runs side
    by side: (workdir, output, exit code)."""
    workdir = with_data(demo_dir, tmp_path_factory.mktemp("study"))
    index = pd.read_csv(workdir / "data" / "demo" / "index.csv", dtype={"id": str})
    (workdir / "sample_submission.csv").write_text("ImageId,EncodedPixels\n" + "".join(
        f"{i},\n" for i in sorted(index.loc[index["split"] == "test", "id"], reverse=True)))
    output, code = io.StringIO(), 0
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output), pytest.MonkeyPatch.context() as patch:
        patch.setattr(plan_module, "encoder_problems", lambda *args: [])  # as encoders_known, for the module
        patch.setattr(estimate, "POLL_SECONDS", 0.05)
        try:  # W&B offline: the W&B test reads what every stage logged
            study.main(study_args(workdir, "--archs", "unet,unetpp", "--encoders", "tu-test_resnet", "--folds", "0,1",
                                  "--parallel", "2", "--tta", "none,flip", "--tracker", "wandb", "--export",
                                  "--sample-submission", str(workdir / "sample_submission.csv")))
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


def test_every_wandb_run_of_a_study_carries_its_tag_and_model_keys_where_the_sync_paths_find_it(finished_study):
    """What the docs' W&B example relies on: the `wandb sync` paths it gives find every offline run of the study, and
    each run (train, infer, ensemble) is in project = dataset with the study's tag and arch, encoder and fold keys."""
    workdir, tag = finished_study[0], "demo-unet+unetpp-tu-test_resnet"  # the study's default name is its tag
    sync_paths = ["runs/demo/*/fold*/wandb", "preds/demo/*/tta-*/wandb", f"ensemble/demo/{tag}/wandb"]
    offline = [run for path in sync_paths for run in sorted(workdir.glob(f"{path}/offline-run-*"))]
    assert len(offline) == len(list(workdir.rglob("offline-run-*"))) == 4 + 4 + 1  # 4 folds trained, x 2 TTA, 1
    found = {}
    for folder in offline:
        records = list(wandb_records(next(folder.glob("run-*.wandb"))))
        run = next(r.run for r in records if r.HasField("run"))
        updates = [run.config] + [r.config for r in records if r.HasField("config")]  # wandb.init's, then later ones
        config = {item.key or item.nested_key[0]: json.loads(item.value_json) for u in updates for item in u.update}
        found[(run.job_type, run.run_group, run.display_name)] = (run.project, list(run.tags), config)
    for (job, group, name), (project, tags, config) in found.items():
        assert project == "demo" and tag in tags and {"arch", "encoder", "fold"} <= set(config), (job, name)
    inferred = {group: config for (job, group, _), (_, _, config) in found.items() if job == "infer"}
    assert {g: (c["arch"], c["encoder"], c["fold"]) for g, c in inferred.items()} == {
        "unet-tu-test_resnet": ("unet", "tu-test_resnet", [0, 1]), "unetpp-tu-test_resnet": ("unetpp", "tu-test_resnet", [0, 1])}
    [ensembled] = [config for (job, _, _), (_, _, config) in found.items() if job == "ensemble"]
    assert (ensembled["arch"], ensembled["encoder"], ensembled["fold"]) == (["unet", "unetpp"], ["tu-test_resnet"], [0, 1])


def test_the_study_packages_its_ensemble_at_the_end_with_export(finished_study):
    workdir, output, code = finished_study
    package = workdir / "export" / "demo" / "demo-unet+unetpp-tu-test_resnet"
    manifest = json.loads((package / "manifest.json").read_text())
    assert code == 0 and manifest["format"] == "torch" and {m["fold"] for m in manifest["models"]} == {0, 1}
    assert f"parity: 4 of 4 test masks identical to {workdir / 'ensemble' / 'demo' / package.name / 'masks'}" \
        in output
    submission = (workdir / "ensemble" / "demo" / package.name / "submission.csv").read_text().splitlines()
    sample = (workdir / "sample_submission.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in submission] == [row.split(",")[0] for row in sample]  # its rows and columns,
    assert submission[0] == "ImageId,EncodedPixels"  # given on by the study


def test_the_study_says_how_long_its_runs_will_take_once_one_has_timed_an_epoch(finished_study):
    said = [line for line in finished_study[1].splitlines() if "--epochs to shorten" in line]
    assert len(said) == 1 and re.fullmatch(r"~ \d+ (s|min) for 4 runs x 1 epochs on the CPU, 2 at a time \(\S+ fold\d's "
                                           r"epoch 1 took \d+ s; other archs and encoders take their own\); "
                                           r"--epochs to shorten", said[0]), said


def test_a_study_trains_infers_and_ensembles_its_runs_into_a_leaderboard_of_its_own(finished_study):
    workdir, output, code = finished_study
    assert code == 0, output
    assert "trained 4 of 4 runs in" in output and "training images/s over all runs" in output
    for name in ("unet-tu-test_resnet", "unetpp-tu-test_resnet"):
        for tta in ("none", "flip"):
            assert (workdir / "preds" / "demo" / name / f"tta-{tta}" / "oof_scores.csv").exists()
        assert json.loads((workdir / "runs" / "demo" / name / "fold0" / "config.json").read_text()
                          )["runs_sharing_device"] in (1, 2)
    leaderboard = workdir / "ensemble" / "demo" / "demo-unet+unetpp-tu-test_resnet" / "leaderboard.md"
    assert "unet-tu-test_resnet" in leaderboard.read_text() and "unetpp-tu-test_resnet" in leaderboard.read_text()
    assert "| model | images | none | flip |" in leaderboard.read_text()  # the TTA comparison of --tta none,flip
    # The leaderboard's answers, printed last where the terminal shows them (ensemble.py printed them before).
    answers = leaderboard.read_text().splitlines()[1:5]
    assert output.splitlines()[-5:] == [f"leaderboard: {leaderboard}", *answers]
    assert answers[0].startswith("- Best model: ") and answers[2].startswith("- Unet++ vs Unet, tu-test_resnet: ")


def test_parallel_2_trains_two_runs_side_by_side(finished_study):
    workdir = finished_study[0]
    spans = [started_and_ended(log) for log in sorted(workdir.glob("runs/demo/*-tu-test_resnet/fold*/train.log"))]
    assert len(spans) == 4
    overlapping = [(a, b) for a in spans for b in spans if a < b and a[0] < b[1] and b[0] < a[1]]
    assert overlapping, spans  # one after another, no run would start before the one before it ended


def test_only_a_stage_that_exits_non_zero_is_a_problem_of_the_study():
    assert plan_module.call(lambda argv: sys.exit(0), []) == ""
    assert plan_module.call(lambda argv: sys.exit(), []) == ""
    assert plan_module.call(lambda argv: sys.exit(2), []) == "exit code 2 (its message is above)"
    assert plan_module.call(lambda argv: sys.exit("infer: no runs"), []) == "infer: no runs"


def test_a_failed_run_is_trained_again_with_overwrite_and_its_old_log_goes_aside(demo_dir, tmp_path, capsys,
                                                                                   encoders_known):
    """A run that died before its first save (config.json, no state/) is started again with --overwrite; what the
    attempt that died left, its train.log with the rest, is in replaced/, and the new train.log holds the new one.
    The study of that one fold trains and infers it, and says why there is no ensemble (one study: one training)."""
    workdir = with_data(demo_dir, tmp_path)
    run = workdir / "runs" / "demo" / "unet-tu-test_resnet" / "fold0"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "leftover.txt").write_text("from the attempt that died")
    (run / "train.log").write_text("\n== 2026-01-01 00:00:00 python train.py\nKilled\n")
    assert states(workdir, ["unet"], ["tu-test_resnet"], [0]) == {("unet-tu-test_resnet", 0): "failed"}
    study.main(study_args(workdir, "--archs", "unet", "--encoders", "tu-test_resnet", "--folds", "0"))  # exits 0
    assert states(workdir, ["unet"], ["tu-test_resnet"], [0]) == {("unet-tu-test_resnet", 0): "done"}
    log = (run / "train.log").read_text()
    assert re.match(r"\n== .* --overwrite\n", log) and "Killed" not in log
    aside, = run.parent.glob("replaced/fold0-*")
    assert (aside / "train.log").read_text().endswith("Killed\n") and (aside / "leftover.txt").exists()
    assert not (run / "leftover.txt").exists()
    output = capsys.readouterr().out
    assert "ensemble skipped: ensemble.py tunes each fold on the others and needs two folds or more" in output
    assert "leaderboard" not in output and not (workdir / "ensemble").exists()
    assert (workdir / "preds" / "demo" / "unet-tu-test_resnet" / "tta-none" / "oof_scores.csv").exists()


HOLD = """import sys, time
from pathlib import Path
from src.runs import RunLock
assert RunLock(Path(sys.argv[1])).acquire() is None
(Path(sys.argv[1]) / "config.json").write_text("{}")
print("held", flush=True); sys.stdin.read()
"""


def test_a_study_that_planned_a_run_failed_leaves_it_alone_once_another_process_trains_it(demo_dir, tmp_path):
    """The plan can be seconds old: a run planned failed may meanwhile be trained by a second study. Only train.py
    --overwrite, under the run's lock, moves a run aside; here it is refused and the live run keeps every file."""
    workdir = with_data(demo_dir, tmp_path)
    run_dir = workdir / "runs" / "demo" / "unet-tu-test_resnet" / "fold0"
    args = study_args(workdir, "--archs", "unet", "--encoders", "tu-test_resnet", "--folds", "0")
    planned, = plan_module.plan(study.parse_args(args)[2], ["unet"], ["tu-test_resnet"], [0], study.parse_args(args)[1])
    live = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "held\n"
        run = dataclasses.replace(planned, state="failed", command=[*planned.command, "--overwrite"])
        result, = study.train(study.parse_args(args)[0], [run])[0]
        assert not result.ok and "is being trained by another process" in result.tail()[-1]
        assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "train.lock", "train.log"]
        assert not (run_dir.parent / "replaced").exists()
    finally:
        live.communicate("")


def test_a_rerun_of_a_finished_study_trains_nothing_and_reaches_the_table(finished_study, capsys):
    workdir = finished_study[0]
    watched = [*workdir.glob("runs/demo/*/fold0/*"), *workdir.glob("preds/demo/*/tta-none/oof/*.npz")]
    before = {path: path.stat().st_mtime_ns for path in watched if path.name != "train.lock"}
    study.main(study_args(workdir, "--archs", "unet,unetpp", "--encoders", "tu-test_resnet", "--folds", "0,1", "--tta",
                          "none,flip"))
    output = capsys.readouterr().out
    assert output.startswith("# demo: 2 archs x 1 encoders x 2 folds = 4 runs, 4 done\n")
    assert "local engine" not in output and "trained" not in output
    assert {path: path.stat().st_mtime_ns for path in before} == before  # train.log, weights and predictions
    assert "leaderboard: " in output


def test_a_study_on_another_runs_dir_never_predicts_over_the_first_studys_predictions(finished_study):
    """preds/ and ensemble/ serve one runs directory: a second study of the same grid on --runs-dir runs-b is told,
    before it trains, to give its runs a --preds-dir of their own, and its ensemble an --out-dir or --name."""
    import shutil
    import infer
    workdir = finished_study[0]
    shutil.copytree(workdir / "runs", workdir / "runs-b")
    args = study_args(workdir, "--archs", "unet,unetpp", "--encoders", "tu-test_resnet", "--folds", "0,1")
    args[args.index("--runs-dir") + 1] = str(workdir / "runs-b")
    preds = workdir / "preds"
    before = {p: p.stat().st_mtime_ns for p in preds.rglob("*")}
    first = (workdir / "runs" / "demo" / "unet-tu-test_resnet").resolve()
    with pytest.raises(SystemExit, match=rf"^study: {preds}/demo/unet-tu-test_resnet holds the predictions of {first}, "
                                         rf"not of .*runs-b/demo/unet-tu-test_resnet: give the runs of .*runs-b a "
                                         rf"--preds-dir \(and an ensemble --out-dir\) of their own$"):
        study.main(args)
    with pytest.raises(SystemExit, match=rf"^infer: {preds}/demo/unet-tu-test_resnet holds the predictions of {first}"):
        infer.main(["--dataset", "demo", "--runs-dir", str(workdir / "runs-b"), *paths(workdir), "--preds-dir",
                    str(preds)])
    assert {p: p.stat().st_mtime_ns for p in preds.rglob("*")} == before
    board = workdir / "ensemble" / "demo" / "demo-unet+unetpp-tu-test_resnet" / "leaderboard.md"
    text = board.read_text()
    args[args.index("--preds-dir") + 1] = str(workdir / "preds-b")
    with pytest.raises(SystemExit, match=r"ensemble\.py failed: ensemble: .* holds the ensemble of .* from "
                                         rf"{preds}; write this one \(.* from {workdir / 'preds-b'}\) to its own"):
        study.main(args)
    assert board.read_text() == text


def test_a_study_with_unetpp_ds_infers_its_levels_and_compares_all_three_per_encoder(finished_study, capsys):
    workdir = finished_study[0]  # its Unet and Unet++ runs are done: only the two unetpp_ds runs train, side by side
    study.main(study_args(workdir, "--archs", "unet,unetpp,unetpp_ds", "--encoders", "tu-test_resnet", "--folds", "0,1",
                          "--parallel", "2"))
    output = capsys.readouterr().out
    assert output.startswith("# demo: 3 archs x 1 encoders x 2 folds = 6 runs, 4 done, 2 new\n")
    preds = workdir / "preds" / "demo"
    assert (preds / "unetpp_ds-tu-test_resnet" / "tta-none-L1" / "oof_scores.csv").exists()  # --level all for it only
    assert not list(preds.glob("unet-*/tta-none-*")) and not list(preds.glob("unetpp-*/tta-none-*"))
    out = workdir / "ensemble" / "demo" / "demo-unet+unetpp+unetpp_ds-tu-test_resnet"
    scores = json.loads((out / "scores.json").read_text())
    pairs = [(c["baseline"], c["challenger"]) for c in scores["comparisons"]]
    assert pairs == [("unet", "unetpp"), ("unet", "unetpp_ds"), ("unetpp", "unetpp_ds")]
    assert all(c["p_holm"] >= c["wilcoxon_p"] for c in scores["comparisons"])  # adjusted over the three together
    row, = scores["by_encoder"]
    assert row["archs"] == ["unet", "unetpp", "unetpp_ds"]
    assert row["unetpp_ds_level"] in ("L1", "L2", "L3", "L4", "mean")
    assert row["unetpp_ds-unetpp_difference"] == scores["comparisons"][2]["mean_difference"]
    assert set(row["unetpp_ds_levels"]) == {"L1", "L2", "L3", "L4", "mean"}
    board = (out / "leaderboard.md").read_text()
    assert "Unet++ vs Unet, Unet++ DS vs Unet, Unet++ DS vs Unet++, both on the same images" in board
    assert ("| encoder | params M (Unet / Unet++ / Unet++ DS) | Unet raw Dice | Unet raw IoU | Unet++ raw Dice | "
            "Unet++ raw IoU | Unet++ DS raw Dice | Unet++ DS raw IoU | Unet++ - Unet [95% CI] | Wilcoxon p (Holm) | "
            "Unet++ DS - Unet [95% CI] | Wilcoxon p (Holm) | Unet++ DS - Unet++ [95% CI] | Wilcoxon p (Holm) |"
            ) in board
    assert "| tu-test_resnet | L1 | " in board and (out / "study.png").stat().st_size > 0
    # The first study again, beside the unetpp_ds runs and their predictions: it ensembles its own grid's runs only.
    study.main(study_args(workdir, "--archs", "unet,unetpp", "--encoders", "tu-test_resnet", "--folds", "0,1", "--tta",
                          "none,flip"))
    first = out.parent / "demo-unet+unetpp-tu-test_resnet"
    assert json.loads((first / "selection.json").read_text())["found"] == ["unet-tu-test_resnet", "unetpp-tu-test_resnet"]
    assert list(json.loads((first / "scores.json").read_text())["runs"]) == ["unet-tu-test_resnet", "unetpp-tu-test_resnet"]


def test_a_misspelt_encoder_and_one_only_unetpp_ds_refuses_stop_the_study_before_any_run_starts(demo_dir, tmp_path,
                                                                                              monkeypatch):
    workdir = with_data(demo_dir, tmp_path)  # one study, one check of both architectures, both problems in one line
    children, popen = [], subprocess.Popen.__init__
    monkeypatch.setattr(subprocess.Popen, "__init__",
                        lambda self, args, *a, **k: children.append(args[0]) or popen(self, args, *a, **k))
    with pytest.raises(SystemExit, match="^study: unknown timm encoder 'tu-resnet10x'.*; unetpp_ds cannot be built on "
                                         "encoder 'tu-convnext_atto'.*checked before any run"):
        study.main(study_args(workdir, "--archs", "unet,unetpp_ds", "--encoders",
                              "tu-test_resnet,tu-resnet10x,tu-convnext_atto", "--folds", "0"))
    assert not (workdir / "runs").exists() and sys.executable not in children  # checked in the study's own process


def test_any_failure_of_a_stage_becomes_one_line_for_the_summary():
    def truncated(argv):
        raise EOFError("Ran out of input")
    assert plan_module.call(truncated, []) == "EOFError: Ran out of input"
    assert plan_module.call(lambda argv: sys.exit("infer: no runs"), []) == "infer: no runs"
    assert plan_module.call(lambda argv: None, []) == ""


def start_study(args) -> subprocess.Popen:
    """study.py as a terminal starts it: SIGINT at its default, in a process group of its own (Ctrl-C's target)."""
    return subprocess.Popen([sys.executable, "study.py", *args], cwd=ROOT, start_new_session=True, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def epochs_in(run_dir) -> int:
    history = run_dir / "history.csv"
    return len(pd.read_csv(history)) if history.exists() else 0


def test_a_signal_stops_the_study_its_runs_save_and_the_same_command_continues(demo_dir, tmp_path):
    workdir = with_data(demo_dir, tmp_path)
    args = study_args(workdir, "--archs", "unet", "--encoders", "tu-test_resnet", "--folds", "0,1,2", "--parallel", "2")
    args[args.index("--epochs") + 1] = "1000"  # no run may reach its last epoch (which finishes it) while the test waits
    first = [workdir / "runs" / "demo" / "unet-tu-test_resnet" / f"fold{k}" for k in (0, 1)]  # two side by side
    later = [workdir / "runs" / "demo" / "unet-tu-test_resnet" / "fold2"]  # waiting for a free place

    def stop_when(process, ready, send, signum):
        while not ready():
            assert process.poll() is None, process.communicate()
            time.sleep(0.1)
        send(signum)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 128 + signum, out + err
        assert "Traceback" not in out + err
        return out

    # SIGTERM to the study's process alone (docker stop, kill PID): its runs save after their epoch and stop.
    process = start_study(args)
    out = stop_when(process, lambda: all(epochs_in(run) >= 1 for run in first), lambda s: os.kill(process.pid, s),
                    signal.SIGTERM)
    assert "unet-tu-test_resnet fold0: stopped (resumable)" in out and "unet-tu-test_resnet fold1: stopped (resumable)" in out
    assert "study: stopped by SIGTERM; the same command continues: python study.py" in out
    assert not any((run / "train.log").exists() for run in later)  # no run started after the signal
    saved = {run: epochs_in(run) for run in first}
    assert all(json.loads((run / "state" / "trainer.json").read_text())["epoch"] == n for run, n in saved.items())

    # The same command resumes them; Ctrl-C to its whole group stops it the same way.
    process = start_study(args)
    out = stop_when(process, lambda: all(epochs_in(run) > saved[run] for run in first),
                    lambda s: os.killpg(process.pid, s), signal.SIGINT)
    for run in first:
        assert f"resuming {run} after epoch {saved[run]}" in (run / "train.log").read_text()
    assert "stopped by SIGINT" in out and "fold0: stopped (resumable)" in out and "fold1: stopped (resumable)" in out
    assert not any((run / "train.log").exists() for run in later)


def test_the_dry_run_of_a_one_fold_study_says_it_writes_no_ensemble(demo_dir, tmp_path, capsys, encoders_known):
    workdir = with_data(demo_dir, tmp_path)
    study.main(study_args(workdir, "--archs", "unet", "--encoders", "tu-test_resnet", "--folds", "0", "--dry-run"))
    output = capsys.readouterr().out
    assert "# then: ensemble skipped: ensemble.py tunes each fold on the others and needs two folds or more; this " \
           "study has fold 0" in output and "python ensemble.py" not in output
