"""Train one fold of one architecture on a prepared dataset.

  accelerate launch train.py --fold 0 --arch unetpp          # CPU, one GPU or many: Accelerate decides
  python train.py --dataset demo --fold 0 --arch unet --encoder resnet18 --encoder-weights none

Settings no flag gives come from the dataset's plan, data/<dataset>/plan.json (src/plan.py), where prepare wrote one.

Writes runs/<dataset>/<arch>-<encoder>/fold<k>/: last.pt (the final epoch's weights), best.pt (the best epoch's on
the split --select-on judges by, inner or fold; none under final), config.json (everything needed to rebuild the
model offline, the fold file's hash, the inner split's, where each setting came from: flag, plan or default; --lr
auto's range test), lr_find.png (--lr auto's curve), history.csv (one row per epoch: its seconds, split into
training, validation and the rest), metrics.json (the scored fold's scores of the selected weights, src/selection.py:
the final epoch's under --select-on final, the best epoch's otherwise; and the rule) and state/ (full training state
for --resume: saved every --save-minutes, after the final epoch, and on SIGTERM/SIGINT, which end the run after the
epoch in progress).

run() reads as the run goes: check the run, start Accelerate, find the rate if asked, set up data and model, then
epochs of train_one_epoch, validate and save_epoch, and finish (src/fit.py holds the set-up, the epoch and validate).
"""
import argparse
import json
import os
import sys
import time
from dataclasses import replace

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from src import estimate, tracking
from src.cache import context_problem
from src.canonical import load_index, load_meta
from src.checkpoint import StopRequest, last_state, run_folder_problem, save_state, state_due
from src.config import add_config_arguments, config_from_args, load_run_config, patch_problem, settled_lr
from src.portable.files import atomic_path, write_atomic
from src.fit import Parts, ema_line, mixed_precision, open_arrays, set_up, train_one_epoch, validate
from src.folds import fingerprint, fold_rows, load_folds
from src.losses import loss_name
from src.lr_find import run_rate
from src.models import size_problem
from src.portable.models import ModelError, canonical_arch, check_encoder
from src.plan import apply_plan, given_flags, planned_line
from src.runs import RunLock, log_start, move_aside
from src.selection import carve_inner, end_epoch, judged_scores, selected_epoch, stops_early
from src.sliding import encoder_stride, training_line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its last saved state (saved every --save-minutes, after the final "
                             "epoch, and on SIGTERM/SIGINT)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the run again; one that trained is moved, never deleted, to "
                             "<run>/replaced/fold<k>-<time>/")
    parser.add_argument("--validate-only", action="store_true",
                        help="score the run's selected weights (last.pt under --select-on final, else best.pt) on its "
                             "fold and exit; the model and size come from its config.json")
    args = parser.parse_args(argv)
    args.given = given_flags(parser, argv)  # flags over data/<dataset>/plan.json's values (src/plan.py)
    return args


