"""The ledger's run folders: who is training a run, whether a finished run matches the settings asked, and that a
replaced run is moved aside, never deleted."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest

import study
import train
from conftest import ROOT, TINY, paths
from src import runs, study as plan_module
from src.canonical import load_meta
from src.folds import fingerprint

_i = TINY.index("--encoder")
FLAGS = [*TINY[:_i], *TINY[_i + 2:], "--epochs", "1"]


def workdir_with_data(demo_dir, tmp_path):
    for name in ("data", "folds"):
        (tmp_path / name).symlink_to(demo_dir / name)
    return tmp_path


def plan_of(workdir, *flags) -> dict:
    flags = [*FLAGS, *paths(workdir), "--runs-dir", str(workdir / "runs"), *flags]
    cfg = plan_module.train_config(flags)
    return {(r.name, r.fold): r for r in plan_module.plan(cfg, ["unet"], ["tu-test_resnet"], [0], flags)}


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != runs.LOCK}


def test_a_second_planner_leaves_a_run_that_trains_before_its_first_save_alone(demo_dir, tmp_path):
    workdir = workdir_with_data(demo_dir, tmp_path)
    run_dir = workdir / "runs" / "demo" / "unet-tu-test_resnet" / "fold0"
    flags = [*TINY, *paths(workdir), "--runs-dir", str(workdir / "runs"), "--fold", "0"]
    live = subprocess.Popen([sys.executable, "train.py", *flags, "--epochs", "200", "--save-minutes", "10"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not (run_dir / "config.json").exists():
            assert live.poll() is None, "train.py ended before it started training"
            time.sleep(0.1)
        run = plan_of(workdir)[("unet-tu-test_resnet", 0)]
        assert run.state == "running" and f"pid {live.pid}" in run.why  # not 'failed' with --overwrite
        before = snapshot(run_dir)
        for extra in ([], ["--resume"], ["--overwrite"]):  # a second train.py is refused, whatever it asks
            with pytest.raises(SystemExit, match="is being trained by another process"):
                train.main([*flags, *extra])
        with pytest.raises(SystemExit, match="being trained by another process"):  # a second study starts nothing
            study.main([*FLAGS, *paths(workdir), "--runs-dir", str(workdir / "runs"), "--archs", "unet", "--encoders",
                        "tu-test_resnet", "--folds", "0", "--preds-dir", str(workdir / "preds"), "--out-dir",
                        str(workdir / "ensemble")])
        assert not (workdir / "runs" / "demo" / "unet-tu-test_resnet" / "replaced").exists()
        assert {p: t for p, t in snapshot(run_dir).items() if p.name not in ("history.csv", "metrics.json", "best.pt")
                } == {p: t for p, t in before.items() if p.name not in ("history.csv", "metrics.json", "best.pt")}
        assert live.poll() is None  # the live run goes on
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(timeout=120)
    assert live.returncode == 128 + signal.SIGTERM  # it saved its epoch and stopped as asked: nothing broke it
    assert plan_of(workdir)[("unet-tu-test_resnet", 0)].state == "resumable"


def fake_lock(run_dir, host: str, pid: int, age: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "state").mkdir()
    (run_dir / "state" / "trainer.json").write_text(json.dumps({"epoch": 1}))
    (run_dir / "config.json").write_text("{}")
    (run_dir / runs.LOCK).write_text(json.dumps({"host": host, "pid": pid, "started": "earlier"}))
    os.utime(run_dir / runs.LOCK, (time.time() - age, time.time() - age))


def test_a_lock_whose_owner_died_lets_the_run_resume(tmp_path):
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    here, nfs_live, nfs_dead = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    fake_lock(here, socket.gethostname(), killed.pid, 0)  # a killed process of this host: flock released
    fake_lock(nfs_live, "node-7", 4242, 20)  # another host, fresh heartbeat: flock would not show it on NFS
    fake_lock(nfs_dead, "node-7", 4242, runs.DEAD_AFTER_SECONDS + 60)  # another host, heartbeat stopped
    assert runs.lock_owner(here) is None
    assert runs.lock_owner(nfs_live)["host"] == "node-7"
    assert runs.lock_owner(nfs_dead) is None
    assert "is being" not in (runs.RunLock(nfs_dead).acquire() or "is free")  # a new owner takes it over
    assert "node-7, pid 4242, last heartbeat" in runs.RunLock(nfs_live).acquire()


def finished_run(workdir, *flags):
    """A finished run's files as train.py leaves them, trained with FLAGS plus flags."""
    cfg = replace(plan_module.train_config([*FLAGS, *paths(workdir), "--runs-dir", str(workdir / "runs"), *flags]),
                  arch="unet", encoder="tu-test_resnet", fold=0)
    cfg.run_dir.mkdir(parents=True)
    cfg.save(cfg.run_dir / "config.json", meta=load_meta(cfg.dataset_dir),
             folds=fingerprint(cfg.folds_dir, cfg.dataset))
    (cfg.run_dir / "metrics.json").write_text(json.dumps({"dice": 0.5, "epochs_run": 1}))
    (cfg.run_dir / "best.pt").write_bytes(b"weights")
    (cfg.run_dir / "history.csv").write_text("epoch\n1\n")
    return cfg.run_dir


