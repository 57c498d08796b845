"""A study's plan: every (architecture, encoder, fold) run, its state read from its folder, and its train.py command.

A run's state comes from what train.py left in runs/<dataset>/<arch>-<encoder>/fold<k>/ (src/runs.py reads it), so
a study can be stopped at any moment and planned again, from any terminal or node that sees the folder:

  running    a live train.py holds its lock (flock; a heartbeat from another host)   nothing: never touched
  done       finished ("epochs_run" in metrics.json) with the settings asked          nothing to run
  stale      finished, but with other settings that change the model, or another     --retrain-stale: train.py
             split: the plan names them                                                ... --overwrite (moved aside)
  resumable  a saved state/ (every --save-minutes, and on SIGTERM/SIGINT/SIGHUP)     train.py ... --resume
  failed     config.json but no saved state (it died before its first save)         train.py ... --overwrite
  new        no config.json (a folder holding only train.log died before starting)   train.py ...

The plan knows nothing about GPUs or where commands run: src/engine.py does.
"""
import argparse
import dataclasses
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src import runs as ledger
from src.config import Config, add_config_arguments, config_from_args, flag_value, patch_problem, run_name
from src.canonical import load_index
from src.folds import load_folds
from src.plan import apply_plan, given_flags, load_plan

ROOT = Path(__file__).resolve().parents[1]
STATES = ledger.PLAN_STATES
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
    why: str = ""  # running: its owner; stale: the settings that differ
    context: int = 1

    @property
    def name(self) -> str:
        return run_name(self.arch, self.encoder, self.context)

    @property
    def log(self) -> Path:
        return self.run_dir / "train.log"


def train_config(train_flags: list) -> Config:
    """The Config every run of the study gets from the train.py flags passed through, planned as train.py plans it
    (data/<dataset>/plan.json where no flag is given: a finished run is compared with what it was given); a wrong
    flag stops here."""
    for flag in train_flags:
        if flag.split("=")[0] in SET_BY_THE_STUDY:
            raise ValueError(f"{flag.split('=')[0]} is set by the study: use {SET_BY_THE_STUDY[flag.split('=')[0]]}")
    parser = argparse.ArgumentParser(prog="study.py (train.py flags)", allow_abbrev=False)
    add_config_arguments(parser)
    cfg = apply_plan(config_from_args(parser.parse_args(train_flags)), given_flags(parser, train_flags))[0]
    if patch_problem(cfg):  # without the encoder's stride, which train.py checks for each run's encoder
        raise ValueError(patch_problem(cfg))
    return cfg


def settings_line(cfg: Config, train_flags: list) -> str:
    """What every run of the study trains with, each of the plan's settings as a flag or the plan set it (prepare
    printed the plan alone, which the study's flags may override); '' without a plan."""
    plan = load_plan(cfg.dataset_dir)
    if not plan:
        return ""
    parser = argparse.ArgumentParser(prog="study.py (train.py flags)", allow_abbrev=False)
    add_config_arguments(parser)
    given = given_flags(parser, train_flags)
    return "# every run trains with " + ", ".join(
        f"{name} {flag_value(name, getattr(cfg, name))} ({'flag' if name in given else 'plan'})" for name in plan["values"])


def fold_numbers(cfg: Config, folds: str) -> list:
    """'all' (every fold of folds/<dataset>.csv) or a list such as '0,2', checked against that file."""
    have = sorted(set(load_folds(cfg.folds_dir, cfg.dataset, load_index(cfg.dataset_dir))["fold"]))
    if folds != "all" and not all(f.strip().isdigit() for f in folds.split(",")):
        raise ValueError(f"--folds {folds}: give all, or fold numbers separated by commas, e.g. 0,2 (the file has {have})")
    wanted = have if folds == "all" else [int(f) for f in folds.split(",")]
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise ValueError(f"fold(s) {missing} not in {Path(cfg.folds_dir) / cfg.dataset}.csv, which has folds {have}")
    return wanted


def encoder_problems(archs: list, encoders: list, weights: str) -> list:
    """What stops any encoder from training under any of the architectures (a misspelt name; weights that cannot be
    had), one line each, found by building each model once in this process: the study loads torch for its infer.py
    after the training anyway, and a child process to check would cost one more interpreter and torch start."""
    from src.models import create_model
    from src.portable.models import ModelError
    problems = []
    for arch in archs:
        for encoder in encoders:
            try:
                create_model(arch, encoder, 3, 1, weights)
            except ModelError as error:
                problems.append(str(error))
            except Exception as error:  # not a name or weights problem: its type says so, in the same one line
                problems.append(f"{type(error).__name__}: {error}")
    return list(dict.fromkeys(problems))