def check_run(args) -> tuple:
    """The run's settings, dataset and split, and where its settings came from (config.json keeps it), or a one-line
    exit for anything that would make it fail or mislead."""
    try:
        cfg = config_from_args(args)
        cfg.arch = canonical_arch(cfg.arch)
        provenance = {}
        if args.validate_only:  # the run's own model and size (decoder widths...), not this command's defaults
            cfg = replace(load_run_config(cfg.run_dir)[0], data_dir=cfg.data_dir, folds_dir=cfg.folds_dir,
                          runs_dir=cfg.runs_dir, workers=cfg.workers, batch_size=cfg.batch_size, tracker="none")
        else:  # the dataset's plan where no flag was given; a resumed --lr auto continues at the rate it chose
            cfg, provenance["sources"] = apply_plan(cfg, args.given)
            cfg, provenance["lr_find"] = settled_lr(cfg, cfg.run_dir) if args.resume else (cfg, None)
        check_encoder(cfg.encoder)
        problem = patch_problem(cfg, encoder_stride(cfg.encoder) if cfg.tiles else None) or \
            (None if cfg.tiles else size_problem(cfg.arch, cfg.encoder, cfg.size))
        if problem:  # a --patch, --overlap, window batch or size the model cannot take, before any data is read
            raise ValueError(problem)
        meta = load_meta(cfg.dataset_dir)
        loss_name(cfg.loss, meta["task"])  # a loss of the other task, said before anything starts
        problem = context_problem(meta, cfg.context)
        if problem:
            raise ValueError(problem)
        index = load_index(cfg.dataset_dir)
        folds = load_folds(cfg.folds_dir, cfg.dataset, index)
    except (ModelError, FileNotFoundError, ValueError) as error:
        sys.exit(f"train: {error}")
    try:
        train_rows, valid_rows = fold_rows(index, folds, cfg.fold)
        train_rows, inner_rows, inner = carve_inner(cfg, index, folds, train_rows)
    except ValueError as error:
        sys.exit(f"train: {cfg.folds_dir}/{cfg.dataset}.csv: {error}")
    tissue_of_row = index["tissue"].to_numpy() if "tissue" in index else None  # PanNuke: scores per tissue too
    if not args.validate_only and os.environ.get("RANK", "0") == "0":  # the launcher's first process owns the folder
        owner = RunLock(cfg.run_dir).acquire()
        if owner:
            sys.exit(f"train: {cfg.run_dir} is being trained by another process ({owner}); wait for it to end, or "
                     f"stop it (SIGTERM: it saves and exits) and --resume")
    problem = run_folder_problem(cfg, args.resume, args.overwrite, args.validate_only)
    if problem:
        sys.exit(f"train: {problem}")
    return cfg, meta, (train_rows, valid_rows, inner_rows), inner, tissue_of_row, provenance


def start_accelerator(cfg, args) -> Accelerator:
    # Several processes and no CUDA GPU: CPU processes (gloo). `accelerate launch --cpu` alone starts one process.
    several_on_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=several_on_cpu, mixed_precision=mixed_precision(cfg.precision), gradient_accumulation_steps=cfg.grad_accum,
        log_with="wandb" if cfg.tracker == "wandb" and not args.validate_only else None,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed, non_blocking=True))
    if args.overwrite and accelerator.is_main_process:
        aside = move_aside(cfg.run_dir, log_start(cfg.run_dir))  # under the lock; this attempt's log stays
        if aside:
            print(f"--overwrite: the run that was in {cfg.run_dir} is now in {aside}")
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)
    return accelerator


def start_or_resume(cfg, args, meta, accelerator, inner: dict | None, provenance: dict) -> tuple:
    """(trainer counters, history rows): fresh, or from the run's last saved state; config.json written either way."""
    run_dir = cfg.run_dir
    trainer = {"epoch": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "steps": 0}
    history = []
    if args.resume:
        state = last_state(run_dir)
        accelerator.load_state(str(state))
        trainer = json.loads((state / "trainer.json").read_text())
        history = pd.read_csv(run_dir / "history.csv").iloc[:trainer["epoch"]].to_dict("records")
        metrics = run_dir / "metrics.json"
        if metrics.exists() and accelerator.is_main_process:  # a finished run trained on is unfinished until it ends
            scores = {k: v for k, v in json.loads(metrics.read_text()).items() if k not in FINISHED}
            write_atomic(metrics, json.dumps(scores, indent=2) + "\n")
        best = f" (best Dice {trainer['best']:.4f})" if trainer["best_epoch"] > 0 else ""
        accelerator.print(f"resuming {run_dir} after epoch {trainer['epoch']}{best}")
    if accelerator.is_main_process:  # on resume too: --epochs/--patience may have changed, and config.json says so
        run_dir.mkdir(parents=True, exist_ok=True)
        sharing = os.environ.get("RUNS_SHARING_DEVICE")  # study.py's local engine says; None where nobody knows
        with atomic_path(run_dir / "config.json") as tmp:
            cfg.save(tmp, meta=meta, folds=fingerprint(cfg.folds_dir, cfg.dataset), inner_split=inner,
                     runs_sharing_device=int(sharing) if sharing else None, **provenance)
    accelerator.wait_for_everyone()
    if cfg.tracker == "wandb":
        trainer["wandb_id"] = tracking.start(accelerator, project=cfg.dataset, group=cfg.run_name,
                                             name=f"fold{cfg.fold}", job_type="train", config=vars(cfg),
                                             folder=run_dir, run_id=trainer.get("wandb_id"), tags=cfg.tags)
    return trainer, history


