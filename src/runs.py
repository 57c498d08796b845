"""The ledger of runs: the only code that reads a run folder (runs/<dataset>/<arch>-<encoder>/fold<k>/) and the
predictions made from it (preds/<dataset>/<arch>-<encoder>/...).

study.py, infer.py and ensemble.py ask it what a run is, whether it is finished with the settings asked, whether
someone is training it, and which predictions came from its current weights; nothing else globs runs/ or preds/.
"""

import atexit
import fcntl
import hashlib
import json
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd

from src.checkpoint import last_state, settings_changed
from src.config import Config, OldRunFormat, load_run_config, settled_lr
from src.portable.files import atomic_path, write_atomic
from src.portable.maps import mean_at, mean_maps
from src.folds import fingerprint


# ---------------------------------------------------------------------------------------------------------------------
# Run folders: config, fold file, weights, saved state, lock, and the state a study plans from.
# ---------------------------------------------------------------------------------------------------------------------

LOCK = "train.lock"  # JSON {host, pid, started}; its mtime is the heartbeat
HEARTBEAT_SECONDS = 30
DEAD_AFTER_SECONDS = 300  # a heartbeat this old means its owner died (an epoch never blocks the heartbeat thread)
# Settings that do not change the model a finished run holds: a run trained with other values of these is not stale.
# The sliding window's overlap and batch change predictions (and a patched run's validation scores), not weights.
NOT_THE_MODEL = ("workers", "tracker", "tags", "save_minutes", "data_dir", "folds_dir", "runs_dir", "overlap",
                 "sw_batch_size")
PLAN_STATES = ("done", "stale", "running", "resumable", "failed", "new")


def lock_owner(run_dir: Path) -> dict | None:
    """Who trains run_dir now ({host, pid, started, heartbeat seconds ago}), or None when nobody alive holds it.

    flock says so on this machine's file systems; on one that does not honour it across machines (NFS), a lock
    file from another host counts while its heartbeat is younger than DEAD_AFTER_SECONDS, and on one without flock
    (Lustre mounted noflock) any lock file does."""
    path = Path(run_dir) / LOCK
    try:
        with open(path) as f:
            text = f.read()
            heartbeat = time.time() - os.fstat(f.fileno()).st_mtime
            free = try_flock(f, fcntl.LOCK_SH)
    except FileNotFoundError:
        return None
    if not text.strip():
        return None  # released by an owner that ended
    try:
        owner = {**json.loads(text), "heartbeat": heartbeat}
    except ValueError:  # caught between an owner's truncate and write
        owner = {"host": "?", "pid": "?", "heartbeat": heartbeat}
    if path.resolve() in RunLock.held:
        return None  # this process: a train.main called in-process has returned (tests, notebooks)
    if free is False:  # held, whatever its host and pid say: containers sharing a hostname each have a pid 1
        return owner
    here = owner["host"] == socket.gethostname()
    return owner if (free is None or not here) and heartbeat < DEAD_AFTER_SECONDS else None


_warned = set()


