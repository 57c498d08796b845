"""Train every (architecture, encoder, fold) of a study, then infer and ensemble them: the whole experiment in one command.

  python study.py --dataset cxr --archs unet,unetpp --encoders resnet34,efficientnet-b0 --folds all --epochs 40
  python study.py ... --gpus all --runs-per-gpu 4    # 4 runs side by side on each GPU
  python study.py ... --parallel 2                   # CPU only: 2 runs side by side, sharing the cores
  python study.py ... --engine ray --address auto    # each run a task on a running Ray cluster
  python study.py ... --dry-run                      # each run's state and train.py command, for any scheduler

Every flag that is not the study's own is a train.py flag, given to every run. A stopped study continues where it
stopped: finished runs are skipped and interrupted ones resumed (src/study.py has the rules). Each run writes its
output to train.log in its folder; a run that fails is reported with the end of that log and the others go on.
"""
import argparse
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

from src import engine, study


def parse_args(argv=None) -> tuple:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False, epilog="Any other flag: see python train.py --help.")
    parser.add_argument("--archs", default="unet,unetpp", help="architectures, comma-separated (default: unet,unetpp)")
    parser.add_argument("--encoders", default="resnet34", help="encoders, comma-separated (default: resnet34)")
    parser.add_argument("--folds", default="all", help="all (every fold in folds/<dataset>.csv) or a list, e.g. 0,2")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="where the runs run")
    parser.add_argument("--gpus", default="all", help="local: all (the CPU when there is no GPU), none, or ids: 0,1")
    parser.add_argument("--runs-per-gpu", type=int, default=1, help="runs side by side on each GPU (ray: 1/K GPU each)")
    parser.add_argument("--parallel", type=int, default=1, help="local, on CPU: runs side by side, sharing the cores")
    parser.add_argument("--address", help="ray: the cluster, e.g. auto (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--name", help="W&B: the tag every run of the study gets (default: <dataset>-study)")
    parser.add_argument("--dry-run", action="store_true", help="print each run's state and command, run nothing")
    parser.add_argument("--tta", nargs="?", const="flip", default="none", choices=["none", "flip", "d4"],
                        help="infer.py's test-time augmentation; --tta alone means flip")
    parser.add_argument("--preds-dir", default="preds", help="where infer.py writes")
    parser.add_argument("--out-dir", default="ensemble", help="where ensemble.py writes")
    args, train_flags = parser.parse_known_args(argv)
    if min(args.runs_per_gpu, args.parallel) < 1:
        parser.error("--runs-per-gpu and --parallel count runs at once: 1 or more")
    if args.address and args.engine != "ray":
        parser.error("--address is for --engine ray")
    try:
        cfg = study.train_config(train_flags)
    except ValueError as error:
        parser.error(str(error))
    if cfg.tracker == "wandb":  # each run keeps its group (arch-encoder) and gets the study's name as a tag
        train_flags = [*train_flags, "--tags", ",".join(filter(None, [cfg.tags, args.name or f"{cfg.dataset}-study"]))]
        cfg = study.train_config(train_flags)
    return args, train_flags, cfg


def infer_arguments(args, cfg, runs: list) -> list:
    """infer.py's arguments, once per arch-encoder with the folds of these runs, so that only they are predicted."""
    folds = defaultdict(list)
    for run in runs:
        folds[run.name].append(str(run.fold))
    return [["--dataset", cfg.dataset, "--runs", name, "--folds", ",".join(f), "--tta", args.tta, "--workers",
             str(cfg.workers), "--runs-dir", cfg.runs_dir, "--data-dir", cfg.data_dir, "--folds-dir", cfg.folds_dir,
             "--preds-dir", args.preds_dir] for name, f in folds.items()]


def ensemble_arguments(args, cfg) -> list:
    return ["--dataset", cfg.dataset, "--data-dir", cfg.data_dir, "--folds-dir", cfg.folds_dir, "--preds-dir",
            args.preds_dir, "--out-dir", args.out_dir]


def call(stage, argv: list, what: str) -> list:
    """A stage's main in this process; its sys.exit becomes one of the study's problems instead of the study's end."""
    try:
        stage(argv)
    except SystemExit as stop:
        if stop.code not in (None, 0):
            print(f"{what} stopped: {stop.code}")
            return [f"{what} stopped"]
    return []