def size_problems(archs: list, encoders: list, cfg: Config) -> list:
    """The architectures that cannot take the study's --size on an encoder (smp pads for Unet alone), one line each;
    a patched study's models see --patch, which train.py checks."""
    from src.models import size_problem
    return [] if cfg.tiles else list(filter(None, (size_problem(a, e, cfg.size) for a in archs for e in encoders)))


def ensemble_skipped(folds: list) -> str:
    return (f"ensemble skipped: ensemble.py tunes each fold on the others and needs two folds or more; this study "
            f"has fold {folds[0]} (--folds all trains every fold)")


def script(name: str) -> str:
    """A stage's path as a command names it, relative to where the study runs (its paths are relative to it too)."""
    return os.path.relpath(ROOT / name)


def export_arguments(name: str, kind: str, out_dir: str, cfg) -> list:
    """export.py's arguments for the study's ensemble (format kind): ensemble/<dataset>/<name>/ ->
    export/<dataset>/<name>/, export/ beside the ensemble folder (out_dir)."""
    return ["--dataset", cfg.dataset, "--name", name, "--format", kind, "--ensemble-dir", out_dir,
            "--data-dir", cfg.data_dir, "--folds-dir", cfg.folds_dir, "--out-dir", str(Path(out_dir).parent / "export")]


def canonical_archs(archs: list) -> list:
    from src.portable.models import canonical_arch  # run folders use the canonical name: 'Unet++' trains unetpp-<encoder>
    return list(dict.fromkeys(canonical_arch(a) for a in archs))


def plan(cfg: Config, archs: list, encoders: list, folds: list, train_flags: list, contexts: list | None = None) -> list:
    """Every run of the grid in order (encoder, fold, context, arch: the architectures of an encoder and fold start
    side by side, under the same conditions), with its state and the command that moves it on. contexts: cfg's own,
    or the study's several (each run's command then names its --context)."""
    runs, contexts = [], contexts or [cfg.context]
    for encoder, fold, context, arch in itertools.product(encoders, folds, contexts, canonical_archs(archs)):
        run_cfg = dataclasses.replace(cfg, arch=arch, encoder=encoder, fold=fold, context=context)
        state, why = ledger.run_state(run_cfg.run_dir, run_cfg)
        extra = {"resumable": ["--resume"], "failed": ["--overwrite"], "stale": ["--overwrite"]}.get(state, [])
        command = ["python", script("train.py"), *train_flags, "--arch", arch, "--encoder", encoder, "--fold",
                   str(fold), *(["--context", str(context)] if contexts != [cfg.context] else []), *extra]
        runs.append(Run(arch, encoder, fold, run_cfg.run_dir, state, command, why, context))
    return runs


def images_trained(run: Run, after_epoch: int) -> int:
    """Training images drawn (repeats included) in the epochs after after_epoch, from the run's history.csv."""
    history = run.run_dir / "history.csv"
    if not history.exists():
        return 0
    epochs = pd.read_csv(history)
    epochs = epochs[epochs["epoch"] > after_epoch]
    return int((epochs["train_images"] + epochs["train_repeats"]).sum())


def contexts(text: str | None, cfg: Config, train_flags: list, export: str | None) -> list:
    """--contexts as train.py --context values (cfg's own when not given); ValueError for an even or non-numeric
    value, for --context given too, and for --export of several (a package reads each volume with one context)."""
    if not text:
        return [cfg.context]
    if any(flag.split("=")[0] == "--context" for flag in train_flags):
        raise ValueError("give --contexts (the study's several) or --context (one, for every run), not both")
    if not all(k.strip().isdigit() and int(k) % 2 for k in text.split(",")):
        raise ValueError(f"--contexts {text}: odd numbers of slices, comma-separated, e.g. 1,3")
    values = list(dict.fromkeys(int(k) for k in text.split(",")))
    if export and len(values) > 1:
        raise ValueError("--export packs runs of one context (a package reads each volume once): ensemble.py --runs "
                         "of one context, then export.py")
    return values


def call(stage, argv: list) -> str:
    """A stage's main in this process: '' when it ended well, else why not, in one line (its own, or the error)."""
    try:
        stage(argv)
    except SystemExit as stop:
        if stop.code in (None, 0):
            return ""
        return stop.code if isinstance(stop.code, str) else f"exit code {stop.code} (its message is above)"
    except Exception as error:  # a truncated file, a bug: the study reports it with the run and goes on
        return f"{type(error).__name__}: {error}"
    return ""