def try_flock(f, mode: int) -> bool | None:
    """flock without waiting: True once taken, False when another process holds it, None where the file system
    has no flock (said once per process; the heartbeat rule then decides alone)."""
    try:
        fcntl.flock(f, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:  # ENOSYS, ENOLCK, EOPNOTSUPP: e.g. Lustre mounted noflock
        folder = str(Path(f.name).parent.parent)
        if folder not in _warned:
            _warned.add(folder)
            print(f"warning: {folder} has no file locks (flock: {error.strerror}); a run counts as trained by "
                  f"another process while its {LOCK} heartbeat is under {DEAD_AFTER_SECONDS}s old", file=sys.stderr)
        return None


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
        run_dir = self.path.parent
        self.created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # removed again if nothing came
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.path.resolve() in RunLock.held:  # an earlier train.main of this process, returned
            RunLock.held.pop(self.path.resolve()).release()
        owner = lock_owner(run_dir)  # before flock: it reads the last owner's file, ours would hide it
        self.file = open(self.path, "a+")
        for _ in range(20):  # a planner's shared lock lasts a moment
            taken = try_flock(self.file, fcntl.LOCK_EX)
            if taken is not False:
                break
            time.sleep(0.1)
        else:
            owner = lock_owner(run_dir) or {"host": "?", "pid": "?", "heartbeat": 0}
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

    @classmethod
    def release_all(cls) -> None:
        """Every run folder this process holds: a train.main called in-process (tests, notebooks) lets go of its
        folder when it returns or stops, not only when the process exits."""
        for lock in cls.held.values():
            lock.release()
        cls.held.clear()

    def _beat(self) -> None:
        failing = False
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
                failing = False
            except Exception as error:  # a file server's hiccup must not end the heartbeat: others would take over
                if not failing:
                    print(f"warning: heartbeat of {self.path} failed ({error}); retrying every {HEARTBEAT_SECONDS}s",
                          file=sys.stderr)
                failing = True

    def release(self) -> None:
        if self.file.closed:
            return
        self.stop.set()
        run_dir = self.path.parent
        if self.created and run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [LOCK]:  # a failed start
            self.path.unlink()
            self.file.close()
            for folder in self.created:
                try:
                    folder.rmdir()
                except OSError:  # another run's files arrived meanwhile
                    break
            return
        self.file.truncate(0)  # an empty lock file: nobody trains here, whatever its mtime says
        self.file.close()


def run_config(run_dir: Path) -> dict:
    """config.json as train.py saved it, with the fold file's fingerprint."""
    return json.loads((Path(run_dir) / "config.json").read_text())


def is_finished(run_dir: Path) -> bool:
    metrics = Path(run_dir) / "metrics.json"
    return metrics.exists() and "epochs_run" in json.loads(metrics.read_text())


def stale_settings(run_dir: Path, cfg: Config) -> str:
    """What of the model a finished run differs in from cfg ('size 64 -> 96, fold file'), or '': a run of an older
    train.py (config.json lacks a setting) differs in that."""
    try:
        changed = settings_changed(load_run_config(run_dir)[0], settled_lr(cfg, run_dir)[0], NOT_THE_MODEL)
    except OldRunFormat:
        return "written by an older train.py, whose config.json lacks settings"
    if run_config(run_dir)["folds"]["sha256"] != fingerprint(cfg.folds_dir, cfg.dataset)["sha256"]:
        changed = ", ".join(filter(None, [changed, f"fold file {Path(cfg.folds_dir) / cfg.dataset}.csv changed"]))
    rules = volume_rules(run_config(run_dir)["meta"]), volume_rules(json.loads((cfg.dataset_dir / "meta.json").read_text()))
    if rules[0] != rules[1]:  # the same slices' ids, cut or normalised otherwise: prepare was run again
        changed = ", ".join(filter(None, [changed, "the volumes' " + ", ".join(
            k for k in VOLUME_RULES if rules[0].get(k) != rules[1].get(k)) + " (prepare's rules)"]))
    return changed


VOLUME_RULES = ("axis", "normalisation", "slice_size", "modality")


def volume_rules(meta: dict) -> dict:
    """What of a volume dataset's preparation a model trained on it depends on ({} for 2D images)."""
    return {k: v for k, v in meta.get("volumes", {}).items() if k in VOLUME_RULES}


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


def move_aside(run_dir: Path, log_from: int | None = None) -> Path | None:
    """Clear run_dir for a new run; the caller holds its lock. What earlier attempts left, their train.log with the
    rest, is moved, never deleted, to replaced/fold<k>-<time>/ beside the run folders, where no fold* glob sees it:
    that folder, or None when there was nothing. log_from: this process writes to train.log, its own output from
    that byte on (log_start), which stays."""
    run_dir, log = Path(run_dir), Path(run_dir) / "train.log"
    keep = (LOCK, log.name) if log_from is not None else (LOCK,)
    entries = [p for p in run_dir.iterdir() if p.name not in keep] if run_dir.is_dir() else []
    old_log = log.read_bytes()[:log_from] if log_from is not None and log.exists() else b""
    if not entries and not old_log.strip():
        return None
    aside = run_dir.parent / "replaced" / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True)
    for p in entries:
        p.rename(aside / p.name)
    if old_log:
        (aside / log.name).write_bytes(old_log)
        with open(log, "r+b") as f:  # in place: the engine and this process write to this file, not to a name
            own = f.read()[log_from:]
            f.seek(0)
            f.write(own)
            f.truncate()
    return aside


LOG_START = "LOG_START"  # set by src/engine.py: the byte of a command's log where that command's part begins