def main(argv=None):
    args, train_flags, cfg = parse_args(argv)
    archs, encoders = args.archs.split(","), args.encoders.split(",")
    try:
        folds = study.fold_numbers(cfg, args.folds)
        runs = study.plan(cfg, archs, encoders, folds, train_flags)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"study: {error}")
    states = ", ".join(f"{sum(r.state == s for r in runs)} {s}" for s in study.STATES if any(r.state == s for r in runs))
    print(f"# {cfg.dataset}: {len(archs)} archs x {len(encoders)} encoders x {len(folds)} folds = {len(runs)} runs, "
          f"{states}")
    if args.dry_run:  # a shell script as it stands: `grep -v '^#'` keeps the commands that are left to run
        for run in runs:
            print(f"# done: {run.run_dir}" if run.state == "done" else f"{shlex.join(run.command)}  # {run.state}")
        for argv in infer_arguments(args, cfg, runs):
            print(f"# then: python {study.script('infer.py')} {shlex.join(argv)}")
        print(f"# then: python {study.script('ensemble.py')} {shlex.join(ensemble_arguments(args, cfg))}")
        return

    # 1. Train what is not done where the engine finds room; each run's output goes to its train.log.
    todo = [run for run in runs if run.state != "done"]
    saved = {run.run_dir: study.epochs_saved(run) for run in todo}  # what a resumed run does not train again
    jobs = [engine.Job(f"{run.name} fold{run.fold} ({run.state})", run.command, run.log) for run in todo]
    start, results, utilisation = time.time(), [], None
    if jobs and args.engine == "ray":
        results = engine.run_on_ray(jobs, args.address, args.runs_per_gpu)
    elif jobs:
        places = engine.slots(args.gpus, args.runs_per_gpu, args.parallel)
        devices = sorted({p["CUDA_VISIBLE_DEVICES"] for p in places}) if places[0]["CUDA_VISIBLE_DEVICES"] else []
        print(f"# local engine: {len(places)} run(s) at a time on " +
              (f"GPU {','.join(devices)}" if devices else "the CPU") + "; progress of each in its train.log")
        with engine.GpuUtilisation(places) as gpu:
            results = engine.run_local(jobs, places)
        utilisation = gpu.mean

    # 2. What the training cost, over all runs together: the figures that packing runs on a device should raise.
    wall, cost = time.time() - start, ""
    if results:
        trained = sum(result.ok for result in results)
        images = sum(study.images_trained(run, saved[run.run_dir]) for run in todo)
        cost = (f"trained {trained} of {len(results)} runs in {wall / 60:.1f} min: {trained * 3600 / wall:.1f} runs/h, "
                f"{images / wall:.1f} training images/s over all runs"
                + (f", mean GPU utilisation {utilisation:.0f}%" if utilisation is not None else ""))
    failed = [result for result in results if not result.ok]
    problems = [f"{len(failed)} of {len(results)} runs failed"] if failed else []

    # 3. Infer the finished runs (predictions newer than their weights are kept), then rank and ensemble them.
    import ensemble  # not before: they load torch, which the plan and the engines do not need
    import infer
    finished = [run for run in study.plan(cfg, archs, encoders, folds, train_flags) if run.state == "done"]
    for argv in infer_arguments(args, cfg, finished):
        problems += call(infer.main, argv, f"infer.py {shlex.join(argv)}")
    if finished:
        problems += call(ensemble.main, ensemble_arguments(args, cfg), "ensemble.py")

    # 4. The summary, last, where the terminal shows it.
    if cost:
        print(f"\n{cost}")
    if finished:
        print(f"leaderboard: {Path(args.out_dir) / cfg.dataset / 'leaderboard.md'}")
    for result in failed:
        print(f"\nfailed: {result.job.name}, exit code {result.returncode}; {result.job.log} ends with:")
        print("\n".join(f"  | {line}" for line in result.tail()))
    if problems:
        sys.exit(f"study: {'; '.join(problems)} (see above); run the same command again to retry what did not finish")


if __name__ == "__main__":
    main()