def save_epoch(cfg, accelerator, parts: Parts, trainer: dict, scores: dict, improved: bool, save_state_now: bool):
    """best.pt when the epoch improved, metrics.json when its weights are the selected ones so far; the full state for
    --resume when asked."""
    if improved and accelerator.is_main_process:
        with atomic_path(cfg.run_dir / "best.pt") as tmp:
            accelerator.save(parts.kept.state_dict(), tmp)
    if improved or cfg.select_on == "final":
        if accelerator.is_main_process:
            write_atomic(cfg.run_dir / "metrics.json", json.dumps({"epoch": trainer["epoch"], **scores}, indent=2) + "\n")
    if save_state_now:
        save_state(accelerator, cfg.run_dir, trainer)


def record_epoch(cfg, accelerator, meta, history: list, row: dict, example: tuple, improved: bool) -> None:
    """history.csv (rewritten whole, atomically), W&B and the terminal."""
    history.append(row)
    if accelerator.is_main_process:
        write_atomic(cfg.run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
    if cfg.tracker == "wandb":
        log = {k: v for k, v in row.items() if k != "epoch"}
        if accelerator.is_main_process and row["epoch"] % 5 == 1:
            log["val_examples"] = tracking.mask_overlays(example[0].transpose(0, 2, 3, 1), *example[1:], meta["classes"])
        accelerator.log(log, step=row["epoch"])
    star = " *" if improved else ""  # beside the Dice that chose the weights: the inner split's, or the fold's
    inner = f", inner Dice {row['inner_dice']:.4f}{star}" if "inner_dice" in row else ""
    accelerator.print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val Dice {row['val_dice']:.4f}"
                      f"{'' if inner else star}, IoU {row['val_iou']:.4f}{inner} ({row['seconds']:.1f}s)")


FINISHED = ("select_on", "selected_epoch", "best_epoch", "epochs_run", "run_dir")  # metrics.json's, once it ends


def finish(cfg, accelerator, parts: Parts, trainer: dict) -> None:
    run_dir = cfg.run_dir
    if accelerator.is_main_process:
        with atomic_path(run_dir / "last.pt") as tmp:  # the final epoch's: infer --checkpoint last
            accelerator.save(parts.kept.state_dict(), tmp)
        final = dict(zip(FINISHED, (cfg.select_on, selected_epoch(cfg, trainer), trainer["best_epoch"],
                                    trainer["epoch"], str(run_dir))))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        write_atomic(run_dir / "metrics.json", json.dumps({**metrics, **final}, indent=2) + "\n")
        if cfg.tracker == "wandb" and cfg.select_on != "final":  # the scored epoch is what the runs table compares
            tracking.summarize_best(accelerator, {f"best_val_{k}": v for k, v in metrics.items()
                                                  if k not in ("epoch", "images")} | {"best_epoch": trainer["best_epoch"]})
        print(f"{cfg.selected_checkpoint}.pt (epoch {selected_epoch(cfg, trainer)}, --select-on {cfg.select_on}): "
              f"val Dice {metrics['dice']:.4f} -> {run_dir}")
    accelerator.end_training()


def main(argv=None):
    try:
        run(parse_args(argv))
    finally:
        RunLock.release_all()  # a caller in this process (a test, a notebook) gets the folder back, however it ended


