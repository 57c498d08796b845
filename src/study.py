"""A study's plan: every (architecture, encoder, fold) run, its state read from its folder, and its train.py command.

A run's state comes from what train.py left in runs/<dataset>/<arch>-<encoder>/fold<k>/, so a study can be stopped
at any moment and planned again:

  done       metrics.json has "epochs_run" (train.py writes it when the run ends)   nothing to run
  resumable  a saved state/ (every --save-minutes, and on SIGTERM/SIGINT)            train.py ... --resume
  failed     config.json but no saved state (it died before its first save)         train.py ... --overwrite
  new        no config.json (a folder holding only train.log died before starting)   train.py ...

The plan knows nothing about GPUs or where commands run: src/engine.py does.
"""
import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.checkpoint import last_state
from src.config import Config, add_config_arguments, config_from_args
from src.canonical import load_index
from src.folds import load_folds

ROOT = Path(__file__).resolve().parents[1]
STATES = ("done", "resumable", "failed", "new")
SET_BY_THE_STUDY = {"--arch": "--archs", "--encoder": "--encoders", "--fold": "--folds",
                    "--resume": "the plan", "--overwrite": "the plan", "--validate-only": "train.py alone"}


@dataclass
class Run:
    arch: str
    encoder: str
    fold: int
    run_dir: Path
    state: str
    command: list

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.encoder}"

    @property
    def log(self) -> Path:
        return self.run_dir / "train.log"


def train_config(train_flags: list) -> Config:
    """The Config every run of the study gets from the train.py flags passed through; a wrong flag stops here."""
    for flag in train_flags:
        if flag.split("=")[0] in SET_BY_THE_STUDY:
            raise ValueError(f"{flag.split('=')[0]} is set by the study: use {SET_BY_THE_STUDY[flag.split('=')[0]]}")
    parser = argparse.ArgumentParser(prog="study.py (train.py flags)", allow_abbrev=False)
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(train_flags))


def fold_numbers(cfg: Config, folds: str) -> list:
    """'all' (every fold of folds/<dataset>.csv) or a list such as '0,2', checked against that file."""
    have = sorted(set(load_folds(cfg.folds_dir, cfg.dataset, load_index(cfg.dataset_dir))["fold"]))
    wanted = have if folds == "all" else [int(f) for f in folds.split(",")]
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise ValueError(f"fold(s) {missing} not in {Path(cfg.folds_dir) / cfg.dataset}.csv, which has folds {have}")
    return wanted


def run_state(run_dir: Path) -> str:
    metrics = run_dir / "metrics.json"
    if metrics.exists() and "epochs_run" in json.loads(metrics.read_text()):
        return "done"
    if last_state(run_dir) is not None:
        return "resumable"
    return "failed" if (run_dir / "config.json").exists() else "new"


def script(name: str) -> str:
    """A stage's path as a command names it, relative to where the study runs (its paths are relative to it too)."""
    return os.path.relpath(ROOT / name)


def plan(cfg: Config, archs: list, encoders: list, folds: list, train_flags: list) -> list:
    """Every run of the grid in order (arch, encoder, fold), with its state and the command that moves it on."""
    from src.models import canonical_arch  # run folders use the canonical name: 'Unet++' trains unetpp-<encoder>
    runs = []
    for arch in dict.fromkeys(canonical_arch(a) for a in archs):
        for encoder in encoders:
            for fold in folds:
                run_dir = dataclasses.replace(cfg, arch=arch, encoder=encoder, fold=fold).run_dir
                state = run_state(run_dir)
                extra = {"resumable": ["--resume"], "failed": ["--overwrite"]}.get(state, [])
                command = ["python", script("train.py"), *train_flags, "--arch", arch, "--encoder", encoder, "--fold", str(fold),
                           *extra]
                runs.append(Run(arch, encoder, fold, run_dir, state, command))
    return runs


def epochs_saved(run: Run) -> int:
    """Epochs in the run's saved state: what --resume will not train again."""
    state = last_state(run.run_dir)
    return json.loads((state / "trainer.json").read_text())["epoch"] if state else 0


def images_trained(run: Run, after_epoch: int) -> int:
    """Training images drawn (repeats included) in the epochs after after_epoch, from the run's history.csv."""
    history = run.run_dir / "history.csv"
    if not history.exists():
        return 0
    epochs = pd.read_csv(history)
    epochs = epochs[epochs["epoch"] > after_epoch]
    return int((epochs["train_images"] + epochs["train_repeats"]).sum())
