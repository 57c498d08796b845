"""The wall time a run or a study will take, said once a first epoch is timed (no extra step is run to time one).

train.py says it after its first epoch; study.py once the first of its runs has written an epoch to history.csv
since the study began (a resumed run's older epochs ran at another time, beside other work, so they are not read).
Each epoch of a run costs about the same (a fixed schedule, the same images), so the first one's seconds times the
epochs is the estimate, less what only the first one pays (starting the loader's workers, the first logging: its
other_seconds); other architectures and encoders of a study take their own time, which the line says.
"""
import threading
from pathlib import Path

import pandas as pd
from tqdm import tqdm

POLL_SECONDS = 5.0  # how often the study looks for a first epoch in its runs' history.csv


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 10 * 3600 else f"{seconds / 3600:.0f} h"


def line(what: str, seconds: float, where: str, basis: str) -> str:
    """'~ 53 min for 56 epochs on this CPU (epoch 1 took 57 s besides its start-up); --epochs to shorten'."""
    return f"~ {duration(seconds)} for {what} {where} ({basis}); --epochs to shorten"


def where(device_type: str, processes: int = 1) -> str:
    if processes > 1:
        return f"on {processes} processes ({device_type})"
    return f"on this {'CPU' if device_type == 'cpu' else 'GPU'}"


def epoch_seconds(row) -> float:
    """An epoch's training, validation and saving seconds (history.csv's row): its own time without the start-up."""
    return float(row["seconds"] - row["other_seconds"])


def epochs_written(run_dir: Path) -> list:
    """(epoch, seconds, seconds less start-up) of each epoch in a run folder's history.csv: which epochs, and which
    training of them (a run trained again from scratch writes its epoch 1 anew, at other seconds)."""
    history = Path(run_dir) / "history.csv"
    if not history.exists():
        return []
    rows = pd.read_csv(history).iterrows()
    return [(int(row["epoch"]), float(row["seconds"]), epoch_seconds(row)) for _, row in rows]


def first_epoch(run_dirs: list, before: dict | None = None) -> tuple | None:
    """(the run folder, the epoch's number, its seconds, start-up left out) of the first epoch in a folder's history.csv
    that it did not hold before ({folder: epochs_written then}), else None."""
    for run_dir in run_dirs:
        new = [e for e in epochs_written(run_dir) if e not in (before or {}).get(run_dir, [])]
        if new:
            return Path(run_dir), new[0][0], new[0][2]
    return None


class StudyEstimate:
    """While a study trains: once one of its runs has timed an epoch, one line for all its runs, then nothing more."""

    def __init__(self, run_dirs: list, epochs: int, epochs_left: int, at_once: int, device: str):
        self.run_dirs, self.epochs, self.epochs_left = run_dirs, epochs, epochs_left
        self.at_once, self.device = at_once, device
        self.before = {run_dir: epochs_written(run_dir) for run_dir in run_dirs}  # a resumed run's older epochs
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def watch(self) -> None:
        while not self.done.wait(POLL_SECONDS):
            timed = first_epoch(self.run_dirs, self.before)
            if timed:
                tqdm.write(self.line(*timed))  # above the study's progress bar
                return

    def line(self, run_dir: Path, epoch: int, seconds: float) -> str:
        runs = len(self.run_dirs)
        runs = f"{runs} run{'s' if runs > 1 else ''}"
        what = (f"{runs} x {self.epochs} epochs" if self.epochs_left == len(self.run_dirs) * self.epochs
                else f"{runs}, {self.epochs_left} epochs left")
        at_once = f", {self.at_once} at a time" if self.at_once > 1 else ""
        return line(what, seconds * self.epochs_left / self.at_once, f"on the {self.device}{at_once}",
                    f"{run_dir.parent.name} {run_dir.name}'s epoch {epoch} took {seconds:.0f} s; other archs and "
                    f"encoders take their own")

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