def run(args):
    cfg, meta, (train_rows, valid_rows, inner_rows), inner, tissue_of_row, provenance = check_run(args)
    accelerator = start_accelerator(cfg, args)
    if not args.validate_only:
        accelerator.print(planned_line(cfg, provenance["sources"]))
    if cfg.lr == "auto":  # a range test on the images the optimiser trains on, never on the fold it is scored on
        cfg, provenance["lr_find"] = run_rate(cfg, meta, train_rows, *open_arrays(cfg, accelerator), accelerator)
    accelerator.print(f"{cfg.run_name} fold {cfg.fold}: {len(train_rows)} training and {len(valid_rows)} validation "
                      f"images{f' (+ {len(inner_rows)} inner validation)' if inner else ''}, weights selected by "
                      f"--select-on {cfg.select_on}, {accelerator.num_processes} process(es) on {accelerator.device}, batch "
                      f"{cfg.batch_size} per process, lr {cfg.lr:g} (encoder x{cfg.encoder_lr_mult:g}"
                      f"{', from scratch' if cfg.encoder_weights == 'none' else ''})")
    if cfg.tiles:
        accelerator.print(training_line(cfg))
    parts = set_up(cfg, meta, accelerator, train_rows, valid_rows, inner_rows, pretrained=not args.validate_only)
    if cfg.ema and not args.validate_only:
        accelerator.print(ema_line(cfg, len(parts.train_loader) // cfg.grad_accum))

    if args.validate_only:
        parts.bare_model.load_state_dict(torch.load(cfg.run_dir / f"{cfg.selected_checkpoint}.pt", map_location="cpu"))
        scores, _ = validate(parts.model, parts.valid_loader, accelerator, meta, tissue_of_row, cfg)
        if accelerator.is_main_process:
            print(json.dumps(scores))
        return

    trainer, history = start_or_resume(cfg, args, meta, accelerator, inner, provenance)
    first_epoch = trainer["epoch"]
    clock = last_save = time.time()  # each epoch's seconds run from the previous one's end: they sum to the wall time
    with StopRequest() as stop:
        for epoch in range(trainer["epoch"], cfg.epochs):
            if stops_early(cfg, trainer):
                break
            lr = parts.optimizer.param_groups[-1]["lr"]
            trained = train_one_epoch(parts, accelerator, epoch, cfg, len(train_rows), trainer["steps"])
            trainer["steps"] = trained.pop("steps")
            started = time.time()
            scores, example = validate(parts.scored, parts.valid_loader, accelerator, meta, tissue_of_row, cfg)
            inner_scores = validate(parts.scored, parts.inner_loader, accelerator, meta, cfg=cfg)[0] if inner else None
            val_seconds = time.time() - started
            improved = end_epoch(cfg, trainer, parts.scheduler, judged_scores(cfg, scores, inner_scores))
            final = epoch + 1 == cfg.epochs or stops_early(cfg, trainer)
            save_now, stopping = state_due(accelerator, last_save, cfg.save_minutes, final, stop)
            started = time.time()
            save_epoch(cfg, accelerator, parts, trainer, scores, improved, save_now)
            now = time.time()
            last_save = now if save_now else last_save
            seconds = {"seconds": now - clock, "train_seconds": trained.pop("train_seconds"),
                       "val_seconds": val_seconds, "save_seconds": now - started}
            seconds["other_seconds"] = 2 * seconds["seconds"] - sum(seconds.values())  # loader start, sync, logging
            row = {"epoch": epoch + 1, "lr": lr, **trained, **{f"val_{k}": v for k, v in scores.items()},
                   **{f"inner_{k}": v for k, v in (inner_scores or {}).items()},
                   **seconds, "state_saved": int(save_now)}
            clock = now
            record_epoch(cfg, accelerator, meta, history, row, example, improved)
            if epoch == first_epoch and cfg.epochs - first_epoch > 1:  # timed by the epoch itself, no extra step
                accelerator.print(estimate.line(f"{cfg.epochs - first_epoch} epochs", estimate.epoch_seconds(row) * (
                    cfg.epochs - first_epoch), estimate.where(accelerator.device.type, accelerator.num_processes),
                    f"epoch {epoch + 1} took {estimate.epoch_seconds(row):.0f} s besides its start-up"))
            if stopping and not final:
                accelerator.end_training()
                accelerator.print(f"train: stopped by {stop.signal or 'a signal'} after epoch {epoch + 1}, its state "
                                  f"saved in {cfg.run_dir}; the same command with --resume continues")
                raise SystemExit(stop.exit_code)
    finish(cfg, accelerator, parts, trainer)


if __name__ == "__main__":
    main()