def log_start(run_dir: Path) -> int | None:
    """Where this process's part of run_dir/train.log begins when its output goes there, else None (a terminal)."""
    log = Path(run_dir) / "train.log"
    try:
        ours = os.path.samestat(os.fstat(sys.stdout.fileno()), log.stat())
    except (OSError, ValueError):  # no train.log, or a stdout without a file (a notebook)
        return None
    if not ours:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    return int(os.environ.get(LOG_START, 0))


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


def epoch_of(run_dir: Path, checkpoint: str) -> tuple:
    """(the --select-on rule the run trained under, the epoch whose weights a checkpoint holds): selected and best
    from a finished run's metrics.json (selected_epoch, best_epoch), last its epochs_run; an unfinished run's best.pt
    is the epoch its metrics.json holds so far."""
    path = Path(run_dir) / "metrics.json"
    metrics = json.loads(path.read_text())
    key = {"selected": "selected_epoch", "best": "best_epoch", "last": "epochs_run"}[checkpoint]
    return load_run_config(run_dir)[0].select_on, metrics[key] if key in metrics else metrics["epoch"]


def run_folders(runs_dir, dataset: str) -> dict:
    """{run name: its fold folders}: runs/<dataset>/<arch>-<encoder>/fold<k>/, finished or not."""
    root = Path(runs_dir) / dataset
    runs = {p.name: sorted(p.glob("fold*"), key=lambda f: f.name) for p in sorted(root.iterdir()) if p.is_dir()} \
        if root.is_dir() else {}
    return {name: [f for f in folds if f.is_dir() and f.name[4:].isdigit()] for name, folds in runs.items()}


def weights_file(run_dir: Path, fold: int, checkpoint: str) -> Path:
    """A fold's weights file for a checkpoint: best.pt, last.pt, or for `selected` the one its --select-on rule
    scores (last.pt under final, best.pt under inner and fold)."""
    folder = Path(run_dir) / f"fold{fold}"
    if checkpoint == "selected":
        checkpoint = load_run_config(folder)[0].selected_checkpoint
    return folder / f"{checkpoint}.pt"


def weights_sha256(run_dir: Path, fold: int, checkpoint: str) -> str | None:
    """The sha256 of a fold's weights file now, or None if it is gone (its fold folder too)."""
    if not (Path(run_dir) / f"fold{fold}" / "config.json").exists():
        return None
    path = weights_file(run_dir, fold, checkpoint)
    return file_sha256(path) if path.exists() else None


_hashes = {}  # (path, size, mtime) -> sha256: a checkpoint is hashed once per process, however many sets read it


