"""The --select-on rule: which validation scores may steer training (schedule, early stop, best.pt), and which
weights are scored.

  final  a fixed schedule (cosine after a linear warm-up, stepped per epoch) on all the training folds' images; no
         early stop, no best.pt: last.pt is scored. The scored fold is validated every epoch for the history only.
  inner  plateau, early stopping and best.pt read an inner validation split carved from the training folds
         (src.folds.inner_split); the scored fold is validated for the history only.
  fold   they read the scored fold itself, as before the rule existed: its scores are optimistic.
"""
import hashlib

import numpy as np
import pandas as pd

from src.config import Config
from src.folds import inner_split


def carve_inner(cfg: Config, index: pd.DataFrame, folds: pd.DataFrame, train_rows: np.ndarray) -> tuple:
    """(training rows, inner validation rows, what config.json records of the inner split); no inner split unless
    --select-on inner."""
    if cfg.select_on != "inner":
        return train_rows, train_rows[:0], None
    ids = inner_split(folds, cfg.fold, cfg.seed)
    inner = np.isin(index["id"].to_numpy()[train_rows], ids)
    record = {"images": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    return train_rows[~inner], train_rows[inner], record


def judged_scores(cfg: Config, fold_scores: dict, inner_scores: dict | None) -> dict | None:
    """The one set of scores the rule lets steer training: none, the inner split's or the scored fold's."""
    return {"final": None, "inner": inner_scores, "fold": fold_scores}[cfg.select_on]


def end_epoch(cfg: Config, trainer: dict, scheduler, judged: dict | None) -> bool:
    """Step the schedule and the trainer's counters after an epoch; True when its weights are the best so far."""
    if cfg.scheduler == "plateau":
        scheduler.step(judged["dice"])
    else:
        scheduler.step()
    improved = judged is not None and judged["dice"] > trainer["best"]
    trainer.update(epoch=trainer["epoch"] + 1, bad_epochs=0 if improved else trainer["bad_epochs"] + 1)
    if improved:
        trainer.update(best=judged["dice"], best_epoch=trainer["epoch"])
    return improved


def stops_early(cfg: Config, trainer: dict) -> bool:
    return cfg.select_on != "final" and trainer["bad_epochs"] >= cfg.patience


def selected_epoch(cfg: Config, trainer: dict) -> int:
    """The epoch whose weights are scored: the last under final, the best on the judged split otherwise."""
    return trainer["epoch"] if cfg.select_on == "final" else trainer["best_epoch"]
