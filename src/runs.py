"""The ledger of runs: the only code that reads a run folder (runs/<dataset>/<arch>-<encoder>/fold<k>/) and the
predictions made from it (preds/<dataset>/<arch>-<encoder>/...).

study.py, infer.py and ensemble.py ask it what a run is, whether it is finished with the settings asked, whether
someone is training it, and which predictions came from its current weights; nothing else globs runs/ or preds/.
"""

# ---------------------------------------------------------------------------------------------------------------------
# Run folders: config, fold file, weights, saved state, lock, and the state a study plans from.
# ---------------------------------------------------------------------------------------------------------------------

import atexit
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from src.checkpoint import last_state, settings_changed, write_atomic
from src.config import Config, load_run_config
from src.folds import fingerprint

LOCK = "train.lock"  # JSON {host, pid, started}; its mtime is the heartbeat
HEARTBEAT_SECONDS = 30
DEAD_AFTER_SECONDS = 300  # a heartbeat this old means its owner died (an epoch never blocks the heartbeat thread)
# Settings that do not change the model a finished run holds: a run trained with other values of these is not stale.
NOT_THE_MODEL = ("workers", "tracker", "tags", "save_minutes", "data_dir", "folds_dir", "runs_dir")
PLAN_STATES = ("done", "stale", "running", "resumable", "failed", "new")


def lock_owner(run_dir: Path) -> dict | None:
    """Who trains run_dir now ({host, pid, started, heartbeat seconds ago}), or None when nobody alive holds it.

    flock says so on this machine's file systems; on one that does not honour it across machines (NFS), a lock
    file from another host counts while its heartbeat is younger than DEAD_AFTER_SECONDS."""
    path = Path(run_dir) / LOCK
    try:
        with open(path) as f:
            text = f.read()
            heartbeat = time.time() - os.fstat(f.fileno()).st_mtime
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                free = True
            except BlockingIOError:
                free = False
    except FileNotFoundError:
        return None
    if not text.strip():
        return None  # released by an owner that ended
    try:
        owner = {**json.loads(text), "heartbeat": heartbeat}
    except ValueError:  # caught between an owner's truncate and write
        owner = {"host": "?", "pid": "?", "heartbeat": heartbeat}
    here = owner["host"] == socket.gethostname()
    if here and owner["pid"] == os.getpid():
        return None  # this process: a train.main called in-process has returned (tests, notebooks)
    if not free:
        return owner
    return owner if not here and heartbeat < DEAD_AFTER_SECONDS else None


def describe_owner(owner: dict) -> str:
    return f"{owner['host']}, pid {owner['pid']}, last heartbeat {owner['heartbeat']:.0f}s ago"


class RunLock:
    """train.py's hold on its run folder for its whole life: flock on run_dir/train.lock, and a heartbeat (the
    file's mtime, refreshed from a thread) for file systems where flock does not reach other machines."""

    held = {}  # path: RunLock, in this process

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.stop = threading.Event()

    def acquire(self) -> str | None:
        """None once held, or why not: the live owner, in words."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.resolve() in RunLock.held:  # an earlier train.main of this process, returned
            RunLock.held.pop(self.path.resolve()).release()
        owner = lock_owner(self.path.parent)  # before flock: it reads the last owner's file, ours would hide it
        self.file = open(self.path, "a+")
        for _ in range(20):  # a planner's shared lock lasts a moment
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.1)
        else:
            owner = lock_owner(self.path.parent) or {"host": "?", "pid": "?", "heartbeat": 0}
        if owner:
            self.file.close()
            return describe_owner(owner)
        self.file.truncate(0)
        self.file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        self.file.flush()
        threading.Thread(target=self._beat, daemon=True).start()
        RunLock.held[self.path.resolve()] = self
        atexit.register(self.release)
        return None

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            os.utime(self.path)

    def release(self) -> None:
        if self.file.closed:
            return
        self.stop.set()
        self.file.truncate(0)  # an empty lock file: nobody trains here, whatever its mtime says
        self.file.close()


def run_config(run_dir: Path) -> dict:
    """config.json as train.py saved it, with the fold file's fingerprint."""
    return json.loads((Path(run_dir) / "config.json").read_text())


def is_finished(run_dir: Path) -> bool:
    metrics = Path(run_dir) / "metrics.json"
    return metrics.exists() and "epochs_run" in json.loads(metrics.read_text())


def stale_settings(run_dir: Path, cfg: Config) -> str:
    """What of the model a finished run differs in from cfg ('size 64 -> 96, fold file'), or ''."""
    changed = settings_changed(load_run_config(run_dir)[0], cfg, NOT_THE_MODEL)
    saved_folds = run_config(run_dir).get("folds") or {}
    if saved_folds.get("sha256") != fingerprint(cfg.folds_dir, cfg.dataset)["sha256"]:
        changed = ", ".join(filter(None, [changed, f"fold file {Path(cfg.folds_dir) / cfg.dataset}.csv changed"]))
    return changed


def run_state(run_dir: Path, cfg: Config) -> tuple:
    """(state, why) of the run cfg asks for in run_dir; why names the owner (running) or the settings (stale)."""
    owner = lock_owner(run_dir)
    if owner:
        return "running", describe_owner(owner)
    if is_finished(run_dir):
        changed = stale_settings(run_dir, cfg)
        return ("stale", changed) if changed else ("done", "")
    if last_state(run_dir) is not None:
        return "resumable", ""
    return ("failed" if (Path(run_dir) / "config.json").exists() else "new"), ""


def epochs_saved(run_dir: Path) -> int:
    """Epochs in the run's saved state: what --resume will not train again."""
    state = last_state(run_dir)
    return json.loads((state / "trainer.json").read_text())["epoch"] if state else 0


def move_aside(run_dir: Path, keep: tuple = (LOCK,)) -> Path | None:
    """Clear run_dir for a new run. A run that trained (best.pt or history.csv) is moved, never deleted, to
    replaced/fold<k>-<time>/ beside the run folders, where no fold* glob sees it: that folder, or None."""
    run_dir = Path(run_dir)
    entries = [p for p in run_dir.iterdir() if p.name not in keep] if run_dir.is_dir() else []
    if not entries:
        return None
    if not any((run_dir / name).exists() for name in ("best.pt", "last.pt", "history.csv")):
        for p in entries:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return None
    aside = run_dir.parent / "replaced" / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True)
    for p in entries:
        p.rename(aside / p.name)
    return aside


ACCEPTED_STALE = "accepted_stale.json"


def accept_stale(run_dir: Path, changed: str, study: str) -> None:
    """Record that a study kept this finished run although it asked other settings: the leaderboard marks it."""
    write_atomic(Path(run_dir) / ACCEPTED_STALE, json.dumps({"study": study, "differs": changed}) + "\n")


def accepted_stale(run_dir: Path) -> dict | None:
    """{study, differs} where a study kept this run as it was though it asked other settings, else None."""
    path = Path(run_dir) / ACCEPTED_STALE
    return json.loads(path.read_text()) if path.exists() else None


def clear_accepted_stale(run_dir: Path) -> None:
    (Path(run_dir) / ACCEPTED_STALE).unlink(missing_ok=True)




# ---------------------------------------------------------------------------------------------------------------------
# Predictions: by checkpoint and TTA mode, each file with its provenance (weights hash, fold hash, number of folds).
# ---------------------------------------------------------------------------------------------------------------------