def file_sha256(path: Path) -> str:
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        with open(path, "rb") as f:
            _hashes[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _hashes[key]


# ---------------------------------------------------------------------------------------------------------------------
# Predictions: by checkpoint and TTA mode, each file with its provenance (weights hash, fold hash, number of folds).
# An .npz holds `prob` (uint8 C x S x S: probability * 255 at the run's size S), `size` (the image's original height
# and width) and the model that made it: `fold`, `weights` (its checkpoint's sha256), `split` (its fold file's), `tta`
# and, for a run trained on patches, `window` ("<patch>:<overlap>"). The layout of preds/: docs/infer.md.
# ---------------------------------------------------------------------------------------------------------------------
PROVENANCE = "prediction.json"  # beside oof/, test/ and sets/ in each set's folder; written by infer.py
RECORDED = ("run_dir", "split", "level")  # what every prediction.json of this infer.py holds
# infer.py --level of a unetpp_ds run, cheapest first. L4 is the model's own forward, so its set is level None, in
# tta-<mode>/ beside every other run's; the others are in tta-<mode>-<level>/. prediction.json records the level.
LEVELS = ("L1", "L2", "L3", "L4", "mean")
TTA_MODES = ("none", "flip", "d4")  # infer.py --tta, cheapest first: a tie keeps the cheaper mode
DIRS = {"--runs-dir": "runs", "--data-dir": "data", "--folds-dir": "folds", "--preds-dir": "preds"}  # the defaults


def command(script: str, dataset: str, dirs: dict, *flags) -> str:
    """A command of a hint, to copy as it is: with --dataset and every folder flag not at its default (DIRS), quoted
    for the shell (a --runs 'unet*' glob)."""
    folders = [str(part) for flag, value in dirs.items() if str(value) != DIRS[flag] for part in (flag, value)]
    return shlex.join(["python", script, "--dataset", dataset, *map(str, flags), *folders])


def save_pred(path: Path, prob: np.ndarray, size: tuple, **model_id) -> None:
    """prob: uint8 C x S x S; size: the image's original (H, W); model_id: the fold, weights, split and TTA that made
    it. Written as name.npz.tmp, then renamed: a kill leaves no half file, and no *.npz that is not a prediction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez_compressed(f, prob=prob, size=np.asarray(size, dtype=np.int64), **model_id)


def load_pred(path: Path) -> tuple:
    """(uint8 C x S x S map, original (H, W)); divide the map by 255 for probabilities, or use resize_prob()."""
    with np.load(path) as data:
        return data["prob"], tuple(int(n) for n in data["size"])


def made_by(path: Path) -> dict:
    """The fold, weights, split, TTA and window of the model that wrote the file (those recorded when it was
    written); reads only these small entries, not the map."""
    with np.load(path) as data:
        return {key: data[key].item() for key in ("fold", "weights", "split", "tta", "window") if key in data.files}


def needs_prediction(path: Path, model_id: dict, overwrite: bool) -> bool:
    """Missing, made by another model (another fold, retrained weights, an older format) or --overwrite."""
    return overwrite or not path.exists() or made_by(path) != model_id


def read_maps(paths: list, weights: list) -> tuple:
    """Prediction files of one image with their weights: ([(uint8 map, weight)], original (H, W)); maps.mean_maps
    averages them, maps.final_mask makes them a mask."""
    loaded = [load_pred(path) for path in paths]
    return [(prob, weight) for (prob, _), weight in zip(loaded, weights)], loaded[-1][1]


def mean_probabilities(weights: list):
    """(image id, prediction sets, one per weight) -> the sets' weighted mean OOF probabilities of the image at its
    own size (maps.mean_at): what the ensemble's tuning, scores and 3D step read."""
    def probabilities(image_id: str, sets: tuple) -> np.ndarray:
        weighted, size = read_maps([s.oof(image_id) for s in sets], weights)
        return mean_at(mean_maps(weighted), size)
    return probabilities


def check_set_name(name: str) -> None:
    """A prediction set is one folder under sets/: its name cannot hold a path."""
    if not name or name in (".", "..") or Path(name).name != name:
        raise ValueError(f"'{name}' cannot name a prediction set: use a plain folder name such as new_xrays")


def prediction_files(folder: Path) -> dict:
    """{image id: its .npz} in one folder of predictions (a file being written, <id>.npz.tmp, is none)."""
    return {p.stem: p for p in sorted(Path(folder).glob("*.npz"))}


def set_folder(preds_dir, dataset: str, run: str, tta: str, checkpoint: str = "selected",
               level: str | None = None) -> Path:
    """preds/<dataset>/<run>/[<checkpoint>/]tta-<mode>[-<level>]: the selected weights' at the top (last.pt's under
    --select-on final, best.pt's under inner and fold), best/ and last/ in their own folders. Level L4 (the model's
    own forward) and None share tta-<mode>/."""
    root = Path(preds_dir) / dataset / run
    suffix = f"-{level}" if level not in (None, "L4") else ""
    return (root if checkpoint == "selected" else root / checkpoint) / f"tta-{tta}{suffix}"


def foreign_predictions(preds_dir, dataset: str, run: str, runs_dir) -> str:
    """'' when preds/<dataset>/<run>/ holds no predictions of another runs directory's run of that name that is
    still there, else one sentence saying so with the fix: a preds folder serves one runs directory, so that
    infer.py never predicts over another study's predictions (and ensemble.py never mixes them)."""
    ours = (Path(runs_dir) / dataset / run).resolve()
    for record in sorted((Path(preds_dir) / dataset / run).rglob(PROVENANCE)):
        theirs = json.loads(record.read_text()).get("run_dir")
        if theirs and Path(theirs) != ours and Path(theirs).is_dir():
            return (f"{Path(preds_dir) / dataset / run} holds the predictions of {theirs}, not of {ours}: give the "
                    f"runs of {runs_dir} a --preds-dir (and an ensemble --out-dir) of their own")
    return ""


@dataclass(frozen=True)
class PredictionSet:
    """One run's predictions at one checkpoint, TTA mode and level: oof/, test/fold<k>/, sets/<name>/fold<k>/, with
    the provenance infer.py records in prediction.json: the run folder, the fold file (file, sha256, k) and, for each
    part (oof, test, each set), the sha256 of the weights each fold's files were made with."""
    run: str
    checkpoint: str
    tta: str
    level: str | None
    folder: Path

    @property
    def provenance(self) -> dict:
        path = self.folder / PROVENANCE
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def scored(self) -> bool:
        return (self.folder / "oof_scores.csv").exists()

    def oof_scores(self) -> pd.DataFrame:
        """The OOF scores infer.py wrote (Dice, IoU, HD95 per image and class)."""
        return pd.read_csv(self.folder / "oof_scores.csv", dtype={"id": str})

    def oof(self, image_id: str) -> Path:
        return self.folder / "oof" / f"{image_id}.npz"

    def part(self, name: str | None) -> Path:
        """The folder of a part: test/, or sets/<name>/."""
        return self.folder / ("test" if name is None else Path("sets") / name)

    def fold_folders(self, part: str, folds) -> dict:
        """{fold: its folder} of a part's fold<k>/ folders (test, sets/<name>), of the given folds only (never one left
        from a split of another k)."""
        found = sorted((self.folder / part).glob("fold*"))
        return {int(d.name[4:]): d for d in found if d.name[4:].isdigit() and int(d.name[4:]) in folds}

    def recorded_by_fold(self, part: str, kind: str) -> dict:
        """{fold: what prediction.json records of that fold's files of a part} (part: oof, test or sets/<name>; kind:
        weights, the sha256 of the weights that made them, or windows, the sliding window that did)."""
        record = self.provenance
        for key in part.split("/"):
            record = record.get(key, {})
        return {int(f): value for f, value in record.get(kind, {}).items()}

    def weights(self, part: str) -> dict:
        """{fold: sha256 of the weights that made the part's files of that fold}, as recorded."""
        return self.recorded_by_fold(part, "weights")

    def windows(self, part: str) -> dict:
        """{fold: {"patch", "overlap"}} of the sliding window that made the part's files of that fold (a run trained
        on patches); folds predicted on the whole image are absent."""
        return self.recorded_by_fold(part, "windows")

    def window_mismatch(self, part: str, fold: int) -> str:
        """Why fold's files of this part do not go with its OOF files, which the ensemble tunes on: another sliding
        window (overlap) made them ('' when both share one)."""
        theirs, oof = self.windows(part).get(fold), self.windows("oof").get(fold)
        if theirs == oof:
            return ""
        text = lambda w: f"overlap {w['overlap']:g}" if w else "no sliding window"  # noqa: E731
        return f"predicted with {text(theirs)}, its OOF files with {text(oof)}"

    def stale_folds(self, part: str, folds) -> list:
        """The folds among `folds` whose files of this part were not made by the run's current weights (retrained,
        deleted, never recorded) or by the sliding window of its OOF files (another --overlap)."""
        run_dir, recorded = self.provenance.get("run_dir"), self.weights(part)
        windows, oof_windows = self.windows(part), self.windows("oof")  # read once, not per fold
        return [f for f in folds if run_dir is None or recorded.get(f) is None
                or recorded[f] != weights_sha256(Path(run_dir), f, self.checkpoint)
                or windows.get(f) != oof_windows.get(f)]

    def renew_command(self, dataset: str, folds, dirs: dict, images: str | None = None, name: str | None = None) -> str:
        """The infer.py command that predicts the given folds of this set again with the run's current weights (of
        prediction set `name` from the folder `images`)."""
        run_dir = self.provenance.get("run_dir")
        dirs = {**dirs, "--runs-dir": Path(run_dir).parent.parent} if run_dir else dirs
        overlap = {w["overlap"] for w in self.windows("oof").values()}  # the OOF files' window, which tuning read
        return command("infer.py", dataset, dirs, "--runs", self.run, "--folds", ",".join(map(str, folds)),
                       "--tta", self.tta, "--checkpoint", self.checkpoint,
                       *(["--level", self.level] if self.level else []),
                       *(["--overlap", f"{overlap.pop():g}"] if len(overlap) == 1 else []),
                       *(["--images", images, "--name", name] if images else []))


class OldPredictions(ValueError):
    """A prediction set whose prediction.json is missing or lacks a record this infer.py writes: predicted again,
    never read with a default in the gap."""


def prediction_sets(preds_dir, dataset: str, checkpoint: str = "selected", level: str | None = None) -> dict:
    """{run: {TTA mode: PredictionSet}} of every run with predictions of this checkpoint, scored or not; a set folder
    without a whole prediction.json (an older infer.py's, or one killed before its first record) is refused
    (OldPredictions) with the command that predicts it again."""
    root, found = Path(preds_dir) / dataset, {}
    for run in sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for tta in TTA_MODES:
            folder = set_folder(preds_dir, dataset, run, tta, checkpoint, level)
            if not folder.is_dir():
                continue
            found.setdefault(run, {})[tta] = predictions = PredictionSet(run, checkpoint, tta, level, folder)
            missing = [key for key in RECORDED if key not in predictions.provenance]
            if missing:
                again = command("infer.py", dataset, {"--preds-dir": preds_dir}, "--runs", run, "--tta", tta,
                                "--checkpoint", checkpoint, *(["--level", level] if level else []), "--overwrite")
                raise OldPredictions(f"{folder / PROVENANCE} " + (f"lacks {', '.join(missing)} (an older infer.py's)"
                                     if predictions.provenance else "is missing") + f"; predict the set again: `{again}`")
    return found


def level_sets(preds_dir, dataset: str, checkpoint: str = "selected") -> dict:
    """{run: {TTA mode: {level: PredictionSet}}} of every run with predictions of this checkpoint, every level found
    (None: the model's own forward), scored or not."""
    found = {}
    for level in (None, *(level for level in LEVELS if level != "L4")):
        for run, modes in prediction_sets(preds_dir, dataset, checkpoint, level).items():
            for tta, predictions in modes.items():
                found.setdefault(run, {}).setdefault(tta, {})[level] = predictions
    return found


def select(names, patterns: str | None) -> list:
    """The names matching a comma-separated list of names or globs (all without one), in their order."""
    wanted = [p for p in (patterns or "").split(",") if p]
    return [n for n in names if not wanted or any(fnmatch(n, p) for p in wanted)]


def unmatched(names, patterns: str | None) -> list:
    """The names or globs of a comma-separated list that match none of names."""
    return [p for p in (patterns or "").split(",") if p and not any(fnmatch(n, p) for n in names)]


def record_prediction(folder: Path, part: str, fold: int, weights: str, run_dir: Path, split: dict, k: int,
                      images: str | None = None, ids: list | None = None, level: str | None = None,
                      window: dict | None = None) -> None:
    """Note in folder/prediction.json that every file of one fold of a part (oof, test or sets/<name>) was made by
    these weights (at this level of a unetpp_ds run: L1 ... L4, mean; None for any other run), by this sliding window
    ({"patch", "overlap"} of a run trained on patches; None for the whole image). A record of another split starts
    afresh: none of its folds can be trusted on this one."""
    path = folder / PROVENANCE
    record = json.loads(path.read_text()) if path.exists() else {}
    if record.get("split", {}).get("sha256") != split["sha256"]:
        record = {}
    record.update({"run_dir": str(run_dir), "split": {"file": split["file"], "sha256": split["sha256"], "k": k},
                   "level": level})
    entry = record
    for key in part.split("/"):
        entry = entry.setdefault(key, {})
    if images is not None:
        if entry.get("images") != images:  # another folder under this set's name (infer.py --overwrite)
            entry.clear()
        entry.update({"images": images, "ids": ids})
    entry.setdefault("weights", {})[str(fold)] = weights
    if window:
        entry.setdefault("windows", {})[str(fold)] = window
    else:
        entry.get("windows", {}).pop(str(fold), None)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=2) + "\n")


def record_scores(folder: Path, made_with: dict) -> None:
    """Note that oof_scores.csv scores the OOF files made by these weights ({fold: sha256})."""
    path = folder / PROVENANCE
    record = json.loads(path.read_text())
    record["scored"] = {str(f): w for f, w in made_with.items()}
    write_atomic(path, json.dumps(record, indent=2) + "\n")
