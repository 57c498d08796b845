"""Saving and checking the full training state that --resume continues from."""
import json
import shutil
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

from src.config import Config, OldRunFormat, flag_value, load_run_config
from src.folds import fingerprint

RESUMABLE = ("--epochs", "--patience", "--workers", "--tracker", "--tags", "--save-minutes")
FREE_ON_RESUME = tuple(flag[2:].replace("-", "_") for flag in RESUMABLE)


def settings_changed(saved: Config, requested: Config, free=FREE_ON_RESUME) -> str:
    """What requested changes about the saved run, e.g. 'lr 0.001 -> 0.01', leaving out the fields in free (by
    default what a resume may change)."""
    return ", ".join(f"{f.name} {flag_value(f.name, getattr(saved, f.name))} -> "
                     f"{flag_value(f.name, getattr(requested, f.name))}" for f in fields(Config)
                     if f.name not in free and getattr(saved, f.name) != getattr(requested, f.name))


def run_folder_problem(cfg: Config, resume: bool, overwrite: bool, validate_only: bool) -> str | None:
    """Why train.py must not start on cfg.run_dir as asked (one sentence with the fix), or None."""
    run_dir = cfg.run_dir
    if validate_only and not (run_dir / f"{cfg.selected_checkpoint}.pt").exists():
        return f"{run_dir / (cfg.selected_checkpoint + '.pt')} not found: train the run first"
    if resume and last_state(run_dir) is None:
        return f"nothing to resume in {run_dir} (no state/ folder); drop --resume"
    if resume or validate_only:
        try:
            saved = load_run_config(run_dir)[0]
        except OldRunFormat as error:
            return str(error)
        saved_folds = json.loads((run_dir / "config.json").read_text())["folds"]
        if saved_folds != fingerprint(cfg.folds_dir, cfg.dataset):
            return (f"{saved_folds['file']} changed since {run_dir} started; the run cannot be continued or scored on "
                    f"another split: pass --overwrite to start again on the new one")
    if resume:
        changed = settings_changed(saved, cfg)
        if changed:
            return (f"{run_dir} was trained with other settings ({changed}); resume with the same command, changing "
                    f"only {', '.join(RESUMABLE)}, or pass --overwrite to start again")
    if (run_dir / "config.json").exists() and not (resume or overwrite or validate_only):
        return f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to start again"
    return None


def state_due(accelerator, last_save: float, save_minutes: float, final: bool, stop: "StopRequest") -> tuple:
    """(save the full state now, stop after it), the same on every process: saving is a collective step."""
    import torch  # here: study.py reads run folders through this module and needs no torch to plan
    due = final or stop.signal is not None or time.time() - last_save >= 60 * save_minutes
    flags = torch.tensor([float(due), float(stop.signal is not None)], device=accelerator.device)
    flags = accelerator.reduce(flags, "max")
    return bool(flags[0]), bool(flags[1])


def save_state(accelerator, run_dir: Path, trainer: dict) -> None:
    """Full state (model, optimiser, scheduler, RNGs, counters) into state/; a crash at any moment leaves one whole."""
    tmp, final, old = run_dir / "state.tmp", run_dir / "state", run_dir / "state.old"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process's random states are in tmp before it is renamed
    if accelerator.is_main_process:
        (tmp / "trainer.json").write_text(json.dumps(trainer))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def last_state(run_dir: Path) -> Path | None:
    """The newest complete state folder: state/, or state.old/ if a crash hit between the two renames."""
    for folder in (run_dir / "state", run_dir / "state.old"):
        if (folder / "trainer.json").exists():
            return folder
    return None


class StopRequest:
    """SIGTERM (a scheduler's warning before its time limit), SIGINT (Ctrl-C) or SIGHUP (the terminal closed): the
    training finishes its epoch, saves its state and stops, so --resume loses nothing. A second signal acts at once,
    as it would without this, unless it comes within SAME_STOP_SECONDS of the first: one stop delivered twice (to the
    process group, and forwarded by study.py)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    SAME_STOP_SECONDS = 0.5  # a group's signal and the study's forwarded copy arrive milliseconds apart

    def __init__(self):
        self.signal, self.exit_code = None, 128 + signal.SIGTERM  # a process told by another that one came

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def handle(self, signum, frame):
        if self.signal is not None:
            if time.time() - self.at > self.SAME_STOP_SECONDS:
                self.__exit__()
                signal.raise_signal(signum)
            return
        self.signal, self.exit_code, self.at = signal.Signals(signum).name, 128 + signum, time.time()
        print(f"\n{self.signal}: finishing this epoch, saving its state, then stopping (again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