def test_a_done_run_asked_with_other_settings_is_stale_and_the_plan_names_them(demo_dir, tmp_path, capsys):
    workdir = workdir_with_data(demo_dir, tmp_path)
    run_dir = finished_run(workdir)
    assert plan_of(workdir)[("unet-tu-test_resnet", 0)].state == "done"
    assert plan_of(workdir, "--workers", "2", "--save-minutes", "5")[("unet-tu-test_resnet", 0)].state == "done"
    stale = plan_of(workdir, "--size", "96")[("unet-tu-test_resnet", 0)]
    assert stale.state == "stale" and stale.why == "size 64 -> 96"
    assert "epochs 1 -> 3" in plan_of(workdir, "--epochs", "3")[("unet-tu-test_resnet", 0)].why
    assert plan_of(workdir, "--loss", "lovasz")[("unet-tu-test_resnet", 0)].why == "loss auto -> lovasz"

    args = [*FLAGS, *paths(workdir), "--runs-dir", str(workdir / "runs"), "--archs", "unet", "--encoders",
            "tu-test_resnet", "--folds", "0", "--size", "96"]
    study.main([*args, "--dry-run"])
    assert f"# stale (size 64 -> 96): {run_dir}; --retrain-stale" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="size 64 -> 96.*--retrain-stale.*--accept-stale"):
        study.main(args)  # neither reused nor retrained silently
    assert (run_dir / "best.pt").exists()
    config = json.loads((run_dir / "config.json").read_text())
    del config["select_on"]  # an older train.py's: no setting is filled in with a default
    (run_dir / "config.json").write_text(json.dumps(config))
    assert plan_of(workdir)[("unet-tu-test_resnet", 0)].why == "written by an older train.py, whose config.json " \
                                                                "lacks settings"


def test_overwrite_moves_a_trained_run_and_the_old_part_of_its_log_aside(demo_dir, tmp_path):
    run_dir = finished_run(workdir_with_data(demo_dir, tmp_path))
    old, new = b"the old run\n", b"\n== 2026-01-01 00:00:00 python train.py --overwrite\nplanned\n"
    (run_dir / "train.log").write_bytes(old + new)  # the engine's header, then this attempt's output
    inode = (run_dir / "train.log").stat().st_ino
    aside = runs.move_aside(run_dir, log_from=len(old))
    assert (aside / "best.pt").read_bytes() == b"weights" and (aside / "history.csv").exists()
    assert (aside / "train.log").read_bytes() == old
    assert sorted(p.name for p in run_dir.iterdir()) == ["train.log"] and (run_dir / "train.log").read_bytes() == new
    assert (run_dir / "train.log").stat().st_ino == inode  # the file the engine and train.py write to, not a copy
    assert [p.name for p in run_dir.parent.glob("fold*")] == ["fold0"]


HOLD = """import json, fcntl, sys
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.write(json.dumps({"host": sys.argv[2], "pid": int(sys.argv[3]), "started": "now"})); f.flush()
print("held", flush=True); sys.stdin.read()
"""


def test_a_held_lock_is_live_even_when_its_host_and_pid_are_this_processs(tmp_path):
    """Containers sharing a hostname each run their trainer as pid 1: flock, not the pid, says who holds a run."""
    (tmp_path / "fold0").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "fold0" / runs.LOCK), socket.gethostname(),
                               str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert runs.lock_owner(tmp_path / "fold0")["pid"] == os.getpid()
        assert f"pid {os.getpid()}, last heartbeat" in runs.RunLock(tmp_path / "fold0").acquire()
    finally:
        holder.communicate("")


def test_without_flock_the_heartbeat_decides_and_a_warning_says_so(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_flock(f, mode):
        raise OSError(errno.ENOSYS, "Function not implemented")
    monkeypatch.setattr(fcntl, "flock", no_flock)  # Lustre mounted noflock
    live, dead, free = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    fake_lock(live, socket.gethostname(), 1, 20)
    fake_lock(dead, socket.gethostname(), 1, runs.DEAD_AFTER_SECONDS + 60)
    assert runs.lock_owner(live)["pid"] == 1 and runs.lock_owner(dead) is None
    assert "pid 1, last heartbeat" in runs.RunLock(live).acquire()
    lock = runs.RunLock(free)
    assert lock.acquire() is None and json.loads((free / runs.LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "has no file locks" in line]
    assert warnings == [f"warning: {tmp_path} has no file locks (flock: Function not implemented); a run counts as "
                        f"trained by another process while its train.lock heartbeat is under 300s old"]


def test_the_heartbeat_survives_a_failed_touch_and_says_so(tmp_path, monkeypatch, capsys):
    real, calls = os.utime, []

    def flaky(path, *args):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(116, "Stale file handle")
        real(path, *args)
    monkeypatch.setattr(runs, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(os, "utime", flaky)
    lock = runs.RunLock(tmp_path / "fold0")
    assert lock.acquire() is None
    try:
        real(lock.path, (0, 0))
        deadline = time.time() + 10
        while lock.path.stat().st_mtime == 0:
            assert time.time() < deadline, "the heartbeat stopped after its first failure"
            time.sleep(0.05)
    finally:
        lock.release()
    assert f"warning: heartbeat of {lock.path} failed ([Errno 116] Stale file handle)" in capsys.readouterr().err


def test_a_finished_run_asked_with_another_patch_is_stale_but_not_for_another_window(demo_dir, tmp_path):
    import shutil
    workdir = workdir_with_data(demo_dir, tmp_path)
    run_dir = finished_run(workdir)  # the whole 64 px image
    state = lambda *flags: plan_of(workdir, *flags)[("unet-tu-test_resnet", 0)]  # noqa: E731
    assert state("--patch", "32").why == "patch 0 -> 32"
    assert state("--patch", "64").state == "done"  # a patch the size of the image is the whole image
    shutil.rmtree(run_dir)
    finished_run(workdir, "--patch", "32")
    assert state("--patch", "32").state == "done"
    assert state("--patch", "32", "--overlap", "0.25", "--sw-batch-size", "2").state == "done"  # predictions only
    assert state().why == "patch 32 -> 0"
    assert state("--patch", "32", "--foreground-patches", "0.5").why == "foreground_patches 0.33 -> 0.5"
    assert state("--patch", "32", "--patches-per-image", "2").why == "patches_per_image 1 -> 2"
    assert state("--patch", "32", "--size", "96").why == "size 64 -> 96"
